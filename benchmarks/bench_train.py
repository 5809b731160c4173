"""Training throughput of each preset and of diffusers' UNet2DModel matched to `small`.

    python benchmarks/bench_train.py                       # tiny, small, base, diffusers-small
    python benchmarks/bench_train.py --models small diffusers-small --rounds 5

Each step is forward + backward + AdamW on a batch of 28×28 images at uniformly drawn t (the real
training step, without data loading). Models are measured in one process, alternating round by round
after a warm-up, so that drifting machine load hits them alike; the table gives the median over rounds.

Layout: our presets run as the trainer runs them on this device (``training.performance``: channels_last
on a CPU). diffusers' model runs both as its users get it (``NCHW``) and in channels_last (``+cl``), and the
printed ratio is against the faster of the two, so the baseline is never handicapped by a layout choice.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from harness import (
    PeakMemory,
    build_model,
    matmul_gflops,
    num_parameters,
    print_table,
    training_flops_per_image,
)

from scheduler import LinearNoiseScheduler
from training.performance import resolve_performance


def make_step(model, batch_size, device, channels_last: bool):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    sched = LinearNoiseScheduler(device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = (torch.rand(batch_size, 1, 28, 28, generator=g) * 2 - 1).to(device).contiguous(memory_format=memory_format)

    def step():
        t = sched.sample_timesteps(batch_size, generator=g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, eps, t), t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "base", "diffusers-small"])
    parser.add_argument("--batch-size", type=int, default=128, help="the training default")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    matmul = matmul_gflops() if device.type == "cpu" else float("nan")
    print(f"fp32 matmul (1024²): {matmul:.1f} GFLOP/s")

    ours_channels_last = resolve_performance("auto", None, None, device).channels_last
    variants = []  # (label, model name, channels_last)
    for name in args.models:
        if name.startswith("diffusers-"):
            variants += [(name, name, False), (name + "+cl", name, True)]
        else:
            variants.append((name, name, ours_channels_last))

    models, steps, flops, peaks = {}, {}, {}, {}
    for label, name, channels_last in variants:
        model = build_model(name)
        flops[label] = training_flops_per_image(model)
        models[label] = model.to(device).train()
        steps[label] = make_step(models[label], args.batch_size, device, channels_last)
        with PeakMemory(device) as mem:
            for _ in range(2):  # warm-up (allocator, oneDNN kernels)
                steps[label]()
        peaks[label] = mem.peak_bytes

    labels = [label for label, _, _ in variants]
    layouts = {label: channels_last for label, _, channels_last in variants}
    rates = {label: [] for label in labels}
    for _ in range(args.rounds):
        for name in labels:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))

    if device.type == "cpu":  # the CPU's peak: the higher of a measurement before and one after the models
        matmul = max(matmul, matmul_gflops())
        print(f"fp32 matmul (1024²), best of before and after: {matmul:.1f} GFLOP/s")
    rows = []
    for name in labels:
        ips = statistics.median(rates[name])
        gflops = flops[name] * ips / 1e9
        rows.append({
            "model": name,
            "layout": "channels_last" if layouts[name] else "NCHW",
            "params": f"{num_parameters(models[name]):,}",
            "GFLOP/img": f"{flops[name] / 1e9:.3f}",
            "img/s": f"{ips:.0f}",
            "GFLOP/s": f"{gflops:.1f}",
            "% matmul": f"{100 * gflops / matmul:.0f}%",
            "peak mem (MB)": f"{peaks[name] / 2**20:.0f}",
        })
    print(f"\nbatch {args.batch_size}, median of {args.rounds} rounds × {args.steps} steps")
    print_table(rows, list(rows[0]))
    if "small" in rates and "diffusers-small" in rates:
        baseline = max(("diffusers-small", "diffusers-small+cl"), key=lambda k: statistics.median(rates[k]))
        ratio = statistics.median(rates["small"]) / statistics.median(rates[baseline])
        print(f"\nsmall / {baseline} (the faster diffusers layout) training throughput: {ratio:.2f}×")
        per_round = [a / b for a, b in zip(rates["small"], rates[baseline])]
        print("per round: " + ", ".join(f"{r:.2f}×" for r in per_round))


if __name__ == "__main__":
    main()
