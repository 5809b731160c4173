"""Small pieces every part of the repository uses: progress reporting (:mod:`common.progress`)."""

from common.progress import progress_bar

__all__ = ["progress_bar"]
