"""Which precision, memory layout and compilation make the training step fastest here — and is bf16's loss fine?

    python benchmarks/bench_performance.py                                    # small, 1 thread, CPU
    python benchmarks/bench_performance.py --variants fp32 fp32+cl bf16+cl --rounds 8
    python benchmarks/bench_performance.py --variants fp32+cl fp32+cl+compile --steps 5
    python benchmarks/bench_performance.py --device cuda --model base --variants bf16+cl bf16+cl+compile

A variant is ``fp32``, ``bf16`` or ``fp16``, plus ``+cl`` (channels_last) and/or ``+compile``
(``torch.compile``), exactly as :mod:`training.performance` applies them. Every variant starts from the same
weights and trains on the same MNIST batches with the same t and ε (the real step: autocast forward, fp32
L_simple, grad scaler, clipping at 1.0, AdamW at lr 1e-3 without warm-up). Variants take turns round by
round so that drifting load on a shared machine hits them alike; the table gives the median images/s over
rounds, the time of the first (compiling) step, and each variant's mean loss over its last round — which
shows whether reduced precision trains as well as fp32 over the same steps. ``compile: break-even`` is how
many steps the compilation needs to pay for itself against the same variant without ``+compile``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from harness import print_table

from dataset import load_mnist_idx
from models import UNet, preset_config
from scheduler import LinearNoiseScheduler
from training.performance import Performance, to_memory_format
from training.trainer import l_simple


def parse_variant(name: str) -> Performance:
    precision, *flags = name.split("+")
    unknown = set(flags) - {"cl", "compile"}
    if unknown or precision not in ("fp32", "bf16", "fp16"):
        raise SystemExit(f"bad variant {name!r}: use fp32|bf16|fp16 with optional +cl and +compile")
    return Performance(precision, "compile" in flags, "cl" in flags)


class Trainer:
    """One variant: its own copy of the model and optimizer, fed the shared batches."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device) -> None:
        self.name, self.device = name, device
        self.perf = parse_variant(name)
        self.model = copy.deepcopy(model).to(device)
        if self.perf.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if self.perf.compile else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.scaler = self.perf.grad_scaler(device)
        self.scheduler = LinearNoiseScheduler(device=device)
        self.losses: list[float] = []
        self.first_step_s = 0.0

    def step(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> None:
        with self.perf.autocast(self.device):
            loss = l_simple(self.forward, self.scheduler, to_memory_format(x0, self.perf), t, eps)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.losses.append(loss.item())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp32+cl", "bf16", "bf16+cl"])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (the first compiles)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    images, _ = load_mnist_idx("train")
    pixels = torch.from_numpy(images).unsqueeze(1)  # uint8 (N, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    total = args.warmup + args.rounds * args.steps
    batches = []
    for _ in range(total):  # the same data, t and ε for every variant
        index = torch.randint(0, len(pixels), (args.batch_size,), generator=g)
        x0 = pixels[index].float() / 127.5 - 1.0
        batches.append((x0.to(device), torch.randint(0, 1000, (args.batch_size,), generator=g).to(device),
                        torch.randn(x0.shape, generator=g).to(device)))

    torch.manual_seed(0)
    base = UNet(preset_config(args.model))
    trainers = [Trainer(name, base, device) for name in args.variants]
    print(f"torch {torch.__version__}, {args.model}, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
          f"device {device}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for tr in trainers:
        for i in range(args.warmup):
            sync()
            start = time.perf_counter()
            tr.step(*batches[i])
            sync()
            if i == 0:
                tr.first_step_s = time.perf_counter() - start
    rates: dict[str, list[float]] = {tr.name: [] for tr in trainers}
    for r in range(args.rounds):
        for tr in trainers:
            sync()
            start = time.perf_counter()
            for i in range(args.steps):
                tr.step(*batches[args.warmup + r * args.steps + i])
            sync()
            rates[tr.name].append(args.steps * args.batch_size / (time.perf_counter() - start))
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()), flush=True)

    median = {name: statistics.median(v) for name, v in rates.items()}
    reference = median[trainers[0].name]
    rows = []
    for tr in trainers:
        row = {"variant": tr.name, "img/s": f"{median[tr.name]:.0f}", f"vs {trainers[0].name}":
               f"{median[tr.name] / reference:.2f}×", "first step (s)": f"{tr.first_step_s:.1f}",
               "loss (last round)": f"{statistics.mean(tr.losses[-args.steps:]):.4f}",
               "loss (all)": f"{statistics.mean(tr.losses):.4f}"}
        eager = tr.name.replace("+compile", "")
        if tr.perf.compile and eager in median:
            s_eager, s_comp = args.batch_size / median[eager], args.batch_size / median[tr.name]
            overhead = tr.first_step_s - s_comp
            row["compile: break-even"] = (f"{overhead / (s_eager - s_comp):.0f} steps" if s_comp < s_eager
                                          else "never (not faster)")
        rows.append(row)
    print(f"\nmedian of {args.rounds} rounds × {args.steps} steps after {args.warmup} warm-up step(s)")
    print_table(rows, list(dict.fromkeys(k for row in rows for k in row)))


if __name__ == "__main__":
    main()
