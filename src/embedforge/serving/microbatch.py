"""Coalesce concurrent embedding requests into fewer, larger inference calls (asyncio).

Each HTTP request of the OpenAI-compatible API becomes one or more *items* (its rows, in chunks of at most
``max_batch``); a single collector task turns queued items into batches of whole items up to ``max_batch`` rows and
runs each through ``run_batch`` (one Triton request), at most ``max_inflight`` at a time. The batching is
adaptive: while a slot is free, a request is sent at once (no added latency when the server is idle); while every
slot is busy, the requests that arrive meanwhile queue up and leave together as the next batch, so under load
the number of Triton requests grows more slowly than the number of HTTP requests. ``window_s`` > 0 additionally
holds a batch that is not full for up to that long after its oldest item arrived, trading latency for larger
batches.

Padding: the served tokenizer pads every row of a Triton request to the request's longest row, so coalescing a
short query with a long passage makes the embedder compute on padding (on a CPU that costs as much as real
tokens; Triton, called directly, never batches texts of different lengths: its dynamic batcher only joins equal
shapes). Each row therefore carries its length in tokens, and a batch takes a queued item only while the padded
size stays within ``1 + max_padding`` times the real tokens (None: no limit, for servers where padding is cheap).
The oldest item always leads the next batch, so skipping an item never starves it.

A failed batch fails the requests in it (and only those); a request whose client went away (its task was
cancelled) is dropped from the queue, or its rows are computed and discarded when it was already sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

Row = TypeVar("Row")


@dataclass
class BatchStats:
    """What the batcher did since it started: requests submitted, rows, and inference calls made."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class _Item(Generic[Row]):
    rows: Sequence[Row]
    future: asyncio.Future
    longest: int = 1  # tokens of its longest row
    total: int = 1  # tokens of all its rows
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[Row]):
    """Run ``run_batch`` on batches of rows gathered from concurrent :meth:`submit` calls.

    Args:
        run_batch: ``async (rows) -> ndarray[len(rows), ...]``, one inference call.
        max_batch: The most rows per call (the served model's ``max_batch_size``).
        max_inflight: Calls running at once; more rows wait and are coalesced.
        window_s: How long a batch that is not full may wait for more rows after its oldest arrived (0: never).
        max_padding: The padding a batch of rows of different lengths may add, as a fraction of its real tokens
            (None: any).
    """

    def __init__(self, run_batch: Callable[[list[Row]], Awaitable[np.ndarray]], max_batch: int,
                 max_inflight: int = 2, window_s: float = 0.0, max_padding: float | None = 0.25):
        if max_batch < 1 or max_inflight < 1 or window_s < 0 or (max_padding is not None and max_padding < 0):
            raise ValueError(f"max_batch {max_batch} and max_inflight {max_inflight} must be >= 1, "
                             f"window_s {window_s} and max_padding {max_padding} >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.window_s = window_s
        self.max_padding = max_padding
        self.stats = BatchStats()
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._arrived: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, rows: Sequence[Row], lengths: Sequence[int] | None = None) -> np.ndarray:
        """The result rows for ``rows``, in order (split into several calls when longer than ``max_batch``).

        Args:
            rows: What ``run_batch`` takes, one per result row.
            lengths: Each row's length in tokens (for the padding rule); None = all equal.
        """
        if not rows:
            raise ValueError("submit: no rows")
        if lengths is not None and len(lengths) != len(rows):
            raise ValueError(f"submit: {len(lengths)} lengths for {len(rows)} rows")
        self._start()
        loop = asyncio.get_running_loop()
        items = []
        for i in range(0, len(rows), self.max_batch):
            sizes = [max(1, n) for n in lengths[i:i + self.max_batch]] if lengths is not None else [1]
            items.append(_Item(rows[i:i + self.max_batch], loop.create_future(), longest=max(sizes),
                               total=sum(sizes) if lengths is not None else len(rows[i:i + self.max_batch])))
        self.stats.requests += 1
        self.stats.rows += len(rows)
        for item in items:
            self._queue.append(item)
            self._queued_rows += len(item.rows)
        self._arrived.set()
        try:
            parts = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            for item in items:
                item.future.cancel()  # still queued: the collector skips it
            raise
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _start(self) -> None:
        if self._collector is None or self._collector.done():
            self._arrived = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_inflight)
            self._collector = asyncio.get_running_loop().create_task(self._collect(), name="microbatch-collector")

    async def close(self) -> None:
        """Stop collecting; requests still queued or running are cancelled."""
        tasks = [t for t in (self._collector, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._queue:
            self._queue.popleft().future.cancel()
        self._queued_rows = 0

    async def _wait_for_more(self) -> None:
        """Hold a batch that is not full until ``window_s`` after its oldest item arrived."""
        deadline = self._queue[0].arrived + self.window_s
        while self._queued_rows < self.max_batch and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break

    def _fits(self, rows: int, longest: int, total: int) -> bool:
        return rows <= self.max_batch and (self.max_padding is None
                                           or rows * longest <= (1 + self.max_padding) * total)

    def _take(self) -> list[_Item]:
        """The oldest live item and the queued items after it that keep the batch within ``max_batch`` rows and
        the padding rule (cancelled items are dropped); the others stay queued, in order."""
        while self._queue and self._queue[0].future.done():  # its client went away
            self._queued_rows -= len(self._queue.popleft().rows)
        if not self._queue:
            return []
        seed = self._queue.popleft()
        batch, rows, longest, total = [seed], len(seed.rows), seed.longest, seed.total
        kept: deque[_Item] = deque()
        scanned = 0
        while self._queue and rows < self.max_batch and scanned < 4 * self.max_batch:
            item = self._queue.popleft()
            scanned += 1
            if item.future.done():
                self._queued_rows -= len(item.rows)
                continue
            grown = (rows + len(item.rows), max(longest, item.longest), total + item.total)
            if self._fits(*grown):
                batch.append(item)
                rows, longest, total = grown
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        self._queued_rows -= rows
        return batch

    async def _collect(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._slots.acquire()  # while every slot is busy, more requests queue up
            if self.window_s > 0 and self._queue:
                await self._wait_for_more()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Item]) -> None:
        rows = [row for item in batch for row in item.rows]
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(rows))
        try:
            out = await self.run_batch(rows)
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the requests of this batch
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(out[start:start + len(item.rows)])
                start += len(item.rows)
        finally:
            self._slots.release()
