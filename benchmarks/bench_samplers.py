"""Few-step samplers side by side: speed, classifier-FID and precision/recall per sampler, for one checkpoint.

    python benchmarks/bench_samplers.py                                   # checkpoints/mnist_small.pth, N = 1000
    python benchmarks/bench_samplers.py --with-ddpm-1000 --num-threads 1  # also the full 1000-step chain
    python benchmarks/bench_samplers.py --samplers dpm-solver++:10 ddim:10 --num-samples 10000 --reuse
    python benchmarks/bench_samplers.py --samplers ddpm:50 ddim:50 --num-samples 1000 10000   # one draw, two Ns

Default settings: DDIM-50 at η ∈ {0, 0.5, 1}, DDPM respaced to 50/100/250 steps (Nichol & Dhariwal 2021),
DPM-Solver++(2M) at 10/20 steps; ``--with-ddpm-1000`` adds full DDPM (T network calls per image: slow on a CPU).
Each sampler draws max(``--num-samples``) images from one seed (timed: images/s on this device and thread
count), saved to ``<out-dir>/samples_<label>.npz`` (``--reuse`` takes them from there on a later run), and its
first N are scored for each N by :func:`evaluation.metrics.compute_metrics` — the numbers ``main.py
--eval-ddpm-model --metrics`` prints: classifier-FID against the MNIST test set with its real-vs-real floor at
the same N, precision/recall (k = 3) against N test digits (the real digits' own values head the table), the
classifier score, and the fraction of samples closer to a training digit than 95 % of test digits are (≈ 0.05
for a model that does not copy).

Output: a Markdown table on stdout and in ``<out-dir>/bench.md``; every metric in ``<out-dir>/bench.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import torch
from harness import SAMPLER_SPEC, draw_or_reuse, parse_sampler

from evaluation.classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from evaluation.cli import DEFAULT_CKPT, MAX_METRIC_SAMPLES
from evaluation.metrics import MetricsConfig, compute_metrics, load_mnist_reference

logger = logging.getLogger("bench_samplers")

DEFAULT_SAMPLERS = ("ddim:50:0", "ddim:50:0.5", "ddim:50:1", "ddpm:50", "ddpm:100", "ddpm:250",
                    "dpm-solver++:10", "dpm-solver++:20")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-file", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--num-samples", type=int, nargs="+", default=[1000],
                        help="N: images scored per sampler (one draw of the largest N serves every N)")
    parser.add_argument("--samplers", type=parse_sampler, nargs="+",
                        default=[parse_sampler(s) for s in DEFAULT_SAMPLERS], help=SAMPLER_SPEC)
    parser.add_argument("--with-ddpm-1000", action="store_true", help="also run full DDPM (T network calls/image)")
    parser.add_argument("--batch-size", type=int, default=500, help="sampling batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (images/s are reported for this device)")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default. Use 1 on a CPU shared with other jobs")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="use the raw weights, not EMA")
    parser.add_argument("--classifier-file", type=Path, default=DEFAULT_CLASSIFIER_PATH)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_samplers"))
    parser.add_argument("--reuse", action="store_true", help="reuse samples saved by an earlier run in --out-dir")
    args = parser.parse_args(argv)
    if not all(2 <= n <= MAX_METRIC_SAMPLES for n in args.num_samples) or args.batch_size < 1:
        parser.error(f"--num-samples must lie in [2, {MAX_METRIC_SAMPLES}] and --batch-size be >= 1")
    if not args.ckpt_file.is_file():
        parser.error(f"checkpoint {args.ckpt_file} not found (train one, or pass --ckpt-file)")
    if args.with_ddpm_1000:
        args.samplers.append(parse_sampler("ddpm"))
    return args


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per sampler and N, after the real digits' own values at each N (the floor)."""
    head = ["sampler", "N", "steps (NFE)", "images/s", "classifier-FID", "real floor (same N)", "precision", "recall",
            "score", "memorised"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in sorted({r["num_samples"] for r in rows}):  # N training digits scored like samples
        m = next(r for r in rows if r["num_samples"] == n)["metrics"]
        lines.append(f"| real digits | {n} | – | – | {m['fid_real_floor']:.2f} | {m['fid_real_floor']:.2f} | "
                     f"{_fmt(m['precision_real'], 3)} | {_fmt(m['recall_real'], 3)} | "
                     f"{m['classifier_score_real']:.2f} | {m['memorisation']['expected_fraction_for_real']:.3f} |")
    for r in rows:
        m = r["metrics"]
        cells = [r["sampler"], str(r["num_samples"]), str(r["num_function_evals"]), f"{r['images_per_second']:.2f}",
                 f"{m['fid']:.2f}", f"{m['fid_real_floor']:.2f}", _fmt(m["precision"], 3), _fmt(m["recall"], 3),
                 f"{m['classifier_score']:.2f}", f"{m['memorisation']['fraction_below_threshold']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    from common.checkpoint import build_model_from_checkpoint

    model, scheduler, ckpt = build_model_from_checkpoint(args.ckpt_file, use_ema=args.use_ema, device=args.device)
    weights = "EMA" if args.use_ema and ckpt.get("ema") is not None else "'model'"  # exports keep EMA in "model"
    T = scheduler.num_timesteps
    for config, _ in args.samplers:
        config.describe(T)  # fail before any sampling if a setting does not fit this checkpoint's T
    ckpt_sha = hashlib.sha256(args.ckpt_file.read_bytes()).hexdigest()
    classifier, clf_meta = load_classifier(args.classifier_file)
    train_images, test_images, _ = load_mnist_reference()
    metrics_config = MetricsConfig()

    rows = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for config, cap in args.samplers:
        n_draw = max(args.num_samples) if cap is None else min(cap, max(args.num_samples))
        images, meta = draw_or_reuse(model, scheduler, config, n_draw, seed=args.seed, batch_size=args.batch_size,
                                     out_dir=args.out_dir, ckpt_sha=ckpt_sha, reuse=args.reuse)
        for n in sorted({min(n, n_draw) for n in args.num_samples}):
            metrics = compute_metrics(images[:n], classifier, train_images, test_images, metrics_config)
            rows.append({"sampler": meta["sampler"], "config": meta["sampler_config"], "num_samples": n,
                         "num_function_evals": meta["num_function_evals"],
                         "images_per_second": meta["images_per_second"], "metrics": metrics})
            logger.info("%s, N = %d: FID %.2f (floor %.2f), precision %s, recall %s", meta["sampler"], n,
                        metrics["fid"], metrics["fid_real_floor"], metrics["precision"], metrics["recall"])

    note = (f"checkpoint {args.ckpt_file} (sha256 {ckpt_sha[:12]}…, {weights} weights, "
            f"T={T}), classifier sha256 {clf_meta['sha256'][:12]}… (test accuracy {clf_meta.get('test_accuracy')}), "
            f"N = {', '.join(map(str, args.num_samples))} per sampler (less where capped with @), device "
            f"{args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, seed {args.seed}; "
            f"precision/recall k = {metrics_config.pr_k} against N MNIST test digits")
    table = markdown_table(rows) + "\n\n" + note + "\n"
    print(table)
    (args.out_dir / "bench.md").write_text(table)
    (args.out_dir / "bench.json").write_text(json.dumps(
        {"command": " ".join(["python", "benchmarks/bench_samplers.py", *(sys.argv[1:] if argv is None else argv)]),
         "checkpoint": str(args.ckpt_file), "checkpoint_sha256": ckpt_sha, "classifier_sha256": clf_meta["sha256"],
         "num_samples": args.num_samples, "seed": args.seed, "device": args.device,
         "threads": torch.get_num_threads(), "batch_size": args.batch_size, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
