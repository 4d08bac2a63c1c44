"""A byte budget shared by a worker's threads: how many bytes of decoded pixels they may hold at once
(`fetch.decode_memory_bytes`; `sources.image` says what one decode costs).

A fetch worker runs `fetch.threads` downloads at once, and one small file can decode to hundreds of MB
(a 335 KB PNG just under `fetch.max_pixels` to ~1.4 GB before this budget); sixteen of them at once end a
worker for memory. With the budget, a decode first reserves its estimated peak: threads wait (first come,
first served, so a large image is not starved by a stream of small ones) rather than exceed it, and a
single image costing more than the whole budget is refused by the caller before any pixel is decoded.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class DecodeBudget:
    """`total` bytes, reserved and given back by `reserve`; `peak` is the most ever reserved at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.peak = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.total

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` (<= total) for the block, waiting in line until they are free."""
        if not self.fits(nbytes):
            raise ValueError(f"{nbytes} bytes cannot fit a budget of {self.total}")
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                self._cond.wait_for(lambda: self._queue[0] is ticket and self.free >= nbytes)
            finally:
                self._queue.remove(ticket)  # also when interrupted: the line must not stall behind it
            self.free -= nbytes
            self.peak = max(self.peak, self.total - self.free)
            self._cond.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._cond:
                self.free += nbytes
                self._cond.notify_all()
