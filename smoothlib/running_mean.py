"""The running mean a of the step variation r, and the penalty that pulls every r to it.

Guo et al. 2024, eq. 8 (StyleGAN2's path-length regularizer, Karras et al. 2020):

    a   <- a + decay (mean(r) - a),      decay = 0.01, a starts at 0,
    L_reg = mean((r - a)^2),

with the freshly updated a inside L_reg (its gradient still flowing through the
decay * mean(r) term) and a stored detached. r itself comes from
:mod:`smoothlib.regularizer`.

One running mean per range of t (``t_buckets = K``, a lever the paper does not
use): bucket b = t K // T keeps its own a_b, started at its first batch mean
instead of 0, and ``relative=True`` divides each deviation by its (detached)
running mean, so that every range of t weighs the same:

    L_reg = mean(((r_i - a_b(t_i)) / a_b(t_i))^2).

``log_ratio=True`` (also K > 1) penalises the log ratio instead, which is the
relative deviation to first order but grows only like (log r)^2 for an r far
above its a, and without bound for an r that collapses towards 0:

    L_reg = mean((log r_i - log a_b(t_i))^2).

``t_min`` (0: every sample, as the release) restricts the penalty to the samples
with t >= t_min (another lever the paper does not use): the others move neither
a nor L_reg, which is then the mean over the kept samples.

Across processes (``sync``), mean(r) is the mean over every process's samples,
its gradient flowing through this process's samples only: every process then
holds the same a. The state (``a``, and ``seen`` with K > 1) lives in buffers,
so ``state_dict()`` saves it and ``load_state_dict`` restores it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

Tensor = torch.Tensor


def global_mean(sums: Tensor, counts: Tensor, sync: bool = True) -> tuple[Tensor, Tensor]:
    """Per-bucket mean of r over every process: (mean, count), both shape [K].

    ``sums`` (with its graph) and ``counts`` are this process's per-bucket sums and
    sample counts. With ``sync`` and torch.distributed running, the value is
    sum over processes / count over processes; the gradient flows through the local
    sum only (each process differentiates its own samples). An empty bucket has mean 0.
    """
    total, count = sums.detach().clone(), counts.clone()
    if sync and dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
    denom = count.clamp_min(1)
    local = sums / denom
    return local + (total / denom - local.detach()), count


class RunningMean(torch.nn.Module):
    """a (one value, or one per range of t) and the penalty L_reg that updates it; see the module docstring.

    ``decay`` (0.01, the release's), ``t_buckets`` (K = 1, the release), ``relative``
    (needs K > 1), ``log_ratio`` (needs K > 1, not with ``relative``), ``t_min`` (0: every timestep), ``sync`` (average over processes; False keeps one a per process, as
    the release does), ``num_train_timesteps`` (T, to map t to its bucket).
    Arguments are checked by :func:`smoothlib.regularizer.check_settings`.
    """

    def __init__(self, decay: float = 0.01, t_buckets: int = 1, relative: bool = False, sync: bool = True,
                 num_train_timesteps: int = 1000, t_min: int = 0, log_ratio: bool = False):
        super().__init__()
        self.decay, self.t_buckets, self.relative, self.sync = decay, int(t_buckets), bool(relative), sync
        self.log_ratio = bool(log_ratio)
        self.t_min = int(t_min)
        self.num_train_timesteps = int(num_train_timesteps)
        self.register_buffer("a", torch.zeros(() if self.t_buckets == 1 else (self.t_buckets,), dtype=torch.float32))
        if self.t_buckets > 1:
            self.register_buffer("seen", torch.zeros(self.t_buckets, dtype=torch.bool))

    def bucket(self, t: Tensor) -> Tensor:
        """b = t K // T for each timestep, in [0, K)."""
        return (t.long() * self.t_buckets // self.num_train_timesteps).clamp(0, self.t_buckets - 1)

    def penalty(self, r: Tensor, t: Tensor | None = None) -> Tensor:
        """L_reg for the per-sample variations ``r`` [B] (their timesteps ``t`` [B] when K > 1); updates a.

        1. keep w_i = [t_i >= t_min] (every sample when t_min = 0);
        2. mean(r) per bucket over the kept samples, over every process when ``sync``
           (:func:`global_mean`);
        3. a_new = a + decay (mean(r) - a) in every bucket that has kept samples
           (with K > 1, a bucket's first batch sets a_new = mean(r));
        4. L_reg = sum(w (r - a_new)^2) / sum(w), or of ((r - a_new) / a_new) with ``relative``,
           or of (log r - log a_new) with ``log_ratio``;
        5. store a_new detached.
        """
        needs_t = self.t_buckets > 1 or self.t_min > 0
        if needs_t and (t is None or t.shape != r.shape):
            raise ValueError(f"a running mean with t_buckets={self.t_buckets}, t_min={self.t_min} needs the samples' "
                             f"timesteps t (one per sample, shape {tuple(r.shape)}), "
                             f"got {None if t is None else tuple(t.shape)}")
        if self.t_buckets == 1:
            b = torch.zeros(r.shape[0], dtype=torch.long, device=r.device)
        else:
            b = self.bucket(t.to(r.device))
        w = (t.to(r.device) >= self.t_min).to(r.dtype) if self.t_min > 0 else torch.ones_like(r)
        sums = r.new_zeros(self.t_buckets).index_add(0, b, r * w)
        counts = r.new_zeros(self.t_buckets).index_add(0, b, w.detach())
        mean, count = global_mean(sums, counts, self.sync)
        a = self.a.to(r.dtype).reshape(-1)
        present = count > 0
        moved = torch.where(present, a + self.decay * (mean - a), a)
        a_new = moved if self.t_buckets == 1 else torch.where(present & ~self.seen, mean, moved)
        kept = w > 0
        if self.log_ratio:
            tiny = torch.finfo(r.dtype).tiny
            deviation = torch.where(kept, r.clamp_min(tiny).log() - a_new[b].clamp_min(tiny).log(), 0.0)
        else:
            deviation = torch.where(kept, r - a_new[b], 0.0)   # a bucket with no kept sample may still hold a = 0
        if self.relative:
            deviation = deviation / torch.where(kept, a_new[b].detach(), 1.0).clamp_min(torch.finfo(r.dtype).tiny)
        self.a.copy_(a_new.detach().reshape(self.a.shape))
        if self.t_buckets > 1:
            self.seen |= present
        return deviation.pow(2).sum() / w.sum().clamp_min(1)   # deviation is 0 where w is

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, t_buckets={self.t_buckets}, relative={self.relative}, "
                f"log_ratio={self.log_ratio}, t_min={self.t_min}, "
                f"sync={self.sync}")
