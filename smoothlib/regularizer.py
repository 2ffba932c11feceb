"""Step-wise Variation Regularization (Guo et al., "Smooth Diffusion", CVPR 2024, section 3.2).

Smooth Diffusion asks that a small change of the noise gives a proportionally
small change of the one-step prediction x0_hat, the same at every step t. With

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
    J_eps = d x0_hat / d eps = sqrt(1 - alpha_bar_t) d x0_hat / d x_t,

a random direction y ~ N(0, I) / sqrt(C H W), and, as in the authors' release,
y scaled by sqrt(1 - alpha_bar_t), the per-sample variation is

    r = || J_eps^T (sqrt(1 - alpha_bar_t) y) ||_2 = || d <x0_hat, sqrt(1 - alpha_bar_t) y> / d eps ||_2,

a vector-Jacobian product that never forms J. The penalty pulls every r to a
running mean a of itself:

    a   <- a + 0.01 (mean(r) - a),       a starts at 0,
    L_reg = mean((r - a)^2),

with the freshly updated a inside L_reg (gradient still flowing through its
0.01 mean(r) term) and a detached for storage. This is StyleGAN2's path-length
regularizer (Karras et al. 2020, section 3.2) moved from w-space to the
diffusion step. Differentiating L_reg differentiates a gradient: a double
backward through the UNet (see :mod:`smoothlib.attention`).

Scale fact: r = (1 - alpha_bar_t) ||J_{x_t}^T y|| and J_{x_t} carries a factor
1/sqrt(alpha_bar_t), so r at high t is orders of magnitude larger than at low t
(Guo et al. 2024, section 3.2); one running mean over all t is dominated by the noisy end.

A running mean per range of t (``t_buckets=K``) is a lever the paper does not use:
with one a, r - a is mostly the difference between the noisy and the clean end,
so the penalty pushes r down at high t and up at low t rather than evening
r out among the samples of one step. With K buckets of T/K steps each, bucket b
keeps its own a_b (started at its first batch mean instead of 0) and

    L_reg = mean((r_i - a_{b(t_i)})^2),

which is StyleGAN2's path-length idea applied step by step: equal variation for
every noise at the same t. Even then the noisy end dominates the sum, since
(r - a_b)^2 grows with a_b^2 and a_b spans orders of magnitude over t. With
``relative=True`` every range counts the same, through the squared relative
deviation (the running mean in the denominator is detached):

    L_reg = mean(((r_i - a_{b(t_i)}) / a_{b(t_i)})^2).

A first-order estimator (``estimator="finite_difference"``) measures the
forward variation that the paper's goal is about, ||delta x0_hat|| for a small
delta eps, with the same scaled direction u = sqrt(1 - alpha_bar_t) y:

    r_fd = || x0_hat(eps + s u) - x0_hat(eps) || / s  ~  || J_eps u ||,

two UNet evaluations and an ordinary backward (no ``create_graph``), so flash
attention, half precision and gradient checkpointing all work. It is not the
same number per sample: r = ||J^T u|| and r_fd = ||J u||. For Gaussian u they
agree in mean square, E||J^T u||^2 = E||J u||^2 = (1 - alpha_bar_t) tr(J J^T) / D,
and exactly when J is symmetric (the exact denoiser's is: by Tweedie,
d x0_hat / d x_t = (I + (1 - alpha_bar) Hess log p_t) / sqrt(alpha_bar)).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .attention import check_double_backward

Tensor = torch.Tensor

ESTIMATORS = ("exact", "finite_difference")


def step_variation(x0_hat: Tensor, eps: Tensor, y: Tensor, create_graph: bool = True) -> Tensor:
    """r = || d <x0_hat, y> / d eps ||_2 per sample, shape [B], with its graph kept (``create_graph``).

    ``eps`` is the noise that built x_t (a tensor with ``requires_grad``),
    ``x0_hat`` the prediction made from that x_t, ``y`` the direction, already
    scaled (:class:`StepVariationRegularizer` scales it by sqrt(1 - alpha_bar_t)).
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


