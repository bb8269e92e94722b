"""Multi-process data parallelism on ``torch.distributed`` (launched by ``torchrun``), and
sharded evaluation.

Training. Every rank draws the same global batch order; rank ``r`` of ``W`` takes the ``r``-th
contiguous shard of every global batch (``torch.tensor_split``), computes the mean loss on it and
its gradient ``g_r``, and the gradients are combined with one flat all-reduce per step:

    g = sum_r (n_r / n) * g_r,

the gradient of the mean loss over the whole global batch, i.e. the single-process step. This is
the data-parallel rule of ``DistributedDataParallel`` (Li et al., VLDB 2020), written as an
explicit all-reduce after ``backward`` because (i) the inner attacks of adversarial training call
the model many times per step with gradients w.r.t. the inputs only, which DDP's per-forward
autograd hooks do not expect; (ii) parameters a method owns (an auxiliary head, a peer model) must
be synchronised too; (iii) uneven shards (a batch size not divisible by ``W``) are weighted
exactly. Initial weights are broadcast from rank 0, so ranks start identical and stay identical.

Evaluation. Batches keep the single-process boundaries and rank ``r`` evaluates batches
``r, r + W, r + 2W, ...``; per-sample results are merged with one all-reduce at the end. A seeded
attack (which reseeds per batch) therefore gives exactly the single-process result.

Outside a process group (or with one process) every function here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from robustlab.errors import RobustlabError


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); gloo on CPU, nccl on CUDA. Returns whether the
    run is distributed; without ``WORLD_SIZE`` (or with 1) nothing happens."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return is_distributed()
    if not dist.is_available():
        raise RobustlabError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(index: Tensor) -> Tensor:
    """This rank's contiguous part of a global batch of sample indices."""
    if not is_distributed():
        return index
    return torch.tensor_split(index, world_size())[rank()]


def _flat_groups(tensors: Iterable[Tensor]) -> dict[tuple, list[Tensor]]:
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def all_reduce_gradients(params: Iterable[nn.Parameter], weight: float) -> None:
    """``p.grad <- sum_r weight_r * p.grad_r`` over ranks for every parameter with a gradient;
    ``weight`` is this rank's share ``n_r / n`` of the global batch. One all-reduce per dtype."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    for tensors in _flat_groups(grads).values():
        flat = torch.cat([g.reshape(-1) for g in tensors]).to(_comm_device())
        flat.mul_(weight)
        dist.all_reduce(flat)
        flat = flat.to(tensors[0].device)
        offset = 0
        for g in tensors:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not is_distributed():
        return
    for tensors in _flat_groups(module.state_dict().values()).values():
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(_comm_device())
        dist.broadcast(flat, src=0)
        flat = flat.to(tensors[0].device)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over ranks (every rank must pass the same keys, in the same order)."""
    if not is_distributed() or not values:
        return dict(values)
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return dict(zip(values, t.cpu().tolist()))


def owns_batch(b: int) -> bool:
    """Whether this rank evaluates batch ``b`` (0-based) of a sharded evaluation."""
    return b % world_size() == rank()


def owned_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` batches of ``range(n)`` this rank evaluates: the single-process batch
    boundaries, every ``W``-th batch starting at this rank's index."""
    starts = range(0, n, batch_size)
    return [(s, min(s + batch_size, n)) for b, s in enumerate(starts) if owns_batch(b)]


def merge_shards(
    values: Tensor, counts: dict[str, float] | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Merge per-sample results over ranks with one all-reduce: each rank fills the rows of its
    own batches and leaves the others zero (``False``); ``counts`` (e.g. forward passes) are
    summed in the same collective. Returns ``(full values, summed counts)``."""
    counts = dict(counts or {})
    if not is_distributed():
        return values, counts
    flat = torch.cat(
        [
            values.reshape(-1).to(torch.float64).cpu(),
            torch.tensor(list(counts.values()), dtype=torch.float64),
        ]
    ).to(_comm_device())
    dist.all_reduce(flat)  # float64 holds 0/1 flags and integer counts exactly
    flat = flat.cpu()
    merged = flat[: values.numel()].view(values.shape).to(values.dtype).to(values.device)
    return merged, dict(zip(counts, flat[values.numel() :].tolist()))


def barrier() -> None:
    if is_distributed():
        dist.barrier()
