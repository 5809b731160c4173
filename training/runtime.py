"""Where and how the training step runs: the data-parallel context (torchrun + DistributedDataParallel) and the
precision / ``torch.compile`` / channels_last choices.

Data parallel: ``--batch-size`` is per rank; every rank slices the data order and the noise of the global batch
alike (:func:`training.batching.rank_slice`). One all-reduce per step (:meth:`DistContext.reduce_step`) shares the
mean loss and whether any rank must stop, so all ranks stop after the same step; :meth:`DistContext.agree` makes a
setup failure on one rank fail them all instead of leaving them waiting in the first collective.

Performance defaults: on CUDA bf16 autocast where the GPU has native bf16, ``torch.compile`` where Triton runs; on
the CPU fp32 and no compile; channels_last on both (oneDNN's and cuDNN's NHWC kernels are the fast ones).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from common.device import resolve_device


class PeerSetupError(RuntimeError):
    """Another rank failed while setting up the run; its log says why."""


@dataclass(frozen=True)
class DistContext:
    """This process's rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # setup_distributed created the process group, so teardown_distributed destroys it

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs at INFO."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one rank (and so a process group and DDP)."""
        return self.world_size > 1

    def reduce_step(self, loss: torch.Tensor, *flags: bool) -> tuple[float, list[bool]]:
        """The global mean of ``loss`` (a 0-d tensor: each rank's mean over its B images) and, per flag, whether it
        is set on any rank."""
        if not self.enabled:
            return loss.item(), list(flags)
        packed = torch.cat([loss.detach().float().reshape(1),
                            torch.tensor([float(f) for f in flags], device=loss.device)]).to(self.device)
        dist.all_reduce(packed)  # SUM: Σ_r loss_r, and the number of ranks that set each flag
        values = packed.tolist()
        return values[0] / self.world_size, [v > 0 for v in values[1:]]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True iff ``ok`` on every rank; every rank must call it at the same point."""
        if not self.enabled:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def agree(self) -> None:
        """Raises PeerSetupError if another rank failed in setup. A rank that fails calls ``all_ok(False)`` instead
        (once), so no rank is left waiting for it; a rank that raised PeerSetupError must not call it again."""
        if not self.all_ok(True):
            raise PeerSetupError("another rank failed while setting up the run (see its log); stopping this one")


def setup_distributed(device_name: str, env: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group torchrun describes in ``env`` (default ``os.environ``), if any: with CUDA, rank
    ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK`` and NCCL; on the CPU, Gloo."""
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
    ctx = DistContext(rank, world_size, device, owns_group=not dist.is_initialized())
    if ctx.owns_group:  # else the caller made the group (tests/ddp_worker.py) from the same environment
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
    return ctx


def teardown_distributed(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup_distributed` joined it (no collective: safe after errors)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


# ---------------------------------------------------------------------------------------------- performance
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Performance:
    """The resolved choices (:func:`resolve_performance`): ``precision`` is ``fp32``, ``bf16`` or ``fp16``."""

    precision: str
    compile: bool
    channels_last: bool

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the UNet's forward pass; the schedule and the loss stay fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_DTYPES[self.precision])

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """Dynamic loss scaling for fp16; disabled (``scale``/``step``/``update`` pass through) otherwise."""
        return torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_performance(precision: str, compile: bool | None, channels_last: bool | None,
                        device: torch.device) -> Performance:
    """Turn ``auto``/``None`` into the default for ``device``; raises ValueError for a choice the device lacks.
    ``precision`` is one of :data:`training.config.PRECISIONS` (TrainConfig checks it)."""
    cuda = device.type == "cuda"
    if precision == "auto":  # native bf16 only: emulated bf16 (pre-Ampere) is slower than fp32
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    elif precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         "use --precision fp16 (with loss scaling) or fp32")
    if compile is None:
        compile = cuda and _triton_usable(device)
    elif compile and cuda and not _triton_usable(device):
        raise ValueError("--compile on CUDA needs Triton and a GPU of compute capability >= 7.0; "
                         "pass --no-compile")
    return Performance(precision, bool(compile), channels_last is not False)  # None: NHWC on CPU and CUDA


def _triton_usable(device: torch.device) -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.get_device_capability(device) >= (7, 0)


def to_memory_format(x: torch.Tensor, perf: Performance) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if perf.channels_last else x
