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

aimd_redis/_sync/agent.py is generated from this file by tools/unasync.py.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from aimd_redis._async.synchronization import (
    CALLER_SENDS,
    Event,
    Mailbox,
    Worker,
    current,
    pending_cancellations,
    raise_swallowed_cancellation,
    run_to_the_end,
)
from aimd_redis.core import Call, Core, DomainItems
from aimd_redis.errors import REFUSED_BEFORE_RUNNING, NotRegisteredError, one_line
from aimd_redis.replies import BatchReply, DomainBatchReply
from aimd_redis.structs import Denied, DomainState, Grant, LeaseRef

logger = logging.getLogger("aimd_redis")

#: Lease ids sent per domain and batch for the oldest waiting callers: a batch
#: grants its process at most this many slots of a domain (the rest follow).
#: Fewer when the domain looked full: as many as looked free, and a few more.
IDS_PER_BATCH = 128
IDS_WHEN_FULL = 4
#: How long a caller that gives up waits, at most, for Redis to hear it: what
#: it gave back is sent in any case, with the next batch and again after.
SETTLE_SECONDS = 1.0

Result = Any  # Grant | Denied | (released, registered, state) | BaseException
Run = Callable[[Call], Awaitable[Any]]
Restore = Callable[[str, str], Awaitable[bool]]


class _Waiter:
    __slots__ = ("box", "ref")

    def __init__(self, ref: LeaseRef) -> None:
        self.ref = ref
        self.box: Mailbox[Grant | BaseException] = Mailbox()


class _Domain:
    """What the agent has for one domain of one model."""

    def __init__(self, key: tuple[str, str, str]) -> None:
        self.key = key
        self.waiters: deque[_Waiter] = deque()
        self.outcomes: list[tuple[dict[str, str], Mailbox[Result] | None]] = []
        self.tries: list[tuple[LeaseRef, Mailbox[Result]]] = []
        self.acks: list[str] = []
        # Slots handed over and taken up or given back, until Redis has their
        # ack or give-back: a batch reply that still lists them changes nothing.
        self.taken: set[str] = set()
        # Slots handed over too late to use before their ack: lease id -> the
        # claim window's end, given to a caller once acked.
        self.acking: dict[str, float] = {}
        # Callers that went, waiting for the next batch to tell Redis.
        self.barriers: list[Mailbox[Result]] = []
        self.changed = False  # to be looked at now
        self.told = 0  # how many slots Redis's entry of the process wants, as far as it knows
        self.due = 0.0  # monotonic time of the next heartbeat (or re-check)
        self.state: DomainState | None = None

    def idle(self) -> bool:
        """Nothing pending, nothing expected."""
        return not (self.waiters or self.outcomes or self.tries or self.acks or self.taken or self.barriers)


