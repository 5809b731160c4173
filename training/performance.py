"""How the training step uses the hardware: precision, ``torch.compile`` and the channels_last layout.

Three choices, each ``auto`` by default and resolved once per run for the detected device by
:func:`resolve_performance` (the result is logged at start and written to ``config.json``):

==============  ============================================  ===============================================
choice          CUDA (auto)                                   CPU (auto)
==============  ============================================  ===============================================
precision       bf16 on GPUs with native bf16 (Ampere and     fp32: bf16 autocast is slower (below)
                later), else fp32 (fp16 only on request)
compile         on where Triton runs (capability >= 7.0):     off: compiling costs far more than it saves
                compiled once per run, amortised over the
                thousands of steps of a GPU run
channels_last   on (cuDNN's NHWC kernels, tensor cores)       on: measured faster (below)
==============  ============================================  ===============================================

CPU measurements (``python benchmarks/bench_performance.py`` and ``... --variants fp32+cl fp32+cl+compile``;
the first ``small`` (16, 24, 64), batch 128, 1 thread, torch 2.14, a 2-core Xeon with AVX512-BF16 but no AMX;
median of 6 rounds; later measurements, on the current ``small``, are in benchmarks/RESULTS.md):
fp32 196 images/s, fp32 + channels_last 224 (1.14×), bf16 146 (0.75×), bf16 + channels_last 117 (0.59×).
bf16's loss tracks fp32's (0.2842 vs 0.2838, mean over the same 32 steps) — fine, but slower, so not the
default. ``torch.compile`` (fp32 + channels_last): a 93 s first step, then 219 vs 227 images/s (0.97×), so it
never pays for itself on this CPU. On a GPU none of this was measured here; ``benchmarks/gpu_train_check.py``
reports images/s, peak memory and the loss of ``base`` with bf16 + compile.

Mixed precision follows the AMP recipe: the forward pass of the step runs under ``torch.autocast``, which
changes the dtype only of the UNet's convolutions and matmuls (bf16/fp16; norms and softmax as autocast
decides). The noise schedule's arithmetic (x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, Eq. 4) is elementwise on fp32 tensors,
which autocast leaves in fp32, and :func:`training.trainer.l_simple` takes the loss in fp32. fp16 needs a
:class:`torch.amp.GradScaler` against underflowing gradients; bf16 has fp32's exponent range and needs none.
The scaler is created for every run and is a pass-through unless fp16.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import asdict, dataclass

import torch

from training.config import PRECISIONS

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Performance:
    """The resolved choices: ``precision`` in ``fp32``/``bf16``/``fp16``, ``compile``, ``channels_last``."""

    precision: str
    compile: bool
    channels_last: bool

    def __post_init__(self) -> None:
        if self.precision not in _DTYPES:
            raise ValueError(f"precision must be one of {tuple(_DTYPES)} once resolved, got {self.precision!r}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for plain fp32."""
        return None if self.precision == "fp32" else _DTYPES[self.precision]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the forward pass (a no-op context for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """Dynamic loss scaling for fp16; disabled (``scale``/``step``/``update`` pass through) otherwise."""
        return torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_performance(precision: str, compile: bool | None, channels_last: bool | None,
                        device: torch.device) -> Performance:
    """Turn ``auto``/``None`` into the default for ``device`` and check explicit choices against it.

    Raises:
        ValueError: an unknown precision, bf16 on a GPU without bf16 support, or ``compile`` requested on
            CUDA without Triton.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
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
    if channels_last is None:
        channels_last = True
    return Performance(precision, bool(compile), bool(channels_last))


def _triton_usable(device: torch.device) -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.get_device_capability(device) >= (7, 0)


def to_memory_format(x: torch.Tensor, perf: Performance) -> torch.Tensor:
    """A 4-D batch in the layout the model runs in (a no-op when it is already laid out so)."""
    return x.contiguous(memory_format=torch.channels_last) if perf.channels_last else x
