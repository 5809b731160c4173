"""Training speed: images/s of our presets and of diffusers' UNet2DModel matched to `small`, in the precision,
memory layout and compilation of your choice, at one or more thread counts — one table from one process.

    python benchmarks/bench_train.py                                  # tiny, small, base, diffusers-small
    python benchmarks/bench_train.py --models small diffusers-small --rounds 5 --steps 4
    python benchmarks/bench_train.py --models "small[channels=16,16,64]" small --rounds 3
    python benchmarks/bench_train.py --models small --threads 1 --rounds 6 --variants fp32 fp32+cl bf16 bf16+cl
    python benchmarks/bench_train.py --models small --threads 1 --variants fp32+cl fp32+cl+compile
    python benchmarks/bench_train.py --loop train --models tiny small --threads 1 2 --steps 10
    python benchmarks/bench_train.py --device cuda --models base --variants bf16+cl bf16+cl+compile

What is timed (``--loop``):

* ``step`` (default): the trainer's own step, :func:`training.trainer.train_step` (t and ε drawn, the forward
  pass under autocast with the loss :func:`training.trainer.l_simple` weighted as the trainer weights it,
  backward, grad scaler, clipping, AdamW at the trainer's warm-up learning rate, the EMA update), on MNIST
  batches held in memory; no data loading or logging. Every variant of a model starts from the same weights and
  sees the same batches, t and ε. Rows take turns round by round after ``--warmup`` untimed steps, so that
  drifting load on a shared machine hits them alike; images/s is the median over rounds.
* ``train``: the whole trainer, :func:`training.train` (batching from memory, EMA, logging every step), for
  ``--warmup`` + ``--steps`` steps, one row after the other; images/s is the median of the timed steps' log
  lines. Our presets only.

A variant is ``auto`` — the trainer's choice on this device (:func:`training.runtime.resolve_performance`);
for diffusers' model that choice in both layouts, NCHW as its users get it and channels_last, so that the
baseline is never handicapped by a layout — or ``fp32``, ``bf16`` or ``fp16`` followed by ``+cl``
(channels_last) and/or ``+compile`` (``torch.compile``).

Columns: GFLOP/img is one image's forward + backward, counted by ``torch.utils.flop_counter``; % matmul compares
the achieved GFLOP/s with this CPU's fp32 matmul throughput at the same thread count (the higher of a
measurement before and one after the models); first step (s) includes compilation; the loss columns show
whether reduced precision trains as well as fp32 over the same steps; ``compile: break-even`` is how many steps
compiling needs to pay for itself against the same variant without ``+compile``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from harness import (
    MNISTFromIDX,
    PeakMemory,
    build_model,
    matmul_gflops,
    num_parameters,
    parse_model_name,
    print_table,
    training_flops_per_image,
)

from scheduler import DiffusionConfig, LinearNoiseScheduler
from training import EMA, TrainConfig, TrainState, train, train_step
from training.monitor import read_metrics
from training.runtime import Performance, resolve_performance
from training.trainer import StepContext, lr_at

VARIANT_SPEC = "auto, or fp32|bf16|fp16 followed by optional +cl (channels_last) and +compile"


def parse_variant(name: str, model: str, device: torch.device) -> list[Performance]:
    """The settings a variant name stands for with ``model`` on ``device`` (``auto`` gives two for diffusers')."""
    if name == "auto":
        perf = resolve_performance("auto", None, None, device)
        if parse_model_name(model)[0].startswith("diffusers-"):
            return [replace(perf, channels_last=False), replace(perf, channels_last=True)]
        return [perf]
    precision, *flags = name.split("+")
    if precision not in ("fp32", "bf16", "fp16") or set(flags) - {"cl", "compile"} or len(set(flags)) < len(flags):
        raise ValueError(f"bad variant {name!r}; use {VARIANT_SPEC}")
    return [Performance(precision, "compile" in flags, "cl" in flags)]


def variant_label(perf: Performance) -> str:
    return perf.precision + "+cl" * perf.channels_last + "+compile" * perf.compile


@dataclass
class Row:
    """One measured (model, variant, thread count)."""

    model: str
    perf: Performance
    threads: int
    params: int
    flops: float  # per training image, forward + backward
    rates: list[float] = field(default_factory=list)  # images/s per round (step) or per timed step (train)
    losses: list[float] = field(default_factory=list)  # every step's loss, warm-up included
    first_step_s: float = 0.0
    peak_bytes: int = 0


class Stepper:
    """One variant in ``--loop step``: its own copy of the model, EMA and optimizer, and a noise generator seeded
    like every other variant's, stepped by the trainer's :func:`training.trainer.train_step`."""

    def __init__(self, model: torch.nn.Module, perf: Performance, device: torch.device) -> None:
        self.config = config = TrainConfig()
        model = copy.deepcopy(model).to(device)
        if perf.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.state = TrainState(
            model=model, ema=EMA(model, config.ema_decay, config.ema_gamma),
            optimizer=torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
            scaler=perf.grad_scaler(device), noise_gen=torch.Generator(device=device).manual_seed(config.seed))
        self.ctx = StepContext(LinearNoiseScheduler(device=device), torch.compile(model) if perf.compile else model,
                               perf, grad_clip=config.grad_clip,
                               min_snr_gamma=config.min_snr_gamma if config.loss_weighting == "min-snr" else None)

    def step(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step on ``x0`` [B, 1, 28, 28] in [−1, 1]; returns the loss, a tensor read after the timing."""
        return train_step(self.state, x0, labels, lr_at(self.state.step, 0.0, self.config), self.ctx)[0]


def make_batches(images: torch.Tensor, labels: torch.Tensor, count: int, batch_size: int, device: torch.device,
                 seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (x0 in [−1, 1], labels) batches drawn from uint8 ``images`` [N, 1, 28, 28] and their ``labels``
    [N]: the same for every row."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        index = torch.randint(0, len(images), (batch_size,), generator=g)
        batches.append(((images[index].float() / 127.5 - 1.0).to(device), labels[index].to(device)))
    return batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(plan: list[tuple[str, list[Performance]]], batches: list, args, device: torch.device) -> list[Row]:
    rows, steppers = [], []
    for name, perfs in plan:
        torch.manual_seed(0)  # the same initial weights for every variant (and every thread count)
        model = build_model(name)
        params, flops = num_parameters(model), training_flops_per_image(model)
        for perf in perfs:
            row, stepper = Row(name, perf, torch.get_num_threads(), params, flops), Stepper(model, perf, device)
            with PeakMemory(device) as memory:
                for i in range(args.warmup):  # allocator, oneDNN kernels; the first step compiles
                    start = time.perf_counter()
                    row.losses.append(stepper.step(*batches[i]))
                    sync(device)
                    row.first_step_s = row.first_step_s or time.perf_counter() - start
            row.peak_bytes = memory.peak_bytes
            rows.append(row)
            steppers.append(stepper)
    for r in range(args.rounds):
        for row, stepper in zip(rows, steppers):
            sync(device)
            start = time.perf_counter()
            for i in range(args.steps):
                row.losses.append(stepper.step(*batches[args.warmup + r * args.steps + i]))
            sync(device)
            row.rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
        print(f"  {rows[0].threads} thread(s), round {r + 1}/{args.rounds}: "
              + ", ".join(f"{row.model} {variant_label(row.perf)} {row.rates[-1]:.0f}" for row in rows),
              file=sys.stderr, flush=True)
    for row in rows:
        row.losses = torch.stack(row.losses).tolist()
    return rows


def measure_train(plan: list[tuple[str, list[Performance]]], digits: MNISTFromIDX, args,
                  device: torch.device) -> list[Row]:
    rows = []
    for name, perfs in plan:
        model = build_model(name)
        params, flops = num_parameters(model), training_flops_per_image(model)
        for perf in perfs:
            row = Row(name, perf, torch.get_num_threads(), params, flops)
            with tempfile.TemporaryDirectory() as run_dir, PeakMemory(device) as memory:
                config = TrainConfig(task_name=run_dir, model=parse_model_name(name)[0], batch_size=args.batch_size,
                                     max_steps=args.warmup + args.steps, log_every=1, ckpt_every=10**9,
                                     final_samples=0, device=device.type, seed=0, precision=perf.precision,
                                     compile=perf.compile, channels_last=perf.channels_last)
                train(config, model.config, DiffusionConfig(), dataset=digits)
                log = read_metrics(Path(run_dir) / "metrics.csv")
            row.rates = [line["images_per_s"] for line in log[args.warmup:]]
            row.losses = [line["loss"] for line in log]
            row.first_step_s, row.peak_bytes = log[0]["elapsed_s"], memory.peak_bytes
            rows.append(row)
            print(f"  {row.threads} thread(s): {name} {variant_label(perf)} {statistics.median(row.rates):.0f} img/s",
                  file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row], matmul: dict[int, float], batch_size: int, steps: int) -> list[dict]:
    """One printable dict per row; speeds relative to the first row."""
    median = {id(row): statistics.median(row.rates) for row in rows}
    first = rows[0]
    out = []
    for row in rows:
        ips = median[id(row)]
        gflops = row.flops * ips / 1e9
        cells = {
            "model": row.model, "variant": variant_label(row.perf), "threads": row.threads,
            "params": f"{row.params:,}", "GFLOP/img": f"{row.flops / 1e9:.3f}", "img/s": f"{ips:.0f}",
            f"vs {first.model} {variant_label(first.perf)}": f"{ips / median[id(first)]:.2f}×",
            "GFLOP/s": f"{gflops:.1f}", "% matmul": f"{100 * gflops / matmul[row.threads]:.0f}%",
            "peak mem (MB)": f"{row.peak_bytes / 2**20:.0f}", "first step (s)": f"{row.first_step_s:.1f}",
            "loss (last round)": f"{statistics.mean(row.losses[-steps:]):.4f}",
            "loss (all)": f"{statistics.mean(row.losses):.4f}",
        }
        eager = [r for r in rows if r.model == row.model and r.threads == row.threads
                 and r.perf == replace(row.perf, compile=False)]
        if row.perf.compile and eager:
            s_eager, s_compiled = batch_size / median[id(eager[0])], batch_size / ips
            cells["compile: break-even"] = (f"{(row.first_step_s - s_compiled) / (s_eager - s_compiled):.0f} steps"
                                            if s_compiled < s_eager else "never (not faster)")
        out.append(cells)
    return out


def print_diffusers_ratio(rows: list[Row]) -> None:
    """small against diffusers' matched model at each thread count, each in its fastest variant."""
    def fastest(model: str, threads: int) -> Row | None:
        candidates = [r for r in rows if r.threads == threads and r.model == model]
        return max(candidates, key=lambda r: statistics.median(r.rates), default=None)

    for threads in dict.fromkeys(row.threads for row in rows):
        ours, theirs = fastest("small", threads), fastest("diffusers-small", threads)
        if ours is None or theirs is None:
            continue
        ratio = statistics.median(ours.rates) / statistics.median(theirs.rates)
        print(f"\n{threads} thread(s): small / diffusers-small {variant_label(theirs.perf)} (the faster diffusers "
              f"variant) training throughput: {ratio:.2f}×")
        print("per round: " + ", ".join(f"{a / b:.2f}×" for a, b in zip(ours.rates, theirs.rates)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "base", "diffusers-small"],
                        help="presets, diffusers-small, each optionally with overrides: small[channels=16,16,64]")
    parser.add_argument("--variants", nargs="+", default=["auto"], help=VARIANT_SPEC)
    parser.add_argument("--loop", choices=["step", "train"], default="step", help="what is timed (see above)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size, help="the training default")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row per round")
    parser.add_argument("--rounds", type=int, default=3, help="--loop step only")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row (the first compiles)")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if min(args.batch_size, args.steps, args.rounds, args.warmup, *args.threads) < 1:
        parser.error("--batch-size, --steps, --rounds, --warmup and --threads must be positive")
    try:
        plan = [(name, [p for v in args.variants for p in parse_variant(v, name, device)]) for name in args.models]
        for name, _ in plan:
            build_model(name)
            if args.loop == "train" and parse_model_name(name)[0].startswith("diffusers-"):
                raise ValueError(f"--loop train runs our trainer, which builds our UNet only; drop {name!r} or use "
                                 "--loop step")
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.WARNING)

    digits = MNISTFromIDX()
    if args.loop == "step":
        count = args.warmup + args.rounds * args.steps
        batches = make_batches(digits.images, digits.labels, count, args.batch_size, device)
    rows, matmul = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        before = matmul_gflops() if device.type == "cpu" else float("nan")
        rows += (measure_steps(plan, batches, args, device) if args.loop == "step"
                 else measure_train(plan, digits, args, device))
        matmul[threads] = max(before, matmul_gflops()) if device.type == "cpu" else float("nan")
        print(f"  {threads} thread(s): fp32 matmul (1024²), best of before and after: {matmul[threads]:.1f} GFLOP/s",
              file=sys.stderr, flush=True)

    what = (f"median of {args.rounds} rounds × {args.steps} steps" if args.loop == "step"
            else f"median over {args.steps} logged steps of training.train")
    print(f"\ntorch {torch.__version__}, device {device}, batch {args.batch_size}, --loop {args.loop}: {what} after "
          f"{args.warmup} warm-up step(s)")
    printable = table(rows, matmul, args.batch_size, args.steps)
    print_table(printable, list(dict.fromkeys(key for cells in printable for key in cells)))
    if args.loop == "step":
        print_diffusers_ratio(rows)


if __name__ == "__main__":
    main()