class AsyncAgent:
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
        self._domains: dict[tuple[str, str, str], _Domain] = {}
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
        # Redis's clock in the last reply, and the local clock when its call went.
        self._heard: tuple[float, float] | None = None

    # -- what callers do ------------------------------------------------------

    def _domain(self, ref: LeaseRef) -> _Domain:
        key = (ref.provider_name, ref.model_id, ref.domain)
        dom = self._domains.get(key)
        if dom is None:
            dom = self._domains[key] = _Domain(key)
        return dom

    def _submit(self, *, carried: bool = False) -> None:
        """Something to send. ``carried``: its caller waits for the batch and
        with CALLER_SENDS sends it itself (:meth:`_carry`), so the flusher is
        not woken for it."""
        if self._worker is None or not self._worker.alive():
            self._stopping = Event()
            self._worker = Worker(self._loop, "aimd-redis agent", self._stopping)
        if not (carried and CALLER_SENDS):
            self._poked.set()

    async def acquire(self, ref: LeaseRef, timeout: float | None) -> Grant | None:
        """A slot for ``ref``'s domain, in arrival order; None after ``timeout``."""
        waiter = _Waiter(ref)
        with self._lock:
            dom = self._domain(ref)
            dom.waiters.append(waiter)
            dom.changed = True
            self._submit(carried=True)
        try:
            await self._carry(waiter.box)
            got = await waiter.box.get(timeout)
        except BaseException:
            late = self._leave(waiter)
            # Granted as the caller went: straight back. Else Redis hears that
            # one caller fewer waits. Either way before the caller goes on.
            if isinstance(late, Grant):
                back = self.submit(late.ref, Core.outcome_row(late.ref, "abandon"))
            else:
                back = self._barrier(ref)
            await run_to_the_end(lambda: self._settled(back))
            raise
        if got is None:
            got = self._leave(waiter)
            if got is None:
                await self._settled(self._barrier(ref))
                return None
        if isinstance(got, BaseException):
            raise got
        return got

    def _barrier(self, ref: LeaseRef) -> Mailbox[Result]:
        """A mailbox the next batch of ``ref``'s domain fills when it is done."""
        box: Mailbox[Result] = Mailbox()
        with self._lock:
            dom = self._domain(ref)
            dom.barriers.append(box)
            dom.changed = True
            self._submit()
        return box

    def _leave(self, waiter: _Waiter) -> Grant | BaseException | None:
        with self._lock:
            got = waiter.box.peek()
            if got is None:
                dom = self._domain(waiter.ref)
                if waiter in dom.waiters:
                    dom.waiters.remove(waiter)
                    dom.changed = True
                    self._submit()
            return got

    async def try_acquire(self, ref: LeaseRef) -> Grant | Denied:
        box: Mailbox[Result] = Mailbox()
        with self._lock:
            dom = self._domain(ref)
            dom.tries.append((ref, box))
            dom.changed = True
            self._submit(carried=True)
        got = await self._answer(box, ref, give_back=True)
        assert isinstance(got, (Grant, Denied))
        return got

    def submit(self, ref: LeaseRef, row: dict[str, str], *, now: bool = True) -> Mailbox[Result]:
        """An outcome (``row``: Core.outcome_row), sent with the next batch
        (not ``now``: with whatever is asked next, see :meth:`send`); see
        :meth:`reported`."""
        box: Mailbox[Result] = Mailbox()
        self._queue_outcome(ref, row, box, now)
        return box

    def send(self, ref: LeaseRef, box: Mailbox[Result]) -> None:
        """Send the outcome submitted (not ``now``) with ``box`` if it is still
        waiting for a batch (nothing was asked after it)."""
        with self._lock:
            dom = self._domain(ref)
            if any(mine is box for _, mine in dom.outcomes):
                dom.changed = True
                self._submit()

    async def reported(self, box: Mailbox[Result], ref: LeaseRef) -> tuple[bool, bool, DomainState | None]:
        """Whether the outcome released the slot, whether the model was
        registered, and the domain after it. A caller being cancelled waits
        at most SETTLE_SECONDS (the outcome goes out regardless)."""
        if pending_cancellations() and box.peek() is None and await box.get(SETTLE_SECONDS) is None:
            raise_swallowed_cancellation(0)
        got = await self._answer(box, ref)
        assert isinstance(got, tuple)
        return got

    def state(self, provider_name: str, model_id: str, domain: str) -> DomainState | None:
        """The domain as the last batch saw it."""
        dom = self._domains.get((provider_name, model_id, domain))
        return None if dom is None else dom.state

    def give_back(self, ref: LeaseRef) -> None:
        """A slot no caller wants (or an id a lost reply may have granted):
        back in the next batch, and again until Redis has it."""
        self._queue_outcome(ref, Core.outcome_row(ref, "abandon"), None, True)

    def _queue_outcome(self, ref: LeaseRef, row: dict[str, str], box: Mailbox[Result] | None, now: bool) -> None:
        with self._lock:
            dom = self._domain(ref)
            if row["lease_id"] in dom.acks:  # a slot handed over and given back unused: no ack
                dom.acks.remove(row["lease_id"])
            dom.outcomes.append((row, box))
            if now:
                dom.changed = True
                self._submit(carried=box is not None)

    async def _answer(self, box: Mailbox[Result], ref: LeaseRef, *, give_back: bool = False) -> Result:
        try:
            await self._carry(box)
            got = await box.get(None)
        except BaseException:
            # Cancelled while its batch is out: a slot it took, or may yet
            # take, goes back (by id: a give-back that arrives first makes the
            # acquire grant nothing).
            late = box.peek()
            if give_back and (late is None or isinstance(late, Grant)):
                back = self.submit(ref, Core.outcome_row(ref, "abandon"))
                await run_to_the_end(lambda: self._settled(back))
            raise
        if isinstance(got, BaseException):
            raise got
        return got

    async def _settled(self, box: Mailbox[Result]) -> None:
        await self._carry(box)
        await box.get(SETTLE_SECONDS)  # failed, late or not: a give-back is sent until Redis has it

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
            dom = self._domains.get((*model, woke.domain))
            if dom is None:
                if not woke.handed:
                    return
                dom = self._domain(LeaseRef(provider_name=model[0], model_id=model[1], domain=woke.domain, lease_id=""))
            if woke.state is None:
                dom.due = min(dom.due, time.monotonic() + (woke.wait or 0.0))
            else:
                for lease_id in woke.handed:
                    self._take_handed(dom, lease_id, woke.expires_at, woke.state, self._heard)
            self._submit()

    def _take_handed(
        self, dom: _Domain, lease_id: str, expires_at: float, state: DomainState, heard: tuple[float, float] | None
    ) -> None:
        """A slot handed over: to the oldest waiting caller, acked in the next
        batch (first, when too little of its claim window may be left);
        given back when nobody here waits any more."""
        if lease_id in dom.taken:
            return
        dom.taken.add(lease_id)
        dom.told = max(0, dom.told - 1)  # Redis took it off the process's entry
        fresh = heard is not None and (
            self._core.background_claim(expires_at, heard[0], time.monotonic() - heard[1]) is not None
        )
        if dom.waiters and not fresh:
            dom.acks.append(lease_id)
            dom.acking[lease_id] = expires_at
            dom.changed = True
            return
        first, ref = self._to_oldest(dom, lease_id)
        if first is not None:
            dom.acks.append(lease_id)
            first.box.put(self._core.handed(ref, expires_at, state))
        dom.changed = True

    @staticmethod
    def _to_oldest(dom: _Domain, lease_id: str) -> tuple[_Waiter | None, LeaseRef]:
        """The oldest waiting caller a slot goes to, and the slot's lease;
        a slot nobody here waits for any more goes back at once."""
        first = dom.waiters.popleft() if dom.waiters else None
        ref = LeaseRef(
            provider_name=dom.key[0],
            model_id=dom.key[1],
            domain=dom.key[2],
            lease_id=lease_id,
            tokens=0 if first is None else first.ref.tokens,
        )
        if first is None:
            dom.outcomes.append((Core.outcome_row(ref, "abandon"), None))
            dom.changed = True
        return first, ref

    # -- the flusher ------------------------------------------------------------

    def is_sender(self) -> bool:
        """Whether the caller is sending this agent's batch (its calls take
        the agent's connection, not the gate)."""
        return self._sender is not None and current() is self._sender

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            wait = self._next_due()
            if wait > 0:
                await self._poked.wait(wait)
            self._poked.clear()
            if self._stopping.is_set():
                return
            if not await self._flush(by_flusher=True):
                await self._idle.wait()  # a caller's batch is out; it pokes if more came meanwhile

    async def _carry(self, box: Mailbox[Result]) -> None:
        """With CALLER_SENDS, a caller whose item no batch has taken yet
        sends the batch itself when none is out."""
        if CALLER_SENDS and box.peek() is None:
            await self._flush()

    async def _flush(self, *, by_flusher: bool = False) -> bool:
        """Send everything due; False when another batch is out (its sender
        looks again when it is back)."""
        with self._lock:
            if self._sending:
                return False
            self._sending, self._sender = True, current()
            self._idle.clear()
        try:
            for model, batch in self._take().items():
                await self._send(model, batch)
        finally:
            with self._lock:
                self._sending, self._sender = False, None
                self._idle.set()
                # More to send, or (after a caller's batch) heartbeats whose
                # time the reply may have moved: the flusher looks again.
                if any(dom.changed or (dom.waiters and not by_flusher) for dom in self._domains.values()):
                    self._poked.set()
        return True

    def _next_due(self) -> float:
        with self._lock:
            now = time.monotonic()
            due = [0.0 if d.changed else d.due - now for d in self._domains.values() if d.changed or d.waiters]
        return max(0.0, min(due)) if due else self._poll

    def _take(self) -> dict[tuple[str, str], list[tuple[str, _Domain, DomainItems, list[Any]]]]:
        """Everything due, by model; the pending lists handed over to the batch."""
        now = time.monotonic()
        batches: dict[tuple[str, str], list[tuple[str, _Domain, DomainItems, list[Any]]]] = {}
        with self._lock:
            for (provider_name, model_id, name), dom in list(self._domains.items()):
                beat = bool(dom.waiters) and dom.due <= now
                if not (dom.changed or beat):
                    if dom.idle():
                        del self._domains[(provider_name, model_id, name)]
                    continue
                dom.changed = False
                pending = dom.outcomes or dom.tries or dom.acks or dom.barriers
                if not (beat or pending or len(dom.waiters) != dom.told):
                    continue
                dom.due = now + self._poll
                free = IDS_PER_BATCH if dom.state is None else dom.state.current_limit - dom.state.in_flight
                count = min(IDS_PER_BATCH, max(IDS_WHEN_FULL, free + len(dom.outcomes)))
                ids = [w.ref for w in itertools.islice(dom.waiters, count)]
                outcomes, tries, acks, barriers = dom.outcomes, dom.tries, dom.acks, dom.barriers
                dom.outcomes, dom.tries, dom.acks, dom.barriers = [], [], [], []
                tokens = dom.waiters[0].ref.tokens if dom.waiters else 0
                items = DomainItems(
                    name=name,
                    outcomes=[row for row, _ in outcomes],
                    acks=acks,
                    tries=[ref for ref, _ in tries],
                    want=len(dom.waiters),
                    ids=ids,
                    tokens=tokens,
                )
                batches.setdefault((provider_name, model_id), []).append(
                    (name, dom, items, [outcomes, tries, barriers])
                )
        return batches

    async def _send(self, model: tuple[str, str], batch: list[tuple[str, _Domain, DomainItems, list[Any]]]) -> None:
        provider_name, model_id = model
        call = self._core.batch_call(provider_name, model_id, self.client_id, [items for _, _, items, _ in batch], None)
        sent = time.monotonic()
        try:
            try:
                raw = await self._run(call)
            except NotRegisteredError:
                if not await self._restore(provider_name, model_id):
                    raise
                raw = await self._run(call)
            reply = self._core.parse_batch(provider_name, model_id, raw)
        except BaseException as exc:
            self._failed(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._heard = (reply.at, sent)
        try:
            self._deliver(batch, reply, self._heard)
        except Exception as exc:  # a reply this client cannot place: its callers must not wait for ever
            logger.exception("a batch's reply could not be delivered")
            self._failed(batch, exc)

    def _failed(self, batch: list[tuple[str, _Domain, DomainItems, list[Any]]], exc: BaseException) -> None:
        """Every item fails as a call of its own would; what may have run is
        made harmless: ids that may have been granted go back by id."""
        refused = isinstance(exc, REFUSED_BEFORE_RUNNING)
        with self._lock:
            for _, dom, items, (outcomes, tries, barriers) in batch:
                for box in barriers:
                    box.put(exc)
                for row, box in outcomes:
                    if row["outcome"] == "abandon":
                        dom.outcomes.append((row, None))  # a give-back: again next time
                    if box is not None:
                        box.put(exc)
                dom.acks = items.acks + dom.acks
                for ref, box in tries:
                    if not refused:
                        dom.outcomes.append((Core.outcome_row(ref, "abandon"), None))
                    box.put(exc)
                sent = {ref.lease_id for ref in items.ids}
                for waiter in list(dom.waiters):
                    if waiter.ref.lease_id in sent and not refused:
                        dom.outcomes.append((Core.outcome_row(waiter.ref, "abandon"), None))
                    waiter.box.put(exc)
                dom.waiters.clear()
                dom.told = -1  # unknown: told again
                dom.changed = True
        logger.debug("a batch failed: %s", one_line(exc) or exc)

    def _deliver(
        self, batch: list[tuple[str, _Domain, DomainItems, list[Any]]], reply: BatchReply, heard: tuple[float, float]
    ) -> None:
        with self._lock:
            for (_, dom, items, (outcomes, tries, barriers)), got in zip(batch, reply.domains, strict=True):
                self._deliver_domain(dom, items, outcomes, tries, got, reply.registered, heard)
                for box in barriers:
                    box.put(True)

    def _give_acked(self, dom: _Domain, lease_id: str, window: float, expiry: float, state: DomainState) -> None:
        first, ref = self._to_oldest(dom, lease_id)
        if first is not None:
            first.box.put(msgspec.structs.replace(self._core.handed(ref, window, state), expires_at=expiry))

    def _deliver_domain(
        self,
        dom: _Domain,
        items: DomainItems,
        outcomes: list[tuple[dict[str, str], Mailbox[Result] | None]],
        tries: list[tuple[LeaseRef, Mailbox[Result]]],
        got: DomainBatchReply,
        registered: bool,
        heard: tuple[float, float],
    ) -> None:
        if got.state is not None:
            dom.state = got.state
        for (row, box), released in zip(outcomes, got.rel, strict=True):
            dom.taken.discard(row["lease_id"])
            if box is not None:
                box.put((released, registered, got.state))
        for lease_id, expiry in zip(items.acks, got.ack, strict=True):
            dom.taken.discard(lease_id)
            window = dom.acking.pop(lease_id, None)
            if window is not None:  # acked before use: now to the oldest caller
                if expiry and got.state is not None:
                    self._give_acked(dom, lease_id, window, expiry, got.state)
            elif expiry:
                self._on_acked(lease_id, expiry)
            else:
                logger.warning("the slot handed over as %s went on before its ack: one over the limit", lease_id)
        for (ref, box), (status, value) in zip(tries, got.tries, strict=True):
            try:
                box.put(self._core.acquired(ref, status, value, got.state))
            except Exception as exc:
                box.put(exc)
        sent = {ref.lease_id: ref for ref in items.ids}
        too_large = set(got.oversize)
        for waiter in [w for w in dom.waiters if w.ref.lease_id in too_large]:
            dom.waiters.remove(waiter)
            waiter.box.put(self._core.too_large(waiter.ref, None))
        for lease_id, expiry in got.got:
            assert got.state is not None
            ref = sent[lease_id]
            # Its caller went meanwhile: the oldest takes the slot.
            taker = next(
                (w for w in dom.waiters if w.ref.lease_id == lease_id), dom.waiters[0] if dom.waiters else None
            )
            if taker is None:
                dom.outcomes.append((Core.outcome_row(ref, "abandon"), None))
                dom.changed = True
                continue
            dom.waiters.remove(taker)
            grant = self._core.acquired(ref, "granted", expiry, got.state)
            assert isinstance(grant, Grant)
            taker.box.put(grant)
        # Ids sent and not granted may be sent again: Redis has no trace of them.
        if got.state is not None:
            for lease_id, expiry in got.handed:
                self._take_handed(dom, lease_id, expiry, got.state, heard)
        if got.wait > 0:
            dom.due = min(dom.due, time.monotonic() + got.wait)
        if got.more:
            dom.changed = True
        # What the entry wants now, as the script set it (before the slots it
        # handed out since, which _take_handed counts off).
        dom.told = max(0, items.want - len(got.got) - len(got.oversize) - len(got.handed))
        if len(dom.waiters) != dom.told:
            dom.changed = True  # callers came or went while the batch was out

    async def stop(self) -> None:
        """Stop the flusher (after one last batch for what is pending)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self._stopping.set()
            self._poked.set()
            await worker.stop()
        while not await self._flush():
            await self._idle.wait()
