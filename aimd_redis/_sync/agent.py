"""The process's agent: every task or thread of a process that takes or
gives back a slot goes through it, and it speaks to Redis for all of them.

Callers queue locally, in order, per domain. One flusher (a task here, a
thread in the sync client) takes everything pending (outcomes, give-backs,
acks of slots handed over, 'try' acquires and how many callers wait) and sends
one batch.lua call per model; while a call is out, the next batch gathers. In
Redis the process is one queue entry per domain, wanting as many slots as it
has callers waiting, and one heartbeat per domain every ``wait_poll_seconds``
while it has any. A slot comes back in the reply to a batch, or is handed
over by another process's release (a wake-up on the process's channel, and
listed for its next batch should the wake-up be lost); either way it goes to
the oldest caller still waiting, or straight back when none is left.

Generated from aimd_redis/_async/agent.py
by tools/unasync.py: edit that file, not this one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from aimd_redis._sync.synchronization import (
    CALLER_SENDS,
    Event,
    Mailbox,
    Worker,
    current,
    pending_cancellations,
    raise_swallowed_cancellation,
    run_to_the_end,
)
from aimd_redis.core import Call, Core
from aimd_redis.errors import NotRegisteredError, one_line
from aimd_redis.process_queue import Batch, DomainQueue, ProcessQueue, Result, Waiter
from aimd_redis.structs import Denied, DomainState, Grant, LeaseRef

logger = logging.getLogger("aimd_redis")

#: How long a caller that gives up waits, at most, for Redis to hear it: what
#: it gave back is sent in any case, with the next batch and again after.
SETTLE_SECONDS = 1.0

Run = Callable[[Call], Any]
Restore = Callable[[str, str], bool]
Box = Mailbox[Result]
Batches = list[Batch[Box]]


class Agent:
    def __init__(
        self, core: Core, client_id: str, run: Run, restore: Restore, on_acked: Callable[[str, float], None]
    ) -> None:
        self._core = core
        self.client_id = client_id
        self._run = run
        self._restore = restore
        self._on_acked = on_acked
        self._poll = core.config.wait_poll_seconds
        # Never held across a wait: the flusher, the wake-up listener and the
        # callers (threads, in the sync client) each change the queues under it.
        self._lock = threading.Lock()
        # The decisions; this class only moves what they say.
        self._queue: ProcessQueue[Box] = ProcessQueue(core)
        self._poked = Event()
        # Set while no batch is out: one sender at a time, the flusher or
        # (with CALLER_SENDS) a caller that found none out.
        self._sending = False
        self._idle = Event()
        self._idle.set()
        self._stopping = Event()
        self._worker: Worker | None = None
        self._sender: object = None
        self._channels: dict[str, tuple[str, str]] = {}

    # -- what callers do ------------------------------------------------------

    def _domain(self, ref: LeaseRef) -> DomainQueue[Box]:
        return self._queue.domain(ref)

    def _post(self) -> None:
        """Deliver what the decisions queued (under the lock, so that a
        caller leaving sees either its answer or its place in the queue)."""
        out, acked = self._queue.drain()
        for box, value in out:
            box.put(value)
        for lease_id, expiry in acked:
            self._on_acked(lease_id, expiry)

    def _submit(self, *, carried: bool = False) -> None:
        """Something to send. ``carried``: its caller waits for the batch and
        with CALLER_SENDS sends it itself (:meth:`_carry`), so the flusher is
        not woken for it."""
        if self._worker is None or not self._worker.alive():
            self._stopping = Event()
            self._worker = Worker(self._loop, "aimd-redis agent", self._stopping)
        if not (carried and CALLER_SENDS):
            self._poked.set()

    def acquire(self, ref: LeaseRef, timeout: float | None) -> Grant | None:
        """A slot for ``ref``'s domain, in arrival order; None after ``timeout``."""
        waiter: Waiter[Box] = Waiter(ref, Mailbox())
        with self._lock:
            self._domain(ref).join(waiter, time.monotonic())
            self._submit(carried=True)
        try:
            self._carry(waiter.box)
            got = waiter.box.get(timeout)
        except BaseException:
            late = self._leave(waiter)
            # Granted as the caller went: straight back. Else Redis hears that
            # one caller fewer waits. Either way before the caller goes on.
            if isinstance(late, Grant):
                back = self.submit(late.ref, Core.outcome_row(late.ref, "abandon"))
            else:
                back = self._barrier(ref)
            run_to_the_end(lambda: self._settled(back))
            raise
        if got is None:
            got = self._leave(waiter)
            if got is None:
                self._settled(self._barrier(ref))
                return None
        if isinstance(got, BaseException):
            raise got
        assert isinstance(got, Grant)
        return got

    def _barrier(self, ref: LeaseRef) -> Box:
        """A mailbox the next batch of ``ref``'s domain fills when it is done."""
        box: Box = Mailbox()
        with self._lock:
            self._domain(ref).barrier(box)
            self._submit()
        return box

    def _leave(self, waiter: Waiter[Box]) -> Result:
        with self._lock:
            got = waiter.box.peek()
            if got is None and self._domain(waiter.ref).leave(waiter):
                self._submit()
            return got

    def try_acquire(self, ref: LeaseRef) -> Grant | Denied:
        box: Box = Mailbox()
        with self._lock:
            self._domain(ref).try_acquire(ref, box)
            self._submit(carried=True)
        got = self._answer(box, ref, give_back=True)
        assert isinstance(got, (Grant, Denied))
        return got

    def submit(self, ref: LeaseRef, row: dict[str, str], *, now: bool = True) -> Box:
        """An outcome (``row``: Core.outcome_row), sent with the next batch
        (not ``now``: with whatever is asked next, see :meth:`send`); see
        :meth:`reported`."""
        box: Box = Mailbox()
        self._queue_outcome(ref, row, box, now)
        return box

    def send(self, ref: LeaseRef, box: Box) -> None:
        """Send the outcome submitted (not ``now``) with ``box`` if it is still
        waiting for a batch (nothing was asked after it)."""
        with self._lock:
            dom = self._domain(ref)
            if dom.holds_outcome(box):
                dom.changed = True
                self._submit()

    def reported(self, box: Box, ref: LeaseRef) -> tuple[bool, bool, DomainState | None]:
        """Whether the outcome released the slot, whether the model was
        registered, and the domain after it. A caller being cancelled waits
        at most SETTLE_SECONDS (the outcome goes out regardless)."""
        if pending_cancellations() and box.peek() is None and box.get(SETTLE_SECONDS) is None:
            raise_swallowed_cancellation(0)
        got = self._answer(box, ref)
        assert isinstance(got, tuple)
        return got

    def state(self, provider_name: str, model_id: str, domain: str) -> DomainState | None:
        """The domain as the last batch saw it."""
        return self._queue.state(provider_name, model_id, domain)

    def give_back(self, ref: LeaseRef) -> None:
        """A slot no caller wants (or an id a lost reply may have granted):
        back in the next batch, and again until Redis has it."""
        self._queue_outcome(ref, Core.outcome_row(ref, "abandon"), None, True)

    def _queue_outcome(self, ref: LeaseRef, row: dict[str, str], box: Box | None, now: bool) -> None:
        with self._lock:
            self._domain(ref).outcome(row, box, now=now)
            if now:
                self._submit(carried=box is not None)

    def _answer(self, box: Box, ref: LeaseRef, *, give_back: bool = False) -> Result:
        try:
            self._carry(box)
            got = box.get(None)
        except BaseException:
            # Cancelled while its batch is out: a slot it took, or may yet
            # take, goes back (by id: a give-back that arrives first makes the
            # acquire grant nothing).
            late = box.peek()
            if give_back and (late is None or isinstance(late, Grant)):
                back = self.submit(ref, Core.outcome_row(ref, "abandon"))
                run_to_the_end(lambda: self._settled(back))
            raise
        if isinstance(got, BaseException):
            raise got
        return got

    def _settled(self, box: Box) -> None:
        self._carry(box)
        box.get(SETTLE_SECONDS)  # failed, late or not: a give-back is sent until Redis has it

    # -- wake-ups ---------------------------------------------------------------

    def watching(self, channel: str, provider_name: str, model_id: str) -> None:
        """The model's wake channel of this process."""
        self._channels[channel] = (provider_name, model_id)

    def on_wake(self, channel: str, message: str) -> None:
        """A message on the process's channel: slots handed over, or a cooldown's end."""
        model = self._channels.get(channel)
        try:
            woke = self._core.parse_agent_wake(message)
        except Exception as exc:  # a message of another version: the next batch finds the slots
            logger.debug("unreadable wake-up %r: %s", message, exc)
            return
        if model is None:
            return
        with self._lock:
            self._queue.on_wake(model, woke, time.monotonic())
            self._post()
            self._submit()

    # -- the flusher ------------------------------------------------------------

    def is_sender(self) -> bool:
        """Whether the caller is sending this agent's batch (its calls take
        the agent's connection, not the gate)."""
        return self._sender is not None and current() is self._sender

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                wait = self._queue.next_due(time.monotonic(), self._poll)
            if wait > 0:
                self._poked.wait(wait)
            self._poked.clear()
            if self._stopping.is_set():
                return
            if not self._flush(by_flusher=True):
                self._idle.wait()  # a caller's batch is out; it pokes if more came meanwhile

    def _carry(self, box: Box) -> None:
        """With CALLER_SENDS, a caller whose item no batch has taken yet
        sends the batch itself when none is out."""
        if CALLER_SENDS and box.peek() is None:
            self._flush()

    def _flush(self, *, by_flusher: bool = False) -> bool:
        """Send everything due; False when another batch is out (its sender
        looks again when it is back)."""
        with self._lock:
            if self._sending:
                return False
            self._sending, self._sender = True, current()
            self._idle.clear()
        try:
            for model, batch in self._take().items():
                self._send(model, batch)
        finally:
            with self._lock:
                self._sending, self._sender = False, None
                self._idle.set()
                # More to send, or (after a caller's batch) a heartbeat or a
                # lingering ack whose time the reply may have set: the flusher
                # looks again.
                if any(
                    dom.changed or (not by_flusher and dom.next_due() < math.inf)
                    for dom in self._queue.domains.values()
                ):
                    self._poked.set()
        return True

    def _take(self) -> dict[tuple[str, str], Batches]:
        with self._lock:
            return self._queue.take(time.monotonic())

    def _send(self, model: tuple[str, str], batch: Batches) -> None:
        provider_name, model_id = model
        call = self._core.batch_call(provider_name, model_id, self.client_id, [b.items for b in batch], None)
        sent = time.monotonic()
        try:
            try:
                raw = self._run(call)
            except NotRegisteredError:
                if not self._restore(provider_name, model_id):
                    raise
                raw = self._run(call)
            reply = self._core.parse_batch(provider_name, model_id, raw)
        except BaseException as exc:
            self._failed(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        with self._lock:
            try:
                self._queue.deliver(batch, reply, sent, time.monotonic())
            except Exception as exc:  # a reply this client cannot place: its callers must not wait for ever
                logger.exception("a batch's reply could not be delivered")
                self._queue.failed(batch, exc)
            self._post()

    def _failed(self, batch: Batches, exc: BaseException) -> None:
        with self._lock:
            self._queue.failed(batch, exc)
            self._post()
        logger.debug("a batch failed: %s", one_line(exc) or exc)

    def stop(self) -> None:
        """Stop the flusher (after one last batch for what is pending)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self._stopping.set()
            self._poked.set()
            worker.stop()
        while not self._flush():
            self._idle.wait()
