"""Write the slim, sampling-only copy of a training checkpoint (EMA weights, no optimizer or RNG state).

    python scripts/export_weights.py runs/mnist_ddpm/test_001.pth checkpoints/mnist_small.pth
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common.checkpoint import CheckpointError, export_weights, load_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/export_weights.py", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a training checkpoint, e.g. runs/mnist_ddpm/test_001.pth")
    parser.add_argument("out", help="where to write the slim checkpoint, e.g. checkpoints/mnist_small.pth")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT even if it is a resumable training checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger(__name__)
    src, out = Path(args.checkpoint), Path(args.out)
    if out.is_dir():
        log.error("%s is a folder; name the file to write, e.g. %s", out, out / "model.pth")
        return 2
    if src.exists() and out.exists() and os.path.samefile(src, out):
        log.error("the output %s is the input checkpoint: exporting over it would destroy its optimizer and RNG "
                  "state; name another file", out)
        return 2
    if out.exists() and not args.force:
        try:
            resumable = load_checkpoint(out).get("optimizer") is not None
        except (OSError, ValueError):
            resumable = False
        if resumable:
            log.error("%s is a resumable training checkpoint; exporting over it would lose its optimizer and RNG "
                      "state. Name another file, or pass --force", out)
            return 2
    try:
        export_weights(src, out)
    except (FileNotFoundError, CheckpointError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
