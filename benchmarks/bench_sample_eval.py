"""Sampling speed and sample quality of one checkpoint, per sampler: the table for the README / closing note.

    python benchmarks/bench_sample_eval.py                                   # checkpoints/mnist_small.pth
    python benchmarks/bench_sample_eval.py --ckpt-file runs/mnist_ddpm/test_001.pth \\
        --num-samples 1000 10000 --samplers ddpm ddim:50 ddim:20 ddim:10 --out-dir runs/bench

For each sampler (``ddpm``, ``ddpm:<steps>``, ``ddim:<steps>[:<eta>]`` or ``dpm-solver++:<steps>``; see
benchmarks/harness.py) it draws max(--num-samples) images once, timing them (images/s on this machine, batch
--batch-size), and saves them to ``<out-dir>/samples_<label>.npz``; with ``--reuse`` a later run takes the
samples (and their recorded speed) from there instead of sampling again.
Then for each N in --num-samples it scores the first N samples:

- classifier-FID against the 10,000 MNIST test digits, next to the real-vs-real floor at the same N
  (N random training digits against the test digits) — FID is biased upwards at small N;
- classifier score (at the largest N), and the memorisation fraction (samples closer to the training set
  than the 5th percentile of test digits are; ≈ 0.05 for a model that does not copy).

Output: a Markdown table on stdout and in ``<out-dir>/bench.md``, all numbers in ``<out-dir>/bench.json``.
Cost: DDPM takes T network calls per image, DDIM:S takes S — DDPM-1000 at N = 10,000 is 10 million UNet
evaluations, hours on a CPU; start with ``--num-samples 1000`` to see the speed (the progress bar shows the ETA).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from harness import SAMPLER_SPEC, draw_or_reuse, parse_sampler

from evaluation.classifier import DEFAULT_CLASSIFIER_PATH, classify_uint8, load_classifier
from evaluation.cli import DEFAULT_CKPT
from evaluation.metrics import (
    MetricsConfig,
    classifier_score,
    floor_digits,
    frechet_distance,
    gaussian_stats,
    load_mnist_reference,
    memorisation_stats,
    nearest_neighbour_l2,
    nn_reference_digits,
)

logger = logging.getLogger("bench_sample_eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-file", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--num-samples", type=int, nargs="+", default=[1000, 10000], help="N values for FID")
    parser.add_argument("--samplers", type=parse_sampler, nargs="+",
                        default=[parse_sampler(s) for s in ("ddpm", "ddim:50", "ddim:20", "ddim:10")],
                        help=SAMPLER_SPEC)
    parser.add_argument("--batch-size", type=int, default=500, help="sampling batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (images/s are reported for this device)")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default. Use 1 on a CPU shared with other jobs")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="use the raw weights, not EMA")
    parser.add_argument("--classifier-file", type=Path, default=DEFAULT_CLASSIFIER_PATH)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--reuse", action="store_true", help="reuse samples saved by an earlier run in --out-dir")
    args = parser.parse_args(argv)
    if min(args.num_samples) < 2 or args.batch_size < 1:
        parser.error("--num-samples values must be >= 2 and --batch-size >= 1")
    if not args.ckpt_file.is_file():
        parser.error(f"checkpoint {args.ckpt_file} not found (train one, or pass --ckpt-file)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    from common.checkpoint import build_model_from_checkpoint

    model, scheduler, _ = build_model_from_checkpoint(args.ckpt_file, use_ema=args.use_ema, device=args.device)
    ckpt_sha = hashlib.sha256(args.ckpt_file.read_bytes()).hexdigest()
    classifier, clf_meta = load_classifier(args.classifier_file)
    train_images, test_images = load_mnist_reference()
    sizes, n_max = sorted(set(args.num_samples)), max(args.num_samples)
    metrics_config = MetricsConfig()

    def feats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return classify_uint8(classifier, torch.from_numpy(images), metrics_config.batch_size)

    # ------------------------------------------------------------------ real references (shared by all samplers)
    # The same draws as evaluation.metrics.compute_metrics, so the numbers match `main.py --metrics`.
    stats_test = gaussian_stats(feats(test_images)[0])
    floors = {n: frechet_distance(*gaussian_stats(feats(floor_digits(train_images, n, metrics_config.seed))[0]),
                                  *stats_test)
              for n in sizes}
    nn_ref = nn_reference_digits(test_images, metrics_config.nn_reference_size, metrics_config.seed)
    test_nn, _ = nearest_neighbour_l2(nn_ref, train_images)

    # ------------------------------------------------------------------ per sampler
    rows = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for config, cap in args.samplers:
        n_draw = n_max if cap is None else min(cap, n_max)
        images, meta = draw_or_reuse(model, scheduler, config, n_draw, seed=args.seed, batch_size=args.batch_size,
                                     out_dir=args.out_dir, ckpt_sha=ckpt_sha, reuse=args.reuse)
        images = images[:n_draw]
        f, p = feats(images)
        sample_nn, _ = nearest_neighbour_l2(images, train_images)
        row = {"sampler": meta["sampler"], "nfe": meta["num_function_evals"], "num_samples": n_draw,
               "images_per_second": meta["images_per_second"], "classifier_score": classifier_score(p),
               "memorisation": memorisation_stats(sample_nn, test_nn, metrics_config.nn_quantile),
               "fid": {n: frechet_distance(*gaussian_stats(f[:n]), *stats_test) for n in sizes if n <= n_draw}}
        rows.append(row)
        logger.info("%s: %s", row["sampler"], {k: v for k, v in row.items() if k != "memorisation"})

    # ------------------------------------------------------------------ table
    head = ["sampler", "NFE", "images/s"] + [f"FID N={n}" for n in sizes] + ["score", "NN<5% frac", "N scored"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| real digits (floor) | – | – | " + " | ".join(f"{floors[n]:.2f}" for n in sizes)
                 + " | – | 0.05 | – |")
    for r in rows:
        cells = [r["sampler"], str(r["nfe"]), f"{r['images_per_second']:.2f}"]
        cells += [f"{r['fid'][n]:.2f}" if n in r["fid"] else "–" for n in sizes]
        cells += [f"{r['classifier_score']:.3f}", f"{r['memorisation']['fraction_below_threshold']:.3f}",
                  str(r["num_samples"])]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"checkpoint {args.ckpt_file} (sha256 {ckpt_sha[:12]}…, {'EMA' if args.use_ema else 'raw'} weights), "
            f"classifier sha256 {clf_meta['sha256'][:12]}… (test accuracy {clf_meta.get('test_accuracy')}), "
            f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, seed {args.seed}")
    table = "\n".join(lines) + "\n\n" + note + "\n"
    print(table)
    (args.out_dir / "bench.md").write_text(table)
    (args.out_dir / "bench.json").write_text(json.dumps(
        {"checkpoint": str(args.ckpt_file), "checkpoint_sha256": ckpt_sha, "classifier_sha256": clf_meta["sha256"],
         "fid_floor": floors, "rows": rows, "device": args.device, "threads": torch.get_num_threads()},
        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
