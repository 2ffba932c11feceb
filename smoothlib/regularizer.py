"""Step-wise Variation Regularization (Guo et al., "Smooth Diffusion", CVPR 2024, section 3.2).

Smooth Diffusion asks that a small change of the noise gives a proportionally
small change of the one-step prediction x0_hat, the same at every step t. With

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
    J_eps = d x0_hat / d eps = sqrt(1 - alpha_bar_t) d x0_hat / d x_t,

a random direction y ~ N(0, I) / sqrt(C H W), and, as in the authors' release,
y scaled by sqrt(1 - alpha_bar_t) (:func:`direction`), the per-sample variation is

    r = || J_eps^T (sqrt(1 - alpha_bar_t) y) ||_2 = || d <x0_hat, sqrt(1 - alpha_bar_t) y> / d eps ||_2,

a vector-Jacobian product that never forms J (:func:`step_variation`). The
penalty L_reg = mean((r - a)^2) pulls every r to its running mean a
(:mod:`smoothlib.running_mean`); L = L_mse + lambda L_reg is one training step
(:mod:`smoothlib.train_step`). This is StyleGAN2's path-length regularizer
(Karras et al. 2020, section 3.2) moved from w-space to the diffusion step.
Differentiating L_reg differentiates a gradient: a double backward through the
UNet (see :mod:`smoothlib.attention`). Tested against an explicit Jacobian and
the release's formula in ``tests/test_regularizer.py``; derived step by step in
``docs/regularizer.md`` and notebook 02.

Scale fact: r = (1 - alpha_bar_t) ||J_{x_t}^T y|| and J_{x_t} carries a factor
1/sqrt(alpha_bar_t), so r at high t is orders of magnitude larger than at low t
(Guo et al. 2024, section 3.2); one running mean over all t is dominated by the noisy end.

A first-order estimator (``estimator="finite_difference"``) measures the
forward variation that the paper's goal is about, ||delta x0_hat|| for a small
delta eps, with the same scaled direction u = sqrt(1 - alpha_bar_t) y:

    r_fd = || x0_hat(eps + s u) - x0_hat(eps) || / s  ~  || J_eps u ||

(:func:`shifted_input`, :func:`finite_difference_variation`): two UNet
evaluations and an ordinary backward (no ``create_graph``), so flash
attention, half precision and gradient checkpointing all work. It is not the
same number per sample: r = ||J^T u|| and r_fd = ||J u||. For Gaussian u they
agree in mean square, E||J^T u||^2 = E||J u||^2 = (1 - alpha_bar_t) tr(J J^T) / D,
and exactly when J is symmetric (the exact denoiser's is: by Tweedie,
d x0_hat / d x_t = (I + (1 - alpha_bar) Hess log p_t) / sqrt(alpha_bar)).
"""
from __future__ import annotations

import math

import torch

from .attention import check_double_backward
from .checks import check_choice, check_number
from .device import in_float32, randn
from .prediction import per_sample, prediction_type_of, x0_and_eps
from .running_mean import RunningMean

Tensor = torch.Tensor

ESTIMATORS = ("exact", "finite_difference")


# --------------------------------------------------------------------------- r, two ways