def finite_difference_variation(x0_hat: Tensor, x0_hat_shifted: Tensor, step: Tensor) -> Tensor:
    """r = || x0_hat_shifted - x0_hat || / step per sample, shape [B]: a forward difference.

    ``x0_hat_shifted`` is the prediction at eps + step * u, ``x0_hat`` at eps,
    ``step`` the scalar s per sample ([B]); the result estimates ||J_eps u||
    (:meth:`StepVariationRegularizer.shift` picks s and builds the shifted
    input). Error: truncation O(s ||u||^2 ||second derivative||) plus rounding
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


class StepVariationRegularizer(torch.nn.Module):
    """The regularizer with its state: L_reg = mean((r - a)^2) and the running mean a.

    State (buffers, so in ``state_dict()`` and restored by ``load_state_dict``):

    * ``a``: the running mean of r (the release resets it to 0 on every start
      and resume; here it is saved with every checkpoint);
    * ``step``: how many training steps :meth:`due` has counted, so that lazy
      scheduling continues where it stopped after a resume.

    Options:

    * ``decay`` (0.01): the running mean's rate, the release's value.
    * ``sync`` (True): with ``torch.distributed`` initialized, all-reduce the
      batch mean of r before updating a, so that every process holds the same a
      (the release keeps one unsynchronised a per GPU; ``sync=False`` reproduces
      that). The value is the global mean; its gradient flows through the
      local samples only, each process differentiating its own.
    * ``every`` (k = 1): lazy regularization (StyleGAN2, Karras et al. 2020,
      section 3.1): run the regularizer on one step in k and scale its weight
      by k (:attr:`weight`), so the penalty keeps its average strength at
      about 1/k of the double-backward cost. ``a`` then moves once per k steps.
    * ``sub_batch`` (None = all): regularize only the first n samples of a
      batch (StyleGAN2's path-length batch shrink): the double backward costs
      roughly in proportion to n, and a is estimated from fewer samples.
    * ``estimator`` ("exact"): how r is measured. "exact" is the release's
      ||J^T u|| by a vector-Jacobian product and a double backward
      (:meth:`forward`). "finite_difference" is the first-order ||J u|| from a
      second forward at a shifted input (:meth:`shift`,
      :func:`finite_difference_variation`, :meth:`penalty`; the training step
      wires them): no double backward, so any attention kernel, half precision
      and gradient checkpointing work, at about one extra forward and backward.
    * ``h`` (None = :func:`default_step` of the compute dtype): the
      finite-difference step, relative: the shift of x_t has norm h ||x_t||.
    * ``t_buckets`` (K = 1, the release): K > 1 keeps one running mean per range
      of T / K timesteps (``a`` of shape [K]; each started at its first batch
      mean); then :meth:`penalty` needs the samples' t.
    * ``relative`` (False): with ``t_buckets`` > 1, divide each r - a_b by a_b,
      so that every range of t weighs the same instead of the noisy end.
    """

    def __init__(self, decay: float = 0.01, every: int = 1, sub_batch: int | None = None,
                 sync: bool = True, estimator: str = "exact", h: float | None = None,
                 t_buckets: int = 1, num_train_timesteps: int = 1000, relative: bool = False):
        super().__init__()
        if relative and t_buckets == 1:
            raise ValueError("relative=True weighs the ranges of t equally, so it needs t_buckets > 1 (with one "
                             "running mean it only rescales lambda, and the release's a starts at 0)")
        self.relative = bool(relative)
        if int(t_buckets) != t_buckets or not 1 <= t_buckets <= num_train_timesteps:
            raise ValueError(f"t_buckets must be an integer in [1, {num_train_timesteps}], got {t_buckets}")
        self.t_buckets, self.num_train_timesteps = int(t_buckets), int(num_train_timesteps)
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; use one of {ESTIMATORS}")
        if h is not None and not (h > 0 and math.isfinite(h)):
            raise ValueError(f"h (the finite-difference step) must be None or a number > 0, got {h}")
        if h is not None and estimator == "exact":
            raise ValueError("h is the finite-difference step; the exact estimator has none "
                             "(set estimator='finite_difference' or leave h=None)")
        self.estimator, self.h = estimator, h
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if int(every) != every or every < 1:
            raise ValueError(f"every (the lazy interval k) must be an integer >= 1, got {every}")
        if sub_batch is not None and (int(sub_batch) != sub_batch or sub_batch < 1):
            raise ValueError(f"sub_batch must be None (whole batch) or an integer >= 1, got {sub_batch}")
        self.decay, self.every, self.sub_batch, self.sync = decay, int(every), sub_batch, sync
        self.register_buffer("a", torch.zeros(() if self.t_buckets == 1 else (self.t_buckets,), dtype=torch.float32))
        if self.t_buckets > 1:
            self.register_buffer("seen", torch.zeros(self.t_buckets, dtype=torch.bool))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._graph_checked = False

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

    def draw_y(self, x0_hat: Tensor, alpha_bar_t: Tensor,
               generator: torch.Generator | None = None) -> Tensor:
        """y = N(0, I) / sqrt(C H W) * sqrt(1 - alpha_bar_t), one alpha_bar per sample."""
        if alpha_bar_t.shape != (x0_hat.shape[0],):
            raise ValueError(f"alpha_bar_t must hold one value per sample, shape "
                             f"({x0_hat.shape[0]},), got {tuple(alpha_bar_t.shape)}")
        device = generator.device if generator is not None else x0_hat.device
        y = torch.randn(x0_hat.shape, generator=generator, device=device, dtype=x0_hat.dtype)
        y = y.to(x0_hat.device) / math.sqrt(x0_hat[0].numel())
        s = (1 - alpha_bar_t.to(x0_hat.device, x0_hat.dtype)).sqrt()
        return y * s.reshape(-1, *([1] * (x0_hat.ndim - 1)))

    def shift(self, x_t: Tensor, u: Tensor, alpha_bar_t: Tensor,
              compute_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """The finite difference's second input: (x_t + sqrt(1 - alpha_bar_t) s u, s), s per sample.

        ``u`` is the direction in eps (:meth:`draw_y`: N(0, I) / sqrt(C H W)
        scaled by sqrt(1 - alpha_bar_t)); shifting eps by s u shifts x_t by
        sqrt(1 - alpha_bar_t) s u through the forward process. s is chosen so
        that this shift has norm h ||x_t||: rounding in the network is relative
        to the size of its input, so h is relative too (||x_t|| floored at
        1e-3 sqrt(C H W), so that a zero input still moves). ``compute_dtype``
        (default: ``x_t``'s) sets the default h, sqrt(machine epsilon), and
        refuses an h below machine epsilon, where the shift would round away.
        Returns s detached, shape [B], in float32 or wider.
        """
        if u.shape != x_t.shape:
            raise ValueError(f"u has shape {tuple(u.shape)} but x_t has {tuple(x_t.shape)}")
        if alpha_bar_t.shape != (x_t.shape[0],):
            raise ValueError(f"alpha_bar_t must hold one value per sample, shape ({x_t.shape[0]},), "
                             f"got {tuple(alpha_bar_t.shape)}")
        dtype = compute_dtype or x_t.dtype
        h = default_step(dtype) if self.h is None else self.h
        if h < torch.finfo(dtype).eps:
            raise ValueError(f"h = {h:g} is below the machine epsilon of {dtype} "
                             f"({torch.finfo(dtype).eps:g}): the shift would be lost to rounding; "
                             f"use h around {default_step(dtype):.2g}")
        wide = torch.promote_types(x_t.dtype, torch.float32)
        x_t, u = x_t.detach().to(wide), u.detach().to(wide)
        root = (1 - alpha_bar_t.detach().to(x_t.device, wide)).sqrt()
        size = torch.linalg.vector_norm(x_t.flatten(1), dim=1).clamp_min(1e-3 * math.sqrt(x_t[0].numel()))
        s = h * size / (root * torch.linalg.vector_norm(u.flatten(1), dim=1))
        shape = (-1, *([1] * (x_t.ndim - 1)))
        return x_t + (root * s).reshape(shape) * u, s

    def penalty(self, r: Tensor, t: Tensor | None = None) -> Tensor:
        """L_reg = mean((r - a_new)^2) with a_new = a + decay (mean(r) - a); stores a_new detached.

        mean(r) is over all processes when ``sync`` is on; a_new keeps its
        gradient through decay * mean(r) inside the penalty. With ``t_buckets``
        > 1, ``t`` (the samples' timesteps, [B]) picks each sample's running mean.
        """
        if self.t_buckets > 1:
            return self._bucket_penalty(r, t)
        a = self.a.to(r.dtype)
        a_new = a + self.decay * (self._batch_mean(r) - a)
        penalty = (r - a_new).pow(2).mean()
        self.a.copy_(a_new.detach())
        return penalty

    def _bucket_penalty(self, r: Tensor, t: Tensor | None) -> Tensor:
        if t is None or t.shape != r.shape:
            raise ValueError(f"a regularizer with t_buckets={self.t_buckets} needs the samples' timesteps t "
                             f"(one per sample, shape {tuple(r.shape)}), got "
                             f"{None if t is None else tuple(t.shape)}")
        b = (t.to(r.device).long() * self.t_buckets // self.num_train_timesteps).clamp(0, self.t_buckets - 1)
        sums = r.new_zeros(self.t_buckets).index_add(0, b, r)
        counts = torch.bincount(b, minlength=self.t_buckets).to(r.dtype)
        total, count = sums.detach().clone(), counts.clone()
        if self.sync and dist.is_available() and dist.is_initialized():
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            dist.all_reduce(count, op=dist.ReduceOp.SUM)
        present, denom = count > 0, count.clamp_min(1)
        local = sums / denom  # the gradient flows through this process's samples only
        mean = local + (total / denom - local.detach())
        a = self.a.to(r.dtype)
        fresh = present & ~self.seen
        a_new = torch.where(fresh, mean, torch.where(present, a + self.decay * (mean - a), a))
        deviation = r - a_new[b]
        if self.relative:
            deviation = deviation / a_new[b].detach().clamp_min(torch.finfo(r.dtype).tiny)
        penalty = deviation.pow(2).mean()
        self.a.copy_(a_new.detach())
        self.seen |= present
        return penalty

    def _batch_mean(self, r: Tensor) -> Tensor:
        """mean(r), averaged over all processes when ``sync`` is on and distributed is running."""
        m = r.mean()
        if not (self.sync and dist.is_available() and dist.is_initialized()):
            return m
        total = m.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return m + (total / dist.get_world_size() - m.detach())

    def forward(self, x0_hat: Tensor, eps: Tensor, alpha_bar_t: Tensor,
                generator: torch.Generator | None = None, t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return (L_reg, r) and update a, with the exact estimator.

        1. y = N(0, I) / sqrt(C H W) * sqrt(1 - alpha_bar_t);
        2. r = || d <x0_hat, y> / d eps ||  (:func:`step_variation`);
        3. a_new = a + decay (mean(r) - a), with mean(r) over all processes if ``sync``;
        4. L_reg = mean((r - a_new)^2); store a_new detached  (:meth:`penalty`;
           ``t``, the samples' timesteps, picks the running mean when ``t_buckets`` > 1).
        """
        if self.estimator != "exact":
            raise ValueError(f"estimator={self.estimator!r} needs a second forward at a shifted input, "
                             "which this call cannot make: use smoothlib.training_step, or shift(), "
                             "finite_difference_variation() and penalty() yourself")
        y = self.draw_y(x0_hat, alpha_bar_t, generator)
        r = step_variation(x0_hat, eps, y)
        if not self._graph_checked:
            check_double_backward(r)
            self._graph_checked = True
        return self.penalty(r, t), r

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, every={self.every}, sub_batch={self.sub_batch}, "
                f"sync={self.sync}, estimator={self.estimator!r}, h={self.h}, t_buckets={self.t_buckets}, "
                f"a={self.a.tolist()}, step={int(self.step)}")


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
    from .device import in_float32

    with in_float32(unet):
        return _variation_at(unet, scheduler, x_0.float(), encoder_hidden_states.float(), t, generator)


def _variation_at(unet, scheduler, x_0, encoder_hidden_states, t, generator) -> Tensor:
    from .prediction import prediction_type_of, x0_and_eps

    t = torch.as_tensor(t, device=x_0.device).long().reshape(-1)
    if t.shape[0] != x_0.shape[0]:
        raise ValueError(f"{t.shape[0]} timesteps for {x_0.shape[0]} samples")
    device = generator.device if generator is not None else x_0.device
    abar = scheduler.alphas_cumprod.to(x_0.device)[t].to(x_0.dtype)
    a = abar.reshape(-1, *([1] * (x_0.ndim - 1)))
    with torch.enable_grad():
        eps = torch.randn(x_0.shape, generator=generator, device=device, dtype=x_0.dtype).to(x_0.device)
        eps.requires_grad_()
        x_t = a.sqrt() * x_0 + (1 - a).sqrt() * eps
        out = unet(x_t, t, encoder_hidden_states=encoder_hidden_states).sample
        x0_hat = x0_and_eps(out, x_t, abar, prediction_type_of(scheduler))[0]
        y = StepVariationRegularizer().draw_y(x0_hat, abar, generator)
        return step_variation(x0_hat, eps, y, create_graph=False).detach()
