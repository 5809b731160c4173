"""Draw every DDPM building block, the training data and the diffusion process into PNG figures.

    python scripts/visualize_components.py --device cpu --outdir artifacts
    python scripts/visualize_components.py --skip mnist reverse          # leave some figures out
    python scripts/visualize_components.py --ckpt-file runs/mnist_ddpm/test_001.pth

Figures (by --skip name):
    time        time_embedding_heatmap.png, time_embedding_first64.png
    mhsa        mhsa_head0.png, mhsa_head1.png           (without and with the causal mask)
    mhca        mhca_head0.png, mhca_head1.png           (query tokens × context tokens)
    down        downsample_block_channel0.png
    bottleneck  bottleneck_block_channel0.png
    upsample    upsample_block_channel0.png
    unet        unet_io.png                              (RGB gradient through a 3-channel UNet)
    mnist       mnist_grid.png, mnist_label_hist.png
    schedule    schedule_curves.png
    forward     forward_diffusion.png
    reverse     reverse_process.png                      (only when the checkpoint exists)

Modules are untrained and seeded (--seed), so every run draws the same figures. The drawing code lives in
the ``visualization`` package.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

import visualization as viz
from common.checkpoint import build_model_from_checkpoint
from common.device import DEVICES, resolve_device
from dataset import DEFAULT_DATA_PATH
from sampling import SamplerConfig, sample_model
from scheduler import LinearNoiseScheduler
from visualization.plotting import seeded_init

logger = logging.getLogger("visualize_components")

GROUPS = ("time", "mhsa", "mhca", "down", "bottleneck", "upsample", "unet", "mnist", "schedule", "forward",
          "reverse")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CKPT = REPO_ROOT / "checkpoints" / "mnist_small.pth"
REVERSE_FRAMES = 9  # trajectory snapshots, evenly spaced over the T sampling steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visualize_components.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="default: cpu")
    parser.add_argument("--outdir", type=Path, default=REPO_ROOT / "artifacts",
                        help="folder for the PNGs (default: artifacts/)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME",
                        help=f"figures to leave out, any of: {' '.join(GROUPS)}")
    parser.add_argument("--mnist-root", type=Path, default=None,
                        help="class-folder tree or folder of MNIST IDX files (default: data/MNIST/mnist_images "
                             "when present, else the bundled IDX files in data/MNIST/raw)")
    parser.add_argument("--ckpt-file", type=Path, default=None,
                        help="trained checkpoint for reverse_process.png (default: "
                             "checkpoints/mnist_small.pth; the figure is skipped when it is absent)")
    parser.add_argument("--num-samples", type=int, default=3, help="samples drawn in reverse_process.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of every module and every noise draw")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch CPU threads (default 1: these small models gain nothing from more, and on a "
                             "shared CPU more threads can be 100× slower; 0 keeps torch's default)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.skip if name not in GROUPS]
    if unknown:
        parser.error(f"unknown --skip name(s) {', '.join(unknown)}; valid names are: {', '.join(GROUPS)}")
    if args.num_samples < 1:
        parser.error(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.num_threads < 0:
        parser.error(f"--num-threads must be 0 (torch's default) or more, got {args.num_threads}")
    try:
        args.device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.mnist_root is not None and not args.mnist_root.is_dir():
        parser.error(f"--mnist-root {args.mnist_root} is not a folder; pass a class-folder tree (made by "
                     "`python scripts/prepare_mnist.py`) or a folder holding the MNIST IDX files")
    if args.ckpt_file is not None and not args.ckpt_file.is_file():
        parser.error(f"--ckpt-file {args.ckpt_file} does not exist; train one with `python main.py "
                     "--train-ddpm-model` or leave the flag out to use the shipped checkpoint")
    return args


def draw_reverse(outdir: Path, ckpt: Path, num_samples: int, seed: int, device: torch.device) -> list[Path]:
    """reverse_process.png: sample from the checkpoint (EMA weights when it has them) with DDPM, keeping the
    trajectory."""
    with seeded_init(seed):  # the UNet's throw-away initial weights must not draw from the global RNG
        model, scheduler, ckpt_dict = build_model_from_checkpoint(ckpt, use_ema=True, device=device)
    labels = names = None
    if model.config.conditional:  # one digit per image: 0, 1, 2, …, conditional without guidance (w = 1)
        labels = torch.arange(num_samples) % model.config.num_classes
        names = [f"label {int(label)}" for label in labels]
    result = sample_model(
        model, scheduler, num_samples, SamplerConfig("ddpm"), labels, guidance_scale=1.0, batch_size=num_samples,
        generator=torch.Generator().manual_seed(seed), device=device,
        trajectory_frames=REVERSE_FRAMES, trajectory_images=num_samples, progress=True,
    )
    weights = "EMA weights" if ckpt_dict.get("ema") is not None else "weights"
    title = (f"Reverse process of {ckpt.name} (step {ckpt_dict['step']}, {weights}, {result.sampler}, "
             f"seed {seed}): x_t and the x̂0 predicted from it")
    return [viz.reverse_process_figure(outdir, result.trajectory, title, names)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        return draw_all(args)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was (the tests call main in-process)


def draw_all(args: argparse.Namespace) -> int:

    todo = [name for name in GROUPS if name not in args.skip]
    out, seed, device = args.outdir, args.seed, args.device
    logger.info("drawing %s into %s on %s (seed %d)", ", ".join(todo) or "nothing", out, device, seed)

    preview = None
    if {"mnist", "forward"} & set(todo):
        root = args.mnist_root
        if root is None:
            root = DEFAULT_DATA_PATH if DEFAULT_DATA_PATH.is_dir() else None  # None: the bundled IDX files
        preview = viz.load_mnist_preview(root)
    scheduler = LinearNoiseScheduler()  # the training default: T = 1000, β from 1e-4 to 0.02
    ckpt = args.ckpt_file if args.ckpt_file is not None else DEFAULT_CKPT
    blocks = [name for name in ("down", "bottleneck", "upsample") if name in todo]

    # (skip names covered, drawing function); the three blocks share one function
    steps = [
        (("time",), lambda: viz.time_embedding_figures(out)),
        (("mhsa",), lambda: viz.self_attention_figures(out, seed, device)),
        (("mhca",), lambda: viz.cross_attention_figures(out, seed, device)),
        (("down", "bottleneck", "upsample"), lambda: viz.block_figures(out, blocks, seed, device)),
        (("unet",), lambda: [viz.unet_io_figure(out, seed, device)]),
        (("mnist",), lambda: [viz.mnist_grid_figure(out, preview), viz.mnist_label_hist_figure(out, preview)]),
        (("schedule",), lambda: [viz.schedule_curves_figure(out, scheduler)]),
        (("forward",), lambda: [viz.forward_diffusion_figure(out, preview.first_image(), scheduler, seed=seed)]),
        (("reverse",), lambda: draw_reverse(out, ckpt, args.num_samples, seed, device)),
    ]
    start, written = time.perf_counter(), []
    for names, draw in steps:
        if not set(names) & set(todo):
            continue
        if names == ("reverse",) and not ckpt.is_file():
            logger.info("skipping reverse_process.png: no checkpoint at %s (pass --ckpt-file)", ckpt)
            continue
        tic = time.perf_counter()
        paths = draw()
        written += paths
        logger.info("%s: %.1f s (%s)", "/".join(n for n in names if n in todo), time.perf_counter() - tic,
                    ", ".join(p.name for p in paths))
    logger.info("wrote %d figures to %s in %.1f s", len(written), out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
