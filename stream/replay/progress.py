"""A progress bar on standard error for long replays (tqdm): input read, records, pairs per
second, the event time reached, and an ETA from the input's size. It appears only after
``DELAY_S`` and only when standard error is a terminal; ``quiet`` turns it off."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["DELAY_S", "Progress"]

DELAY_S = 2.0
EVERY_S = 0.5  # between refreshes of the figures beside the bar


class Progress:
    def __init__(self, total_bytes: int, quiet: bool = False, stream: Any = None, ncols: int | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and bool(getattr(stream, "isatty", lambda: False)())
        self.bar: Any = None
        self.records = 0
        self._next = 0.0
        self._started = time.perf_counter()
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, delay=DELAY_S,
                            file=stream, desc="replay", ncols=ncols, dynamic_ncols=ncols is None, leave=False)

    def read(self, size_bytes: int) -> None:
        """A record of ``size_bytes`` was read."""
        self.records += 1
        if self.bar is not None:
            self.bar.update(size_bytes)

    def status(self, pairs: int, watermark_s: float) -> None:
        """The figures beside the bar (at most every EVERY_S)."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if now < self._next:
            return
        self._next = now + EVERY_S
        reached = (datetime.fromtimestamp(watermark_s, UTC).strftime("%Y-%m-%dT%H:%MZ")
                   if 0 < watermark_s < 253402300800 else "-")
        rate = pairs / max(now - self._started, 1e-9)
        self.bar.set_postfix_str(f"{self.records:,} records, {rate:,.0f} pairs/s, event time {reached}",
                                 refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
