"""Servers that queue instead of refusing, as self-hosted inference servers
(vLLM, TGI, SGLang, NIM) do: shared by the simulator (simulated time) and the
cold server (real time), as ``bucket.py`` is.

A server runs up to ``knee`` requests at once in one batch (continuous
batching: a request joins the batch as soon as a place frees). A bigger batch
serves each of its requests more slowly: a request that joins a batch of
``n`` (itself counted) takes its own work times
``1 + growth * n / knee``, so a full batch is ``1 + growth`` times slower than
a lone request, yet serves ``knee / (1 + growth)`` times as many. Requests
beyond the batch wait in a FIFO queue, never refused, unless the server has a
queue cap (vLLM's ``--max-num-queued-reqs``): past it, it answers 503. A
streamed answer's first token comes once the request has joined the batch and
its prompt is read (``first_token_share`` of its service time), so the time
to the first token is mostly time in the queue.

Throughput grows with the batch up to the knee and not beyond it, while
latency grows past it with the queue: the concurrency worth holding is the
knee.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: A knee (or capacity) as a function of the server's time.
Knee = Callable[[float], int]
#: A request's own work, in seconds at a batch of one.
Work = Callable[[random.Random], float]


@dataclass(frozen=True)
class Slow:
    """A spell where every request is ``factor`` times slower, whatever the
    load (a hosted API having a bad quarter of an hour)."""

    start: float
    end: float
    factor: float = 2.0


@dataclass(frozen=True)
class Batching:
    """How a queueing server serves (see the module's docstring)."""

    growth: float = 0.5
    """A full batch serves each request ``1 + growth`` times slower than a lone one."""
    queue_cap: int | None = None
    """Requests waiting beyond the batch before the server answers 503; None: no cap."""
    stream: bool = False
    """Answers are streamed: the caller sees the first token apart from the end."""
    first_token_share: float = 0.1
    """A streamed answer's first token comes after this share of its service time."""
    slow: tuple[Slow, ...] = ()
    tokens_per_second: float = 50.0
    """Output tokens per second of a request's own work (an answer's length)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.growth) and self.growth >= 0):
            raise ValueError(f"growth must be a finite number >= 0, not {self.growth!r}")
        if self.queue_cap is not None and self.queue_cap < 0:
            raise ValueError(f"queue_cap must be >= 0 (or None for no cap), not {self.queue_cap!r}")
        if not 0 <= self.first_token_share <= 1:
            raise ValueError(f"first_token_share must be within [0, 1], not {self.first_token_share!r}")

    def factor(self, batch: int, knee: int, now: float) -> float:
        """How much slower than alone a request joining a batch of ``batch`` (itself counted) is served."""
        return (1 + self.growth * batch / max(1, knee)) * self.slowdown(now)

    def slowdown(self, now: float) -> float:
        """How much slower than usual every request is at ``now`` (the slow spells)."""
        return math.prod(s.factor for s in self.slow if s.start <= now < s.end)

    def rate(self, batch: int, knee: int, mean_work: float, now: float = -math.inf) -> float:
        """Requests a second with ``batch`` requests always in service (at most ``knee`` of them count)."""
        n = min(batch, knee)
        return n / (mean_work * self.factor(n, knee, now)) if n > 0 else 0.0


@dataclass(frozen=True)
class Served:
    """When a request joined the batch and how long it takes there."""

    seconds: float
    first_token: float
    """Seconds from joining the batch to the first token."""
    tokens: int
    batch: int
    """The batch it joined, itself counted."""


class Queue(Generic[T]):
    """The batch and its FIFO queue, on a clock the caller gives (I/O-free:
    the simulator and the cold server both drive it)."""

    def __init__(self, batching: Batching, knee: int) -> None:
        self.batching = batching
        self.knee = knee
        self.in_batch = 0
        self.waiting: deque[T] = deque()

    def arrive(self, item: T) -> bool | None:
        """True: ``item`` joins the batch (call ``join``); False: it waits in the
        queue (it is handed back by ``leave`` when its turn comes); None: the
        queue is full (503)."""
        if self.in_batch < self.knee and not self.waiting:
            return True
        cap = self.batching.queue_cap
        if cap is not None and len(self.waiting) >= cap:
            return None
        self.waiting.append(item)
        return False

    def join(self, work: float, now: float) -> Served:
        """A request whose own work is ``work`` seconds joins the batch."""
        self.in_batch += 1
        factor = self.batching.factor(self.in_batch, self.knee, now)
        seconds = work * factor
        first = seconds * self.batching.first_token_share
        return Served(seconds, first, max(1, round(work * self.batching.tokens_per_second)), self.in_batch)

    def leave(self) -> list[T]:
        """A request left the batch: the queued requests that may join now, in order."""
        self.in_batch -= 1
        return self.admit()

    def admit(self) -> list[T]:
        """The queued requests that fit the batch (after the knee grew, or one left)."""
        out: list[T] = []
        while self.waiting and self.in_batch + len(out) < self.knee:
            out.append(self.waiting.popleft())
        return out

    def forget(self, item: T) -> bool:
        """A queued request was given up by its caller."""
        try:
            self.waiting.remove(item)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class Reference:
    """What a queueing server does with no load and at its best, to judge a run."""

    no_load: float
    """Median latency of a lone request (a batch of one)."""
    no_load_p90: float
    """The 90th percentile of a lone request's latency (a heavy tail's p90 is
    judged against this, not against the median)."""
    mean_work: float

    @classmethod
    def of(cls, work: Work, batching: Batching, knee: int, draws: int = 20_000, seed: int = 12345) -> Reference:
        rng = random.Random(seed)
        sample = sorted(work(rng) for _ in range(draws))
        alone = batching.factor(1, knee, -math.inf)
        return cls(statistics.median(sample) * alone, sample[int(0.9 * draws)] * alone, statistics.fmean(sample))
