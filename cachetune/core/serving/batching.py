"""Gathering concurrent embedding requests into shared encode batches.

Requests wait in a bounded queue. One worker takes the oldest request's model and every
queued request for the same model, up to ``max_batch_size`` texts, and encodes them in one
call on its own thread, so the event loop keeps accepting requests meanwhile. While that
call runs, new requests pile up and form the next batch: batches grow with the load by
themselves, and a lone client never waits for company. Clients answered together tend to
come back together, one by one: ``max_wait_ms`` holds the next batch until as many requests are
queued as were outstanding when the last batch was answered (its own and those queued during its
encode), or the batch is full, so the first one back does not start an encode alone and a crowd
split across two batches merges again. The worker idles at most ``max_wait_ms`` per batch: the
wait ends that long after the last batch was answered, or after the oldest request arrived if it
came later (a request queued during an encode would otherwise find its deadline already passed);
when a lone request was outstanding it never waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Deque, List, Optional

from cachetune.core.serving.catalog import Encoder

logger = logging.getLogger("cachetune.serve")


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class _Job:
    encoder: Encoder
    texts: List[str]
    future: asyncio.Future
    queued_at: float


class EncodeBatcher:
    """``await batcher.encode(encoder, texts)`` from many requests; one encode call per batch."""

    def __init__(self, max_batch_size: int = 64, max_wait_ms: float = 0.0, max_queue: int = 1024):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batches = 0
        self.texts = 0
        self._expected = 0  # requests in the last batch: clients likely to come back for the next one
        self._answered_at = 0.0  # loop time the last batch was answered
        self._pending: Deque[_Job] = deque()
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        # One thread: torch already spreads one encode over the cores; two would fight for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachetune-encode")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def encode(self, encoder: Encoder, texts: List[str]):
        """The rows of ``encoder.encode(texts)``, computed in a batch shared with other requests."""
        if self._task is None:
            raise RuntimeError("EncodeBatcher.start() was not awaited")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are already queued (--max-queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        job = _Job(encoder, texts, loop.create_future(), loop.time())
        self._pending.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self.max_wait and self._expected > 1:
                await self._wait_for_company(loop)
            batch = self._take()
            if not batch:
                continue
            texts = [text for job in batch for text in job.texts]
            try:
                vectors = await loop.run_in_executor(self._executor, batch[0].encoder.encode, texts)
            except Exception as exc:  # a failed encode fails its requests, never the worker
                logger.exception("encode of %d texts with %s failed", len(texts), batch[0].encoder.id)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            self.texts += len(texts)
            # Every request of this model outstanding now: the batch's clients, about to come back,
            # and those that queued meanwhile. Waiting for fewer (the batch alone) keeps a split
            # crowd split: two halves alternate forever, each waiting only for its own size.
            self._expected = len(batch) + sum(1 for j in self._pending if j.encoder is batch[0].encoder)
            start = 0
            for job in batch:
                if not job.future.done():  # a cancelled request (client gone) just drops its rows
                    job.future.set_result(vectors[start:start + len(job.texts)])
                start += len(job.texts)
            self._answered_at = loop.time()

    async def _wait_for_company(self, loop) -> None:
        deadline = max(self._pending[0].queued_at, self._answered_at) + self.max_wait
        first = self._pending[0].encoder
        while sum(1 for j in self._pending if j.encoder is first) < self._expected and \
                sum(len(j.texts) for j in self._pending if j.encoder is first) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> List[_Job]:
        """The oldest live request and the queued ones for its model that fit in one batch, in order."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending[0].encoder
        batch: List[_Job] = []
        kept: Deque[_Job] = deque()
        count = 0
        for job in self._pending:
            if job.future.done():
                continue
            if job.encoder is first and (not batch or count + len(job.texts) <= self.max_batch_size):
                batch.append(job)
                count += len(job.texts)
            else:
                kept.append(job)
        self._pending = kept
        return batch
