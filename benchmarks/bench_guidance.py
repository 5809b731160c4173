"""Classifier-free guidance scale against label accuracy and sample quality, for one class-conditional checkpoint.

    python benchmarks/bench_guidance.py                                  # checkpoints/mnist_small_cond.pth
    python benchmarks/bench_guidance.py --ckpt-file runs/cond/test_001.pth --scales 1 1.5 2 3 --num-samples 1000

For each scale w the default sampler (as ``main.py --eval-ddpm-model`` draws) draws ``--num-samples`` digits,
every digit in turn (N/10 per class, the same labels and seed for every w), scored by
:func:`evaluation.metrics.compute_metrics` exactly as ``main.py --eval-ddpm-model --guidance-scale W --metrics``
scores them: label accuracy (the classifier agrees with the requested digit), classifier-FID against the MNIST
test set beside its real-vs-real floor at the same N (training digits of the same classes), and
precision/recall (k = 3).

Output: a Markdown table on stdout; every metric in ``<out-dir>/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from harness import SAMPLER_SPEC, parse_sampler, print_table

from common.checkpoint import build_model_from_checkpoint
from evaluation.classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from evaluation.metrics import compute_metrics, load_mnist_reference
from sampling import DEFAULT_SAMPLER, DEFAULT_SAMPLER_STEPS, labels_in_rows, sample_model, to_uint8


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-file", type=Path, default=Path("checkpoints/mnist_small_cond.pth"))
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0], help="guidance w")
    parser.add_argument("--num-samples", type=int, default=1000, help="N per scale, split evenly over the classes")
    parser.add_argument("--sampler", type=parse_sampler, default=f"{DEFAULT_SAMPLER}:{DEFAULT_SAMPLER_STEPS}",
                        help=f"{SAMPLER_SPEC} (the @ cap is ignored)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--classifier-file", type=Path, default=DEFAULT_CLASSIFIER_PATH)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench_guidance"))
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model, scheduler, ckpt = build_model_from_checkpoint(args.ckpt_file)
    if not model.config.conditional:
        parser.error(f"{args.ckpt_file} is an unconditional model; guidance needs a --conditional checkpoint")
    config = args.sampler[0]
    labels = labels_in_rows(list(range(model.config.num_classes)), args.num_samples)
    classifier, _ = load_classifier(args.classifier_file)
    train_images, test_images, train_labels = load_mnist_reference()
    results, rows = [], []
    for w in args.scales:
        start = time.perf_counter()
        with torch.inference_mode():
            result = sample_model(model, scheduler, args.num_samples, config, labels, w, batch_size=args.batch_size,
                                  generator=torch.Generator().manual_seed(args.seed), progress=False)
        seconds = time.perf_counter() - start
        m = compute_metrics(to_uint8(result.images), classifier, train_images, test_images,
                            requested_labels=labels.numpy(), train_labels=train_labels)
        results.append({"guidance_scale": w, "seconds": seconds, "metrics": m})
        rows.append({"w": f"{w:g}", "label accuracy": f"{m['label_accuracy']['overall']:.3f}",
                     f"classifier-FID (N = {args.num_samples})": f"{m['fid']:.2f}",
                     "real floor (same classes)": f"{m['fid_real_floor']:.2f}",
                     "precision / recall": f"{m['precision']:.3f} / {m['recall']:.3f}",
                     "images/s": f"{args.num_samples / seconds:.1f}"})
        print(json.dumps(rows[-1]), flush=True)
    label = config.describe(scheduler.num_timesteps)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench.json").write_text(json.dumps(
        {"checkpoint": str(args.ckpt_file), "step": ckpt.get("step"), "sampler": label, "seed": args.seed,
         "threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")
    print(f"\n{args.ckpt_file} (step {ckpt.get('step')}), {label}, seed {args.seed}, "
          f"{torch.get_num_threads()} threads\n")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
