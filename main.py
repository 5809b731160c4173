"""Command line entry point: parse flags and dispatch. The work lives in training/ and evaluation/; the README
shows the commands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def build_parser() -> argparse.ArgumentParser:
    from evaluation import cli as eval_cli  # imported here, not at module level: see load_libraries
    from training import cli as train_cli

    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Denoising Diffusion Probabilistic Models (Ho et al., 2020) on MNIST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--train-ddpm-model", action="store_true", help="train a DDPM (see the training flags)")
    mode.add_argument("--eval-ddpm-model", action="store_true",
                      help="sample from a checkpoint and optionally compute quality metrics")
    add_shared_arguments(parser)
    train_cli.add_arguments(parser)
    eval_cli.add_arguments(parser)
    return parser


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both modes read; their defaults are :class:`~training.config.TrainConfig`'s."""
    from common import argtypes as types
    from common.device import DEVICES
    from training.config import TrainConfig

    g = parser.add_argument_group("both modes")
    g.add_argument("--task-name", default=TrainConfig.task_name,
                   help="training: the run folder (config.json, metrics.csv, loss.png, the checkpoint, viz/); "
                        "evaluation: where samples/ goes (default: beside the checkpoint)")
    g.add_argument("--batch-size", type=types.positive_int, default=TrainConfig.batch_size,
                   help="images per training step (per process) or per sampling batch")
    g.add_argument("--seed", type=types.seed, default=TrainConfig.seed,
                   help="seeds model init, data order and noise, or the sampling noise; the same seed reproduces a run")
    g.add_argument("--device", default=TrainConfig.device, choices=DEVICES, help="auto: cuda if available, else cpu")
    g.add_argument("--num-threads", type=types.workers, default=TrainConfig.num_threads,
                   help="torch CPU threads; 0 keeps torch's default (all cores). On a machine shared with other "
                        "jobs, 1 can be several times faster than oversubscribed cores")


def main(argv: list[str] | None = None) -> int:
    from evaluation import cli as eval_cli
    from training import cli as train_cli

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.train_ddpm_model:
        return train_cli.run(args, parser)
    if args.eval_ddpm_model:
        return eval_cli.run(args, parser)
    parser.print_help()
    return 0


def load_libraries() -> None:
    """Import the two modes (and with them torch) up front: run_process holds signals back meanwhile, because a
    KeyboardInterrupt raised inside torch's import can abort the interpreter (SIGABRT) or leave a half-loaded
    numpy that the next import refuses."""
    from evaluation import cli as eval_cli  # noqa: F401
    from training import cli as train_cli  # noqa: F401


def run_process(entry=main, load=load_libraries) -> int:
    """What ``python main.py`` does: ``load`` with Ctrl-C and SIGTERM held back until it returns, then ``entry``
    with them unwinding as KeyboardInterrupt; an interruption before training's own handler is installed
    (loading, set-up) ends with "interrupted" and exit status 130."""
    received: list[int] = []

    def hold(signum, frame) -> None:
        received.append(signum)

    def interrupt(signum, frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        load()
        for sig in previous:
            signal.signal(sig, interrupt)
        if received:
            raise KeyboardInterrupt
        return entry()
    except (KeyboardInterrupt, Exception) as err:
        # an Exception after a signal: a library swallowed the KeyboardInterrupt half-way through a later import,
        # and importing it again failed
        if not (received or isinstance(err, KeyboardInterrupt)):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(run_process())
