"""Quality per CPU-minute: train for a fixed wall-clock budget, then sample with the default sampler and score.

    python benchmarks/bench_quality.py --minutes 15                           # small, then diffusers-small
    python benchmarks/bench_quality.py --report                               # the table of every result so far

Both models go through the same recipe — the repository's defaults (``TrainConfig``): batch 128 from the
in-memory MNIST cache, t uniform, the ε-prediction loss with the default weighting (min-SNR-γ), AdamW with
warm-up and the lr schedule driven by the elapsed fraction of ``--minutes``, gradient clipping, the power-law
EMA — for ``--minutes`` of wall-clock training, then the EMA weights draw ``--num-samples`` digits with
``--sampler`` (default: ``main.py --eval-ddpm-model``'s, respaced DDPM-50; results before 2026-11-29 used
``ddim:50``). Scores: classifier-FID against the MNIST test set next to the real-vs-real floor at the same N,
precision/recall and the classifier score. Results go to ``<out-dir>/<model>.json`` and a sample grid to
``<out-dir>/<model>_grid.png``.

Fairness: on an idle machine run the models one after the other (the default), each with every core; on a
shared one run them at the same time in two processes with ``--num-threads 1`` each, so that the load hits
them alike. Candidates and recipe changes: ``--models "small[channels=16,16,64]"``, ``--lr 2e-3 --tag lr2e-3``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
from harness import REPO_ROOT, SAMPLER_SPEC, build_model, num_parameters, parse_sampler, print_table

from dataset import load_training_set
from evaluation.classifier import load_classifier
from evaluation.metrics import compute_metrics, load_mnist_reference
from sampling import (
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLER_STEPS,
    SamplerConfig,
    sample_images,
    save_grid_png,
    to_uint8,
)
from scheduler import LinearNoiseScheduler
from training.batching import BatchSource
from training.config import TrainConfig
from training.runtime import resolve_performance, to_memory_format
from training.state import EMA
from training.trainer import l_simple, lr_at, run_progress


def train_for(model: torch.nn.Module, minutes: float, seed: int, steps: int | None = None, **recipe) -> dict:
    """The repository's training recipe (``TrainConfig`` defaults, or ``recipe`` overrides of its fields) for
    ``minutes`` of wall clock (or exactly ``steps`` steps, which a loaded machine cannot distort), in the layout
    the trainer picks for the CPU; returns what it did."""
    last_step, max_seconds = (steps, math.inf) if steps else (10**12, 60 * minutes)
    config = TrainConfig(seed=seed, **recipe)
    perf = resolve_performance(config.precision, config.compile, config.channels_last, torch.device("cpu"))
    model.to(memory_format=torch.channels_last if perf.channels_last else torch.contiguous_format)
    dataset = load_training_set(config.data_path)
    batches = BatchSource(dataset, config.batch_size, seed, torch.device("cpu"), in_memory=True)
    scheduler = LinearNoiseScheduler()
    ema = EMA(model, config.ema_decay, config.ema_gamma)
    min_snr_gamma = config.min_snr_gamma if config.loss_weighting == "min-snr" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step, losses, start = 0, [], time.perf_counter()
    model.train()
    for epoch in range(10**6):
        for x0, _ in batches(epoch, 0):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, run_progress(step, last_step, time.perf_counter() - start, max_seconds),
                                    config)
            t = scheduler.sample_timesteps(x0.shape[0], generator=generator)
            eps = torch.randn(x0.shape, generator=generator)
            loss = l_simple(model, scheduler, to_memory_format(x0, perf), t, eps, min_snr_gamma=min_snr_gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            ema.update(model, step)
            step += 1
            losses.append(loss.item())
            if step >= last_step or time.perf_counter() - start > max_seconds:
                seconds = time.perf_counter() - start
                tail = losses[-100:]
                return {"ema": ema.model, "steps": step, "epochs": step * config.batch_size / len(dataset),
                        "train_seconds": seconds, "images_per_s": step * config.batch_size / seconds,
                        "final_loss": sum(tail) / len(tail)}
    raise AssertionError("unreachable")


def evaluate(model: torch.nn.Module, num_samples: int, seed: int, grid_path: Path, sampler: SamplerConfig) -> dict:
    scheduler = LinearNoiseScheduler()
    start = time.perf_counter()
    result = sample_images(model, scheduler, num_samples, sampler,
                           batch_size=250, generator=torch.Generator().manual_seed(seed), progress=False)
    seconds = time.perf_counter() - start
    images = to_uint8(result.images)
    save_grid_png(images[:100], grid_path, 10, scale=2)
    classifier, _ = load_classifier()
    train_images, test_images, _ = load_mnist_reference()
    metrics = compute_metrics(images, classifier, train_images, test_images)
    return {"sampler": sampler.describe(scheduler.num_timesteps), "sample_seconds": seconds, "fid": metrics["fid"],
            "fid_floor": metrics["fid_real_floor"], "precision": metrics["precision"], "recall": metrics["recall"],
            "classifier_score": metrics["classifier_score"], "class_histogram": metrics["class_histogram"]}


def report(out_dir: Path) -> None:
    rows = []
    for path in sorted(out_dir.glob("*.json")):
        r = json.loads(path.read_text())
        budget = f"{r['budget_steps']} steps" if r.get("budget_steps") else f"{r['minutes']} min"
        rows.append({"model": r["model"], "params": f"{r['params']:,}", "budget": budget,
                     "threads": r["threads"], "steps": r["steps"], "epochs": f"{r['epochs']:.2f}",
                     "train img/s": f"{r['images_per_s']:.0f}", "loss": f"{r['final_loss']:.4f}",
                     "sampler": r.get("sampler", "ddim-50-eta0"),
                     f"FID (N={r['num_samples']})": f"{r['fid']:.2f}", "floor": f"{r['fid_floor']:.2f}",
                     "precision / recall": (f"{r['precision']:.3f} / {r['recall']:.3f}" if r.get("precision")
                                            is not None else "–"),
                     "score": f"{r['classifier_score']:.2f}"})
    if rows:
        print_table(rows, list(rows[0]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small", "diffusers-small"])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget per model")
    parser.add_argument("--steps", type=int, default=None,
                        help="train exactly this many steps instead (recipe comparisons on a machine that is not idle)")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples scored per model")
    parser.add_argument("--sampler", type=parse_sampler, default=f"{DEFAULT_SAMPLER}:{DEFAULT_SAMPLER_STEPS}",
                        help=f"the sampler that draws them: {SAMPLER_SPEC} (the @ cap is ignored)")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "runs" / "bench_quality")
    parser.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    parser.add_argument("--ema-decay", type=float, help="override the recipe's EMA decay")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--lr-schedule", choices=("cosine", "constant"), help="override the recipe's lr schedule")
    parser.add_argument("--ema-gamma", type=float, help="override the recipe's power-law EMA gamma")
    parser.add_argument("--loss-weighting", choices=("uniform", "min-snr"), help="override the loss weighting")
    parser.add_argument("--tag", default="", help="suffix for the result's name (e.g. the recipe change)")
    parser.add_argument("--report", action="store_true", help="only print the table of earlier results")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.report:
        report(args.out_dir)
        return
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    for name in args.models:
        torch.manual_seed(args.seed)
        model = build_model(name)
        budget = f"{args.steps} steps" if args.steps else f"{args.minutes} min"
        print(f"{name}: {num_parameters(model):,} parameters, training for {budget}", flush=True)
        recipe = {k: v for k, v in (("lr", args.lr), ("ema_decay", args.ema_decay), ("batch_size", args.batch_size),
                                    ("lr_schedule", args.lr_schedule), ("ema_gamma", args.ema_gamma),
                                    ("loss_weighting", args.loss_weighting)) if v is not None}
        label = name + (f" {args.tag}" if args.tag else "")
        file_stem = re.sub(r"[^\w.-]+", "_", label).strip("_")
        trained = train_for(model, args.minutes, args.seed, args.steps, **recipe)
        ema = trained.pop("ema").eval()
        with torch.inference_mode():
            scores = evaluate(ema, args.num_samples, args.seed, args.out_dir / f"{file_stem}_grid.png",
                              args.sampler[0])
        result = {"model": label, "recipe": recipe, "params": num_parameters(model), "minutes": args.minutes,
                  "budget_steps": args.steps,
                  "threads": torch.get_num_threads(), "num_samples": args.num_samples, **trained, **scores}
        assert math.isfinite(result["fid"])
        (args.out_dir / f"{file_stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result), flush=True)
    report(args.out_dir)


if __name__ == "__main__":
    main()
