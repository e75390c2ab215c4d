"""Progress of a long phase (a reference pass, scoring, an evaluation): a tqdm bar, or, with
progress bars off (``progress=false``), a log line every :data:`LOG_EVERY_S` seconds::

    reference log-probs: 40/80 pairs, 12.3 s, ~12 s left

Components below the engine (``models/``) take a plain ``on_batch(rows)`` callback, so the
caller passes :meth:`Progress.update` and the display lives here once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("rlhf")

LOG_EVERY_S = 10.0  # seconds between log lines when the bar is off


class Progress:
    """``total`` units of work (``unit``: "pairs", "responses", ...), advanced by :meth:`update`.

    ``enabled``: a tqdm bar; else a log line at most every ``interval`` seconds (default
    :data:`LOG_EVERY_S`, read when the phase starts), none for a phase shorter than that.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str,
        *,
        enabled: bool,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit, self.done = desc, total, unit, 0
        self.interval = LOG_EVERY_S if interval is None else interval
        self.clock = clock
        self.start = self.last_log = clock()
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit=f" {unit}", dynamic_ncols=True, leave=False
            )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last_log >= self.interval:
            self.last_log = now
            logger.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.start
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}, {elapsed:.1f} s"
        if 0 < self.done < self.total:
            text += f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
