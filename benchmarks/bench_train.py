"""Training throughput of each preset and of diffusers' UNet2DModel matched to `small`.

    python benchmarks/bench_train.py                       # tiny, small, base, diffusers-small
    python benchmarks/bench_train.py --models small diffusers-small --rounds 5

Each step is forward + backward + AdamW on a batch of 28×28 images at uniformly drawn t (the real
training step, without data loading). Models are measured in one process, alternating round by round
after a warm-up, so that drifting machine load hits them alike; the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import (
    PeakMemory,
    build_model,
    matmul_gflops,
    num_parameters,
    print_table,
    training_flops_per_image,
)

from scheduler import LinearNoiseScheduler


def make_step(model, batch_size, device):
    sched = LinearNoiseScheduler(device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = (torch.rand(batch_size, 1, 28, 28, generator=g) * 2 - 1).to(device)

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

    models, steps, flops, peaks = {}, {}, {}, {}
    for name in args.models:
        model = build_model(name)
        flops[name] = training_flops_per_image(model)
        models[name] = model.to(device).train()
        steps[name] = make_step(models[name], args.batch_size, device)
        with PeakMemory(device) as mem:
            for _ in range(2):  # warm-up (allocator, oneDNN kernels)
                steps[name]()
        peaks[name] = mem.peak_bytes

    rates = {name: [] for name in args.models}
    for _ in range(args.rounds):
        for name in args.models:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))

    rows = []
    for name in args.models:
        ips = statistics.median(rates[name])
        gflops = flops[name] * ips / 1e9
        rows.append({
            "model": name,
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
        ratio = statistics.median(rates["small"]) / statistics.median(rates["diffusers-small"])
        print(f"\nsmall / diffusers-small training throughput: {ratio:.2f}×")


if __name__ == "__main__":
    main()
