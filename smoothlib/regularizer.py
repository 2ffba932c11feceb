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
(SPEC section 3); one running mean over all t is dominated by the noisy end.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .attention import check_double_backward

Tensor = torch.Tensor


def step_variation(x0_hat: Tensor, eps: Tensor, y: Tensor) -> Tensor:
    """r = || d <x0_hat, y> / d eps ||_2 per sample, shape [B], with its graph kept.

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
    (grad,) = torch.autograd.grad((x0_hat * y).sum(), eps, create_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError("x0_hat does not depend on eps: build x_t from this eps after "
                         "eps.requires_grad_(), then predict x0_hat from that x_t")
    return torch.linalg.vector_norm(grad.flatten(1), dim=1)


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
    """

    def __init__(self, decay: float = 0.01, every: int = 1, sub_batch: int | None = None,
                 sync: bool = True):
        super().__init__()
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if int(every) != every or every < 1:
            raise ValueError(f"every (the lazy interval k) must be an integer >= 1, got {every}")
        if sub_batch is not None and (int(sub_batch) != sub_batch or sub_batch < 1):
            raise ValueError(f"sub_batch must be None (whole batch) or an integer >= 1, got {sub_batch}")
        self.decay, self.every, self.sub_batch, self.sync = decay, int(every), sub_batch, sync
        self.register_buffer("a", torch.zeros((), dtype=torch.float32))
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

    def _batch_mean(self, r: Tensor) -> Tensor:
        """mean(r), averaged over all processes when ``sync`` is on and distributed is running."""
        m = r.mean()
        if not (self.sync and dist.is_available() and dist.is_initialized()):
            return m
        total = m.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return m + (total / dist.get_world_size() - m.detach())

    def forward(self, x0_hat: Tensor, eps: Tensor, alpha_bar_t: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Return (L_reg, r) and update a.

        1. y = N(0, I) / sqrt(C H W) * sqrt(1 - alpha_bar_t);
        2. r = || d <x0_hat, y> / d eps ||  (:func:`step_variation`);
        3. a_new = a + decay (mean(r) - a), with mean(r) over all processes if ``sync``;
        4. L_reg = mean((r - a_new)^2); store a_new detached.
        """
        y = self.draw_y(x0_hat, alpha_bar_t, generator)
        r = step_variation(x0_hat, eps, y)
        if not self._graph_checked:
            check_double_backward(r)
            self._graph_checked = True
        a = self.a.to(r.dtype)
        a_new = a + self.decay * (self._batch_mean(r) - a)
        penalty = (r - a_new).pow(2).mean()
        self.a.copy_(a_new.detach())
        return penalty, r

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, every={self.every}, sub_batch={self.sub_batch}, "
                f"sync={self.sync}, a={float(self.a):.4g}, step={int(self.step)}")
