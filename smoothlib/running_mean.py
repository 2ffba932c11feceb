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
    (needs K > 1), ``sync`` (average over processes; False keeps one a per process, as
    the release does), ``num_train_timesteps`` (T, to map t to its bucket).
    Arguments are checked by :func:`smoothlib.regularizer.check_settings`.
    """

    def __init__(self, decay: float = 0.01, t_buckets: int = 1, relative: bool = False, sync: bool = True,
                 num_train_timesteps: int = 1000):
        super().__init__()
        self.decay, self.t_buckets, self.relative, self.sync = decay, int(t_buckets), bool(relative), sync
        self.num_train_timesteps = int(num_train_timesteps)
        self.register_buffer("a", torch.zeros(() if self.t_buckets == 1 else (self.t_buckets,), dtype=torch.float32))
        if self.t_buckets > 1:
            self.register_buffer("seen", torch.zeros(self.t_buckets, dtype=torch.bool))

    def bucket(self, t: Tensor) -> Tensor:
        """b = t K // T for each timestep, in [0, K)."""
        return (t.long() * self.t_buckets // self.num_train_timesteps).clamp(0, self.t_buckets - 1)

    def penalty(self, r: Tensor, t: Tensor | None = None) -> Tensor:
        """L_reg for the per-sample variations ``r`` [B] (their timesteps ``t`` [B] when K > 1); updates a.

        1. mean(r) per bucket, over every process when ``sync`` (:func:`global_mean`);
        2. a_new = a + decay (mean(r) - a) in every bucket that has samples
           (with K > 1, a bucket's first batch sets a_new = mean(r));
        3. L_reg = mean((r - a_new)^2), or of ((r - a_new) / a_new) with ``relative``;
        4. store a_new detached.
        """
        if self.t_buckets == 1:
            b = torch.zeros(r.shape[0], dtype=torch.long, device=r.device)
        elif t is None or t.shape != r.shape:
            raise ValueError(f"a running mean with t_buckets={self.t_buckets} needs the samples' timesteps t "
                             f"(one per sample, shape {tuple(r.shape)}), got {None if t is None else tuple(t.shape)}")
        else:
            b = self.bucket(t.to(r.device))
        sums = r.new_zeros(self.t_buckets).index_add(0, b, r)
        mean, count = global_mean(sums, torch.bincount(b, minlength=self.t_buckets).to(r.dtype), self.sync)
        a = self.a.to(r.dtype).reshape(-1)
        present = count > 0
        moved = torch.where(present, a + self.decay * (mean - a), a)
        a_new = moved if self.t_buckets == 1 else torch.where(present & ~self.seen, mean, moved)
        deviation = r - a_new[b]
        if self.relative:
            deviation = deviation / a_new[b].detach().clamp_min(torch.finfo(r.dtype).tiny)
        self.a.copy_(a_new.detach().reshape(self.a.shape))
        if self.t_buckets > 1:
            self.seen |= present
        return deviation.pow(2).mean()

    def extra_repr(self) -> str:
        return f"decay={self.decay}, t_buckets={self.t_buckets}, relative={self.relative}, sync={self.sync}"