def direction(like: Tensor, alpha_bar_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """y = N(0, I) / sqrt(C H W) * sqrt(1 - alpha_bar_t), shaped like ``like``, one alpha_bar_t per sample."""
    if alpha_bar_t.shape != (like.shape[0],):
        raise ValueError(f"alpha_bar_t must hold one value per sample, shape ({like.shape[0]},), "
                         f"got {tuple(alpha_bar_t.shape)}")
    y = randn(like.shape, generator, like) / math.sqrt(like[0].numel())
    return y * per_sample((1 - alpha_bar_t.to(like.device, like.dtype)).sqrt(), like)


def step_variation(x0_hat: Tensor, eps: Tensor, y: Tensor, create_graph: bool = True) -> Tensor:
    """r = || d <x0_hat, y> / d eps ||_2 per sample, shape [B], with its graph kept (``create_graph``).

    ``eps`` is the noise that built x_t (a tensor with ``requires_grad``),
    ``x0_hat`` the prediction made from that x_t, ``y`` the direction, already
    scaled by sqrt(1 - alpha_bar_t) (:func:`direction`).
    Uses ``autograd.grad(..., create_graph=True)`` so that a loss built on r
    back-propagates (double backward). Samples must not interact inside the
    network (true for UNets with group norm; false with batch norm).
    """
    if y.shape != x0_hat.shape:
        raise ValueError(f"y has shape {tuple(y.shape)} but x0_hat has {tuple(x0_hat.shape)}; "
                         "draw one direction per element of x0_hat")
    if not eps.requires_grad:
        raise ValueError("eps does not require grad: call eps.requires_grad_() before building "
                         "x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps from it")
    if eps.shape[0] != x0_hat.shape[0]:
        raise ValueError(f"eps has batch size {eps.shape[0]} but x0_hat has {x0_hat.shape[0]}")
    if not x0_hat.requires_grad:
        raise ValueError("x0_hat has no graph: compute it from x_t with grad enabled "
                         "(not under torch.no_grad())")
    (grad,) = torch.autograd.grad((x0_hat * y).sum(), eps, create_graph=create_graph, allow_unused=True)
    if grad is None:
        raise ValueError("x0_hat does not depend on eps: build x_t from this eps after "
                         "eps.requires_grad_(), then predict x0_hat from that x_t")
    return torch.linalg.vector_norm(grad.flatten(1), dim=1)


def default_step(dtype: torch.dtype) -> float:
    """h = sqrt(machine epsilon of ``dtype``): 3.5e-4 (float32), 0.031 (float16), 0.088 (bfloat16).

    A forward difference with relative step h has truncation error O(h) and
    rounding error O(machine_eps / h) (both relative); their sum is smallest at
    h ~ sqrt(machine_eps). ``dtype`` is the precision the network computes in
    (the autocast dtype under mixed precision).
    """
    if not dtype.is_floating_point:
        raise ValueError(f"{dtype} is not a floating-point dtype")
    return math.sqrt(torch.finfo(dtype).eps)


def shifted_input(x_t: Tensor, u: Tensor, alpha_bar_t: Tensor, h: float | None = None,
                  compute_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The finite difference's second input: (x_t + sqrt(1 - alpha_bar_t) s u, s), s per sample.

    ``u`` is the direction in eps (:func:`direction`); shifting eps by s u shifts
    x_t by sqrt(1 - alpha_bar_t) s u through the forward process. s is chosen so
    that this shift has norm h ||x_t||: rounding in the network is relative
    to the size of its input, so h is relative too (||x_t|| floored at
    1e-3 sqrt(C H W), so that a zero input still moves). ``compute_dtype``
    (default: ``x_t``'s) sets the default h, :func:`default_step`, and
    refuses an h below machine epsilon, where the shift would round away.
    Returns s detached, shape [B], in float32 or wider.
    """
    if u.shape != x_t.shape:
        raise ValueError(f"u has shape {tuple(u.shape)} but x_t has {tuple(x_t.shape)}")
    if alpha_bar_t.shape != (x_t.shape[0],):
        raise ValueError(f"alpha_bar_t must hold one value per sample, shape ({x_t.shape[0]},), "
                         f"got {tuple(alpha_bar_t.shape)}")
    dtype = compute_dtype or x_t.dtype
    h = default_step(dtype) if h is None else h
    if h < torch.finfo(dtype).eps:
        raise ValueError(f"h = {h:g} is below the machine epsilon of {dtype} "
                         f"({torch.finfo(dtype).eps:g}): the shift would be lost to rounding; "
                         f"use h around {default_step(dtype):.2g}")
    wide = torch.promote_types(x_t.dtype, torch.float32)
    x_t, u = x_t.detach().to(wide), u.detach().to(wide)
    root = (1 - alpha_bar_t.detach().to(x_t.device, wide)).sqrt()
    size = torch.linalg.vector_norm(x_t.flatten(1), dim=1).clamp_min(1e-3 * math.sqrt(x_t[0].numel()))
    s = h * size / (root * torch.linalg.vector_norm(u.flatten(1), dim=1))
    return x_t + per_sample(root * s, x_t) * u, s


def finite_difference_variation(x0_hat: Tensor, x0_hat_shifted: Tensor, step: Tensor) -> Tensor:
    """r = || x0_hat_shifted - x0_hat || / step per sample, shape [B]: a forward difference.

    ``x0_hat_shifted`` is the prediction at eps + step * u, ``x0_hat`` at eps,
    ``step`` the scalar s per sample ([B]); the result estimates ||J_eps u||
    (:func:`shifted_input` picks s and builds the shifted input). Error:
    truncation O(s ||u||^2 ||second derivative||) plus rounding
    O(machine_eps ||x0_hat|| / s); computed in float32 or wider so that the
    difference of two half-precision predictions is not rounded again.
    Both predictions keep their graphs: an ordinary backward of a loss on r
    reaches the network through both forwards.
    """
    if x0_hat_shifted.shape != x0_hat.shape:
        raise ValueError(f"x0_hat_shifted has shape {tuple(x0_hat_shifted.shape)} but x0_hat has "
                         f"{tuple(x0_hat.shape)}: predict both from the same samples")
    if step.shape != (x0_hat.shape[0],):
        raise ValueError(f"step must hold one value per sample, shape ({x0_hat.shape[0]},), "
                         f"got {tuple(step.shape)}")
    if not (step > 0).all():
        raise ValueError("step must be > 0 for every sample")
    wide = torch.promote_types(x0_hat.dtype, torch.float32)
    diff = (x0_hat_shifted.to(wide) - x0_hat.to(wide)).flatten(1)
    return torch.linalg.vector_norm(diff, dim=1) / step.to(wide)


# --------------------------------------------------------------------------- settings and state


def check_settings(label=lambda name: name, *, decay=0.01, every=1, sub_batch=None, estimator="exact", h=None,
                   t_buckets=1, relative=False, sync=True, num_train_timesteps=None, t_min=0,
                   log_ratio=False) -> None:
    """Raise ValueError for a setting :class:`StepVariationRegularizer` cannot run with.

    ``label(name)`` is how the message names the argument: the argument itself here,
    the trainer's flag in :class:`smoothlib.config.TrainConfig` (which checks with this
    function, so that each rule is written once).
    """
    check_number(decay, label("decay"), 0, at_most=1, exclusive=True)
    check_number(every, label("every"), 1, integer=True)
    check_number(sub_batch, label("sub_batch"), 1, integer=True, optional=True)
    check_choice(estimator, label("estimator"), ESTIMATORS)
    check_number(h, label("h"), 0, exclusive=True, optional=True)
    if h is not None and estimator == "exact":
        raise ValueError(f"{label('h')} is the finite-difference step; the exact estimator has none: set "
                         f"{label('estimator')} to finite_difference or leave {label('h')} unset")
    check_number(t_buckets, label("t_buckets"), 1, integer=True, at_most=num_train_timesteps)
    if relative and t_buckets == 1:
        raise ValueError(f"{label('relative')} needs {label('t_buckets')} > 1: it weighs the ranges of t equally "
                         "(with one running mean it only rescales lambda, and the release's a starts at 0)")
    if log_ratio and t_buckets == 1:
        raise ValueError(f"{label('log_ratio')} needs {label('t_buckets')} > 1: one running mean for every t "
                         "sets the log ratio by the noisy end (and the release's a starts at 0)")
    if log_ratio and relative:
        raise ValueError(f"{label('log_ratio')} and {label('relative')} are two forms of the penalty: choose one")
    top = None if num_train_timesteps is None else num_train_timesteps - 1
    check_number(t_min, label("t_min"), 0, integer=True, at_most=top)


class StepVariationRegularizer(torch.nn.Module):
    """The regularizer's settings and state: which estimator, when and on how many samples, and a.

    State (buffers, so in ``state_dict()`` and restored by ``load_state_dict``):
    the running mean a (:class:`~smoothlib.running_mean.RunningMean`, ``running_mean.a``,
    also readable as :attr:`a`) and ``step``, the training steps :meth:`due` has
    counted, so that lazy scheduling continues where it stopped after a resume.

    Options:

    * ``decay`` (0.01), ``t_buckets`` (K = 1), ``relative`` (False), ``log_ratio`` (False), ``sync`` (True),
      ``t_min`` (0), ``num_train_timesteps``: the running mean's, see :mod:`smoothlib.running_mean`
      (``sync=False`` reproduces the release's one unsynchronised a per GPU).
    * ``every`` (k = 1): lazy regularization (StyleGAN2, Karras et al. 2020,
      section 3.1): run the regularizer on one step in k and scale its weight
      by k (:attr:`weight`), so the penalty keeps its average strength at
      about 1/k of the double-backward cost. ``a`` then moves once per k steps.
    * ``sub_batch`` (None = all): regularize only the first n samples of a
      batch (StyleGAN2's path-length batch shrink).
    * ``estimator`` ("exact"): how r is measured: "exact", the release's ||J^T u||
      by a double backward (:meth:`exact`); "finite_difference", the first-order
      ||J u|| from a second forward at a shifted input (:meth:`first_order`; no
      double backward, so any attention kernel, half precision and gradient checkpointing).
    * ``h`` (None = :func:`default_step` of the compute dtype): the
      finite-difference step, relative: the shift of x_t has norm h ||x_t||.

    ``regularizer(...)`` calls the configured estimator's method.
    :func:`smoothlib.train_step.training_step` wires either into a training step.
    """

    def __init__(self, decay: float = 0.01, every: int = 1, sub_batch: int | None = None,
                 sync: bool = True, estimator: str = "exact", h: float | None = None,
                 t_buckets: int = 1, num_train_timesteps: int = 1000, relative: bool = False, t_min: int = 0,
                 log_ratio: bool = False):
        super().__init__()
        check_settings(decay=decay, every=every, sub_batch=sub_batch, estimator=estimator, h=h,
                       t_buckets=t_buckets, relative=relative, num_train_timesteps=num_train_timesteps, t_min=t_min,
                       log_ratio=log_ratio)
        self.every, self.sub_batch, self.estimator, self.h = int(every), sub_batch, estimator, h
        self.running_mean = RunningMean(decay, t_buckets, relative, sync, num_train_timesteps, t_min, log_ratio)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._graph_checked = False

    @property
    def a(self) -> Tensor:
        """The running mean of r: a 0-d tensor, or one value per range of t."""
        return self.running_mean.a

    @property
    def seen(self) -> Tensor:
        """Which ranges of t have had samples (``t_buckets`` > 1 only)."""
        return self.running_mean.seen

    @property
    def weight(self) -> int:
        """Factor on lambda for a lazy regularizer: k (its steps are 1 in k)."""
        return self.every

    def due(self) -> bool:
        """Count one training step; True if the regularizer runs on it (steps 0, k, 2k, ...)."""
        run = int(self.step) % self.every == 0
        self.step += 1
        return run

    def batch_size(self, batch: int) -> int:
        """How many samples of a batch of ``batch`` get regularized."""
        return batch if self.sub_batch is None else min(batch, int(self.sub_batch))

    def penalty(self, r: Tensor, t: Tensor | None = None) -> Tensor:
        """L_reg for measured r (and its samples' timesteps ``t``); updates a. See :meth:`RunningMean.penalty`."""
        return self.running_mean.penalty(r, t)

    def exact(self, x0_hat: Tensor, eps: Tensor, alpha_bar_t: Tensor,
              generator: torch.Generator | None = None, t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(L_reg, r) with the exact estimator; updates a.

        1. y = N(0, I) / sqrt(C H W) * sqrt(1 - alpha_bar_t)  (:func:`direction`);
        2. r = || d <x0_hat, y> / d eps ||  (:func:`step_variation`);
        3. L_reg = mean((r - a)^2) with a updated first  (:meth:`penalty`; ``t``,
           the samples' timesteps, picks the running mean when ``t_buckets`` > 1).
        """
        r = step_variation(x0_hat, eps, direction(x0_hat, alpha_bar_t, generator))
        if not self._graph_checked:
            check_double_backward(r)
            self._graph_checked = True
        return self.penalty(r, t), r

    def first_order(self, x0_hat: Tensor, x0_hat_shifted: Tensor, s: Tensor,
                    t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(L_reg, r) with the first-order estimator, from the predictions at x_t and at
        :func:`shifted_input`'s x_t + sqrt(1 - alpha_bar_t) s u; updates a."""
        r = finite_difference_variation(x0_hat, x0_hat_shifted, s)
        return self.penalty(r, t), r

    def forward(self, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """The configured estimator: :meth:`exact` (x0_hat, eps, alpha_bar_t, ...) or
        :meth:`first_order` (x0_hat, x0_hat_shifted, s, ...)."""
        return (self.exact if self.estimator == "exact" else self.first_order)(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"every={self.every}, sub_batch={self.sub_batch}, estimator={self.estimator!r}, h={self.h}, "
                f"a={self.a.tolist()}, step={int(self.step)}")


# --------------------------------------------------------------------------- measuring r


def variation_at(unet, scheduler, x_0: Tensor, encoder_hidden_states: Tensor, t: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """Measure r (the exact estimator) for clean samples ``x_0`` [B, C, H, W] at timesteps ``t`` [B]: [B], detached.

    One fresh eps and direction y per sample from ``generator``; the same r that
    training penalises, without updating any running mean. For plots of r over t
    and for comparing models (the scale fact: r grows with (1 - alpha_bar_t) / sqrt(alpha_bar_t)).

    r needs one backward pass, not two, so any attention kernel serves (the memory-efficient
    ones keep SD 1.5 at 512 px within a 16 GB card). A half-precision UNet runs in float32
    for the duration (:func:`smoothlib.device.in_float32`), as gradients do everywhere here.
    """
    x_0, encoder_hidden_states = x_0.float(), encoder_hidden_states.float()
    t = torch.as_tensor(t, device=x_0.device).long().reshape(-1)
    if t.shape[0] != x_0.shape[0]:
        raise ValueError(f"{t.shape[0]} timesteps for {x_0.shape[0]} samples")
    alpha_bar_t = scheduler.alphas_cumprod.to(x_0.device)[t].to(x_0.dtype)
    alpha_bar = per_sample(alpha_bar_t, x_0)
    with in_float32(unet), torch.enable_grad():
        eps = randn(x_0.shape, generator, x_0).requires_grad_()
        x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps
        out = unet(x_t, t, encoder_hidden_states=encoder_hidden_states).sample
        x0_hat = x0_and_eps(out, x_t, alpha_bar_t, prediction_type_of(scheduler))[0]
        y = direction(x0_hat, alpha_bar_t, generator)
        return step_variation(x0_hat, eps, y, create_graph=False).detach()
