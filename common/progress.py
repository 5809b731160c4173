"""Progress for long work that reads well on a terminal *and* in a log file.

On a terminal (stderr is a TTY) this is a plain tqdm bar. Where stderr is a file (``nohup``, CI, a cluster), a
tqdm bar becomes hundreds of carriage-return updates glued onto one line, so there the same bar logs one INFO
line at most every ``LOG_INTERVAL_S`` seconds, and one when it ends. Callers use the tqdm API either way.
"""

from __future__ import annotations

import io
import logging
import math
import sys

from tqdm import tqdm

logger = logging.getLogger(__name__)

LOG_INTERVAL_S = 30.0


class LogLineBar(tqdm):
    """A tqdm whose every display is one log line (INFO), at most one per ``mininterval`` seconds."""

    monitor_interval = 0  # no monitor thread: it would force displays between our intervals

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.update(miniters=0, maxinterval=math.inf, dynamic_ncols=False, ncols=None, leave=False,
                      file=io.StringIO())  # tqdm insists on a file; display() never writes to it
        self._logged_n = None
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or self.disable:  # tqdm clearing its line: nothing to say in a log
            return True
        if self._logged_n == self.n or (self.n == 0 and msg is None):  # no "0/N" line at the start
            return True
        self._logged_n = self.n
        logger.info("%s", self._line() if msg is None else msg.strip())
        return True

    def _line(self) -> str:
        d = self.format_dict
        elapsed, rate = d["elapsed"], d["rate"] or (self.n / d["elapsed"] if d["elapsed"] else 0)
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        remaining = f"<{self.format_interval((self.total - self.n) / rate)}" if self.total and rate else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        desc = f"{self.desc}: " if self.desc else ""
        return (f"{desc}{done} [{self.format_interval(elapsed)}{remaining}, "
                f"{rate:.1f} {self.unit}/s{postfix}]")

    def close(self) -> None:
        if not self.disable and self._logged_n != self.n and self.n:
            logger.info("%s", self._line())  # the final count, unless it was just logged
            self._logged_n = self.n
        super().close()


def progress_bar(iterable=None, *, stream=None, **kwargs) -> tqdm:
    """A tqdm bar if ``stream`` (default ``sys.stderr``, where tqdm draws) is a terminal, else a
    :class:`LogLineBar`; takes tqdm's arguments."""
    stream = sys.stderr if stream is None else stream
    is_terminal = getattr(stream, "isatty", lambda: False)()
    return (tqdm if is_terminal else LogLineBar)(iterable, **kwargs)
