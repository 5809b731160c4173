"""The ``--eval-ddpm-model`` flags and entry point: sample from a checkpoint, save images, optionally score them.
Where the output goes and what it holds: README, "Sampling and evaluation"."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

import sampling
from common import argtypes as types
from dataset.paths import REPO_ROOT
from evaluation.classifier import DEFAULT_CLASSIFIER_PATH, load_classifier
from evaluation.metrics import MetricsConfig, compute_metrics, format_metrics_table, load_mnist_reference
from scheduler import SPACINGS

logger = logging.getLogger(__name__)

SHIPPED_DIR = REPO_ROOT / "checkpoints"
DEFAULT_CKPT = SHIPPED_DIR / "mnist_small.pth"
DEFAULT_EVAL_ROOT = Path("runs") / "eval"
EXIT_OK, EXIT_USER_ERROR = 0, 2
MAX_METRIC_SAMPLES = 60_000  # MNIST training digits available for the FID floor
TRAIN_HINT = "python main.py --train-ddpm-model --task-name runs/mnist_ddpm"
GUIDANCE_SCALE = types.number(float, 0, 50, hint=" (0: unconditional, 1: conditional, >1: guided)")


# ---------------------------------------------------------------------------------------------- value types
def _label_list(text: str) -> list[str]:
    """Comma-separated class names (the training data's folder names, e.g. 7 or cat)."""
    labels = [part.strip() for part in text.split(",") if part.strip()]
    if not labels:
        raise argparse.ArgumentTypeError(f"need class names such as 0,1,2, got {text!r}")
    return labels


def class_indices(requested: list[str], class_names: list[str] | None, num_classes: int) -> list[int]:
    """Label indices of ``requested`` class names. ``class_names`` are the training folders in label order
    (stored in the checkpoint); checkpoints without them know their classes as 0 … num_classes − 1."""
    names = class_names or [str(i) for i in range(num_classes)]
    unknown = [r for r in requested if r not in names]
    if unknown:
        raise ValueError(f"class {', '.join(unknown)} does not exist: this model knows the classes "
                         f"{', '.join(names)}")
    return [names.index(r) for r in requested]


# ---------------------------------------------------------------------------------------------- flags
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the evaluation-only flags to ``parser`` (main.py adds those both modes share)."""
    g = parser.add_argument_group("evaluation (--eval-ddpm-model)")
    g.add_argument("--ckpt-file", type=Path, default=DEFAULT_CKPT,
                   help="checkpoint to sample from; rebuilds the model from it alone")
    g.add_argument("--no-ema", dest="use_ema", action="store_false",
                   help="sample with the raw training weights (default: the EMA weights, when the checkpoint has them)")
    g.add_argument("--num-samples", type=types.positive_int, default=100, help="images to draw")
    g.add_argument("--num-grid-rows", type=types.positive_int, default=10, help="rows of samples/grid.png")
    g.add_argument("--sampler", choices=sampling.SAMPLERS, default=None,
                   help="ddpm (Ho et al. 2020; respaced by --sample-steps), ddim (Song et al. 2021) or dpm-solver++ "
                        f"(2M, Lu et al. 2022); default: {sampling.DEFAULT_SAMPLER} with "
                        f"{sampling.DEFAULT_SAMPLER_STEPS} steps")
    g.add_argument("--sample-steps", type=types.positive_int, default=None,
                   help="network calls per image: ddpm in [1, T] (default T, the full chain), ddim in [1, T] "
                        f"(default {sampling.DEFAULT_STEPS['ddim']}), dpm-solver++ in [1, T-1] "
                        f"(default {sampling.DEFAULT_STEPS['dpm-solver++']})")
    g.add_argument("--eta", type=float, default=None,
                   help="DDIM η in [0, 1]: 0 deterministic (default), 1 DDPM-like noise")
    g.add_argument("--ddim-spacing", choices=SPACINGS, default=None,
                   help="how DDIM and respaced DDPM pick their timesteps (default trailing; see scheduler/ddim.py)")
    g.add_argument("--no-clip-x0", dest="clip_x0", action="store_false",
                   help="DDIM and DPM-Solver++: do not clamp x̂0 to [-1, 1] (as Eq. 12 and diffusers do)")
    g.add_argument("--save-trajectory", action="store_true",
                   help="also write samples/trajectory.gif of x_t and x̂0 along the chain (first 16 samples)")
    g.add_argument("--trajectory-frames", type=types.positive_int, default=40, help="frames in the trajectory GIF")
    g.add_argument("--metrics", action="store_true",
                   help="score the samples (classifier-FID, precision/recall, …) and write metrics.json")
    g.add_argument("--metrics-nn-reference", type=types.positive_int, default=MetricsConfig.nn_reference_size,
                   help="test digits whose nearest-training-digit distances set the memorisation threshold")
    labels = g.add_mutually_exclusive_group()
    labels.add_argument("--label", type=_label_list, default=None, metavar="CLASS",
                        help="class-conditional checkpoints: draw every sample as this class (e.g. 7)")
    labels.add_argument("--labels", type=_label_list, default=None, metavar="C1,C2,...",
                        help="class-conditional checkpoints: these classes in equal consecutive blocks, one "
                             "grid row each (default: every class in turn)")
    g.add_argument("--guidance-scale", type=GUIDANCE_SCALE, default=None, metavar="W",
                   help="classifier-free guidance ε∅ + W(εc − ε∅): 0 unconditional, 1 conditional, "
                        f">1 guided (default {sampling.DEFAULT_GUIDANCE_SCALE} for conditional checkpoints)")
    g.add_argument("--classifier-file", type=Path, default=DEFAULT_CLASSIFIER_PATH,
                   help="classifier weights for the metrics (sha256-checked against the .sha256 beside them)")


# ---------------------------------------------------------------------------------------------- helpers
def output_dir(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """--task-name if the user set it, else the checkpoint's folder (runs/eval/<stem> for shipped checkpoints)."""
    if args.task_name != parser.get_default("task_name"):
        return Path(args.task_name)
    ckpt = Path(args.ckpt_file).resolve()
    if ckpt.parent == SHIPPED_DIR.resolve():
        return DEFAULT_EVAL_ROOT / ckpt.stem
    return Path(args.ckpt_file).parent


def sampler_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> sampling.SamplerConfig:
    """The :class:`~sampling.SamplerConfig` the flags ask for (it validates their values); flags that do not
    apply to --sampler are errors."""
    name = args.sampler or sampling.DEFAULT_SAMPLER
    steps = args.sample_steps
    if args.sampler is None and steps is None:
        steps = sampling.DEFAULT_SAMPLER_STEPS
    if args.eta is not None and name != "ddim":
        why = ("DDPM's reverse variance is fixed to β̃_t" if name == "ddpm"
               else "DPM-Solver++(2M) is a deterministic ODE solver")
        parser.error(f"--eta only applies to --sampler ddim ({why})")
    if args.ddim_spacing is not None and name == "dpm-solver++":
        parser.error("--ddim-spacing does not apply to --sampler dpm-solver++ (it uses linspace timesteps)")
    if not args.clip_x0 and name == "ddpm":
        parser.error("--no-clip-x0 applies to --sampler ddim and dpm-solver++ (DDPM forms its mean from ε, Eq. 11)")
    try:
        return sampling.SamplerConfig(name, steps, 0.0 if args.eta is None else args.eta,
                                      args.ddim_spacing or sampling.SamplerConfig.spacing, args.clip_x0)
    except ValueError as err:
        parser.error(str(err))


# ---------------------------------------------------------------------------------------------- entry point
def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Sample (and score) as the flags say. Returns 0, or 2 for a user error (bad file, impossible value)."""
    from common.checkpoint import build_model_from_checkpoint, weights_key
    from common.device import resolve_device

    config = sampler_config(args, parser)  # flag combinations that need no checkpoint
    if args.metrics and not 2 <= args.num_samples <= MAX_METRIC_SAMPLES:
        parser.error(f"--metrics needs --num-samples in [2, {MAX_METRIC_SAMPLES}] (FID fits a Gaussian; the "
                     f"real-vs-real floor draws that many training digits), got {args.num_samples}")
    if args.num_threads:  # shared with training; 1 is fastest on an oversubscribed CPU
        torch.set_num_threads(args.num_threads)
    ckpt_path = Path(args.ckpt_file)
    if not ckpt_path.exists() and ckpt_path.resolve() == DEFAULT_CKPT.resolve():
        logger.error("no --ckpt-file given and the shipped checkpoint %s does not exist yet: train a model (`%s`) "
                     "and pass --ckpt-file runs/mnist_ddpm/<name>.pth", DEFAULT_CKPT, TRAIN_HINT)
        return EXIT_USER_ERROR
    try:
        device = resolve_device(args.device)
        model, scheduler, ckpt = build_model_from_checkpoint(ckpt_path, use_ema=args.use_ema, device=device)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
        logger.error("%s", err)
        return EXIT_USER_ERROR
    T = scheduler.num_timesteps
    if args.sampler is None and args.sample_steps is None and config.num_steps > T:  # a short schedule: all T
        config = dataclasses.replace(config, num_steps=T)
    try:
        label = config.describe(T)  # checks --sample-steps against T
    except ValueError as err:
        parser.error(f"--sample-steps {args.sample_steps}: {err} (this checkpoint has T={T})")
    classifier = clf_meta = None
    if args.metrics:  # check the classifier before spending minutes on sampling
        try:
            classifier, clf_meta = load_classifier(args.classifier_file)
        except (FileNotFoundError, ValueError) as err:
            logger.error("cannot compute --metrics: %s", err)
            return EXIT_USER_ERROR
    # ------------------------------------------------------------------ what to condition on
    conditional = model.config.conditional
    asked = args.label is not None or args.labels is not None or args.guidance_scale is not None
    if asked and not conditional:
        logger.error("%s is an unconditional model (trained without --conditional): --label, --labels and "
                     "--guidance-scale need a class-conditional checkpoint", ckpt_path)
        return EXIT_USER_ERROR
    requested = guidance = None
    if conditional:
        num_classes = model.config.num_classes
        try:
            classes = (class_indices(args.label or args.labels, ckpt.get("class_names"), num_classes)
                       if args.label or args.labels else list(range(num_classes)))
        except ValueError as err:
            logger.error("%s", err)
            return EXIT_USER_ERROR
        if len(classes) > args.num_samples:
            logger.error("--num-samples %d cannot show the %d classes asked for; pass --num-samples %d or more",
                         args.num_samples, len(classes), len(classes))
            return EXIT_USER_ERROR
        requested = sampling.labels_in_rows(classes, args.num_samples)
        guidance = sampling.DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
        logger.info("class-conditional: classes %s, guidance scale %g", classes, guidance)

    out_dir = output_dir(args, parser)
    samples_dir = out_dir / "samples"
    try:  # before minutes of sampling, never after
        samples_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.error("cannot write the samples to %s: %s; pass another --task-name", samples_dir, err)
        return EXIT_USER_ERROR
    weights = weights_key(ckpt, args.use_ema)  # exports keep EMA in "model"
    logger.info("checkpoint %s (step %s, %r weights, T=%d) → %s; sampler %s, %d samples, seed %d",
                ckpt_path, ckpt.get("step"), weights, T, out_dir, label, args.num_samples, args.seed)

    # ------------------------------------------------------------------ sample
    generator = torch.Generator().manual_seed(args.seed)  # CPU: the same noise on every device
    num_traj = min(16, args.num_samples)
    start = time.perf_counter()
    try:
        result = sampling.sample_model(model, scheduler, args.num_samples, config, requested, guidance,
                                       batch_size=args.batch_size, generator=generator, device=device,
                                       trajectory_frames=args.trajectory_frames if args.save_trajectory else 0,
                                       trajectory_images=num_traj)
    except sampling.NonFiniteSamplesError as err:
        logger.error("%s: %s", ckpt_path, err)
        return EXIT_USER_ERROR
    seconds = time.perf_counter() - start
    logger.info("%d samples in %.1f s (%.2f images/s)", args.num_samples, seconds, args.num_samples / seconds)

    # ------------------------------------------------------------------ save
    run_info = {
        "checkpoint": str(ckpt_path), "checkpoint_step": ckpt.get("step"),
        "weights": weights,
        "sampler": {**dataclasses.asdict(config), "label": label, "num_function_evals": result.num_function_evals},
        "num_samples": args.num_samples, "seed": args.seed, "batch_size": args.batch_size, "device": str(device),
        "conditional": conditional, "guidance_scale": guidance,
        "labels": requested.tolist() if requested is not None else None,
        "sampling_seconds": round(seconds, 3), "images_per_second": args.num_samples / seconds,
    }
    images = sampling.to_uint8(result.images)
    sampling.save_grid_png(images, samples_dir / "grid.png", args.num_grid_rows)
    sampling.save_samples_npz(images, samples_dir / "samples.npz", run_info)
    written = [samples_dir / "grid.png", samples_dir / "samples.npz"]
    if result.trajectory is not None:
        rows = max(1, int(num_traj**0.5))
        written.append(sampling.save_trajectory_gif(result.trajectory, samples_dir / "trajectory.gif", rows))
    logger.info("wrote %s", ", ".join(str(p) for p in written))

    # ------------------------------------------------------------------ score
    if args.metrics:
        try:
            train_images, test_images, train_labels = load_mnist_reference()
            metrics = compute_metrics(images, classifier, train_images, test_images,
                                      MetricsConfig(nn_reference_size=args.metrics_nn_reference),
                                      requested_labels=requested.numpy() if requested is not None else None,
                                      train_labels=train_labels)
        except (FileNotFoundError, ValueError) as err:
            logger.error("metrics not computed: %s", err)
            return EXIT_USER_ERROR
        report = {**run_info, "classifier": {k: clf_meta.get(k) for k in ("path", "sha256", "test_accuracy")},
                  "metrics": metrics}
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"\n{label}, {args.num_samples} samples from {ckpt_path}\n{format_metrics_table(metrics)}\n")
        logger.info("wrote %s", out_dir / "metrics.json")
    return EXIT_OK
