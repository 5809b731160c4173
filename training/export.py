"""Write the slim, sampling-only copy of a training checkpoint (EMA weights, no optimizer or RNG state).

    python -m training.export runs/mnist_ddpm/test_001.pth checkpoints/mnist_small.pth
"""

from __future__ import annotations

import argparse
import logging
import sys

from training.checkpoint import CheckpointError, export_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a training checkpoint, e.g. runs/mnist_ddpm/test_001.pth")
    parser.add_argument("out", help="where to write the slim checkpoint, e.g. checkpoints/mnist_small.pth")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_weights(args.checkpoint, args.out)
    except (FileNotFoundError, CheckpointError) as err:
        logging.getLogger(__name__).error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
