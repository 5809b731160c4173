"""Sampling throughput: DDPM-1000 and DDIM-50 for each preset, and diffusers' pipelines with the matched UNet.

    python benchmarks/bench_sample.py                                   # all presets + diffusers-small
    python benchmarks/bench_sample.py --models small --ddim-samples 1000 --ddpm-samples 0   # the 1000-digit target

Models are untrained (speed does not depend on the weights). Ours run through ``sampling.sample_images``
under ``torch.inference_mode()``; the baseline is diffusers' ``DDPMPipeline`` / ``DDIMPipeline`` around the
``UNet2DModel`` matched to ``small`` (``benchmarks/harness.py``), with the same T = 1000 linear schedule.
Each measurement is one batch of all its samples after a short warm-up; the table reports images/s and
the wall time it implies for 1,000 images. Ours run in the layout ``build_model_from_checkpoint`` gives
(channels_last; ``--no-channels-last`` for NCHW); diffusers' pipeline as its users get it (NCHW).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from harness import build_model, num_parameters, print_table

from sampling import SamplerConfig, sample_images
from scheduler import LinearNoiseScheduler


def ours(model, sampler: str, steps: int, n: int, device, batch_size: int = 0) -> float:
    scheduler = LinearNoiseScheduler(device=device)
    config = SamplerConfig("ddim", steps) if sampler == "ddim" else SamplerConfig("ddpm")
    eps_fn = model
    sample_images(eps_fn, scheduler, 2, SamplerConfig("ddim", 2), batch_size=2, progress=False,
                  generator=torch.Generator().manual_seed(1))  # warm-up
    start = time.perf_counter()
    sample_images(eps_fn, scheduler, n, config, batch_size=batch_size or n, generator=torch.Generator().manual_seed(0),
                  progress=False)
    return n / (time.perf_counter() - start)


def diffusers_pipeline(model, sampler: str, steps: int, n: int, device) -> float:
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    unet = model.model  # the UNet2DModel inside benchmarks.harness.DiffusersEps
    kwargs = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if sampler == "ddim":
        pipe = DDIMPipeline(unet, DDIMScheduler(**kwargs, timestep_spacing="trailing"))
        call = dict(num_inference_steps=steps, eta=0.0)
    else:
        pipe = DDPMPipeline(unet, DDPMScheduler(**kwargs, variance_type="fixed_small"))
        call = dict(num_inference_steps=1000)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=2, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    pipe(batch_size=n, output_type="np", generator=torch.Generator().manual_seed(0), **call)
    return n / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "base", "diffusers-small"])
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--ddim-samples", type=int, default=250, help="images per DDIM measurement (0: skip)")
    parser.add_argument("--ddpm-samples", type=int, default=25, help="images per DDPM-1000 measurement (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="run our models channels_last, as build_model_from_checkpoint does (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=0, help="our sampling batch (0: all samples in one)")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")

    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name).to(device).eval()
        if not name.startswith("diffusers-") and args.channels_last:
            model.to(memory_format=torch.channels_last)
        run = (diffusers_pipeline if name.startswith("diffusers-")
               else functools.partial(ours, batch_size=args.batch_size))
        for sampler, steps, n in (("ddim", args.ddim_steps, args.ddim_samples), ("ddpm", 1000, args.ddpm_samples)):
            if n <= 0:
                continue
            ips = run(model, sampler, steps, n, device)
            rows.append({"model": name, "params": f"{num_parameters(model):,}",
                         "sampler": f"{sampler.upper()}-{steps}", "N": n, "img/s": f"{ips:.2f}",
                         "1,000 images": f"{1000 / ips:.0f} s"})
            print(rows[-1], flush=True)
    print()
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
