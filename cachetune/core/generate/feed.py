"""Requests handed to a generator backend while it runs (``Generator.generate_fed``).

``generate`` asks for a query's paraphrases once its negatives are checked; a backend that takes
requests from a feed gets them while it still answers the others, so its slots stay busy; any
other backend answers what the feed holds in rounds (:func:`answers`).
"""

from __future__ import annotations

import threading
from typing import Iterator, List, Sequence, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.generate.prompting import GenerationResult, Generator, Request


class RequestFeed:
    """Requests handed to a backend while it runs (``Generator.generate_fed``); thread-safe.

    ``put`` adds a request (its index is its position), ``close`` says no more will come;
    the backend's workers ``take`` the next request, or :data:`RequestFeed.WAIT` when none is
    queued yet but more may come, or None once the feed is closed and drained.
    """

    WAIT = "wait"

    def __init__(self, requests: Sequence[Request] = (), closed: bool = False):
        self._changed = threading.Condition()
        self.requests: List[Request] = list(requests)
        self._next = 0
        self.closed = closed

    def __len__(self) -> int:
        return len(self.requests)

    def put(self, request: Request) -> int:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
            return len(self.requests) - 1

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def take(self):
        """``(index, request)``, :data:`WAIT`, or None (closed and drained)."""
        with self._changed:
            if self._next < len(self.requests):
                self._next += 1
                return self._next - 1, self.requests[self._next - 1]
            return None if self.closed else self.WAIT

    def take_all(self) -> List[Tuple[int, Request]]:
        """Every request queued and not yet taken."""
        with self._changed:
            start, self._next = self._next, len(self.requests)
            return list(enumerate(self.requests[start:], start))

    def wait(self, timeout: float) -> None:
        """Block until a request is added or the feed closes (at most ``timeout`` seconds)."""
        with self._changed:
            if self._next >= len(self.requests) and not self.closed:
                self._changed.wait(timeout)


def answers(generator: Generator, feed: RequestFeed) -> Iterator[Tuple[int, GenerationResult]]:
    """``(index, result)`` for every request of ``feed`` until it is closed and drained: through
    ``generate_fed``, else in rounds of what is queued (``generate_each`` or ``generate``). The
    caller adds to the feed (or closes it) between two results."""
    if hasattr(generator, "generate_fed"):
        yield from _counted(generator, generator.generate_fed(feed), lambda: len(feed))
        return
    while True:
        queued = feed.take_all()
        if not queued:
            if not feed.closed:  # nothing in flight could add to it
                raise RuntimeError("generate: the request feed is open but empty")
            return
        requests = [request for _, request in queued]
        if hasattr(generator, "generate_each"):
            answered = generator.generate_each(requests)
        else:
            results = generator.generate(requests)
            if len(results) != len(requests):
                _wrong_count(generator, len(results), len(requests))
            answered = enumerate(results)
        for index, result in _counted(generator, answered, lambda: len(requests)):
            yield queued[index][0], result


def _counted(generator: Generator, pairs, expected) -> Iterator[Tuple[int, GenerationResult]]:
    """``pairs`` passed on; then an error unless there were ``expected()`` of them."""
    count = 0
    for pair in pairs:
        count += 1
        yield pair
    if count != expected():
        _wrong_count(generator, count, expected())


def _wrong_count(generator: Generator, got: int, asked: int) -> None:
    raise CachetuneError(f"backend {generator.label} returned {got} results for {asked} requests")
