"""Multi-process data-parallel training with PyTorch's own engine: ``torch.distributed`` and
:class:`~torch.nn.parallel.DistributedDataParallel`, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node=4 main.py --train-ddpm-model --batch-size 32 ...   # one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 \\
        --rdzv_id=mnist main.py --train-ddpm-model ...                      # the same command on each node

torchrun starts one process per rank and passes ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment; :func:`setup_distributed` reads them, binds the rank to its device
(``cuda:LOCAL_RANK`` with NCCL, or the CPU with Gloo) and joins the process group. Without ``WORLD_SIZE`` (or
with ``WORLD_SIZE=1``) it returns a single-process context and nothing distributed happens.

What the trainer does with the context (see :mod:`training.trainer`):

* ``--batch-size`` is per rank; a step trains on the global batch ``batch_size × world_size``. Rank r takes
  the images ``r, r + W, r + 2W, …`` of each global batch (:func:`training.batching.rank_slice`, the rank
  assignment of ``DistributedSampler``), and the t, ε and label-dropping draws of the *global* batch are made
  on every rank from the shared noise generator and sliced the same way. DDP averages the gradients over
  ranks, i.e. over the global batch — so W ranks × batch B train exactly like 1 process × batch W·B (up to
  float summation order).
* Every rank builds the model from the same seed; DDP also broadcasts rank 0's weights at the start and keeps
  them identical after every step, so each rank's EMA, updated identically, stays identical too.
* Only rank 0 takes the run lock and writes: checkpoints, config.json, metrics.csv, loss.png, frames and the
  GIF. Every rank reads the checkpoint on ``--resume``.
* Per step, one all-reduce of a few numbers (:meth:`DistContext.reduce_step`) gives every rank the global
  mean loss and whether any rank was asked to stop (Ctrl-C/SIGTERM) or ran out of ``--max-minutes`` — so
  all ranks log the same loss, stop after the same step, and a NaN on one rank stops all of them.
* If setup (lock, checkpoint, data) fails on one rank, :meth:`DistContext.agree` makes the others fail too
  (:class:`PeerSetupError`) instead of waiting forever for it in the first collective. On first use, the
  MNIST PNG tree is built by local rank 0 of each machine before the other ranks read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


class PeerSetupError(RuntimeError):
    """Another rank failed while setting up the run; its log says why."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` if available, else ``cpu``; ``cuda`` without CUDA is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: its rank, the world size and its device.

    ``owns_group`` says whether :func:`setup_distributed` created the process group (and
    :func:`teardown_distributed` should destroy it).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs at INFO."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one rank (and so a process group and DDP)."""
        return self.world_size > 1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def reduce_step(self, loss: torch.Tensor, *flags: bool) -> tuple[float, list[bool]]:
        """The global mean of ``loss`` (a 0-d tensor) and, per flag, whether it is set on any rank.

        The loss of each rank is the mean over its B images, so their mean is the mean over the global batch.
        One process: ``loss.item()`` and the flags unchanged, no communication.
        """
        if not self.enabled:
            return loss.item(), list(flags)
        packed = torch.cat([loss.detach().float().reshape(1),
                            torch.tensor([float(f) for f in flags], device=loss.device)]).to(self.device)
        dist.all_reduce(packed)  # SUM: Σ_r loss_r, and the number of ranks that set each flag
        values = packed.tolist()
        return values[0] / self.world_size, [v > 0 for v in values[1:]]

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for in one process)."""
        if self.enabled:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True iff ``ok`` on every rank. Every rank must call it, at the same point."""
        if not self.enabled:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def agree(self) -> None:
        """A checkpoint of setup that every rank passes: raises PeerSetupError if another rank failed before it.

        A rank that fails calls ``all_ok(False)`` instead (once, for the checkpoint it was heading for), so no
        rank is left waiting for it; a rank that raised PeerSetupError must not call it again.
        """
        if not self.all_ok(True):
            raise PeerSetupError("another rank failed while setting up the run (see its log); stopping this one")


def setup_distributed(device_name: str, env: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group torchrun describes in ``env`` (default ``os.environ``), if any.

    Args:
        device_name: ``auto``, ``cpu`` or ``cuda`` (``--device``). With CUDA, rank ``LOCAL_RANK`` uses GPU
            ``cuda:LOCAL_RANK`` (made the current device) and NCCL; on the CPU, Gloo.

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 without ``RANK``/``LOCAL_RANK`` (not launched by torchrun), more local
            ranks than GPUs, or torch's rendezvous finding no ``MASTER_ADDR``/``MASTER_PORT``.
    """
    env = os.environ if env is None else env
    device = resolve_device(device_name)
    world_size = _env_int(env, "WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(device=device)
    if "RANK" not in env or "LOCAL_RANK" not in env:
        raise ValueError(f"WORLD_SIZE={world_size} but RANK/LOCAL_RANK are not set: start multi-process training "
                         "with torchrun (torchrun --nproc_per_node=N main.py --train-ddpm-model ...)")
    rank, local_rank = _env_int(env, "RANK", 0), _env_int(env, "LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} needs GPU cuda:{local_rank}, but this machine has "
                             f"{torch.cuda.device_count()}; start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    ctx = DistContext(rank, local_rank, world_size, device, owns_group=not dist.is_initialized())
    if ctx.owns_group:
        dist.init_process_group(ctx.backend, rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) already exists, "
                         f"but the environment says rank {rank} of {world_size}")
    return ctx


def teardown_distributed(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup_distributed` joined it (no collective: safe after errors)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
