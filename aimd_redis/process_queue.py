"""What a process's agent decides for its callers, without I/O: which callers
a batch carries and how many lease ids, what the process tells Redis it
wants, who gets a slot handed over, when a slot must be acked before use,
what becomes of a grant whose caller left, and what a failed batch gives
back.

The agent (``aimd_redis/_async/agent.py`` and its generated sync twin) wraps
it in mailboxes, a lock, a flusher and the wake channel; the simulator
(``aimd_redis/demo/simulator.py``, ``AgentClient``) runs it on simulated
time. Nothing here waits, locks or reads a clock: ``now`` is passed in (any
monotonic seconds), and an answer for a caller is queued in ``out`` as
``(box, value)`` for the shell to deliver, ``box`` being whatever the shell
answers a caller through (opaque here).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from typing import Any, Generic, TypeVar

import msgspec

from aimd_redis.core import Core, DomainItems
from aimd_redis.errors import REFUSED_BEFORE_RUNNING
from aimd_redis.replies import BatchReply, DomainBatchReply, Wake
from aimd_redis.structs import DomainState, Grant, LeaseRef

logger = logging.getLogger("aimd_redis")

#: Lease ids sent per domain and batch for the oldest waiting callers: a batch
#: grants its process at most this many slots of a domain (the rest follow).
#: Fewer when the domain looked full: as many as looked free, and a few more.
IDS_PER_BATCH = 128
IDS_WHEN_FULL = 4
#: How long an ack of a slot already in use, or one more caller for a full
#: domain whose queue the process is in already, may wait for the process's
#: next batch before a batch goes for it alone. Under load most ride with a
#: release (a request then costs Redis one batch, not three); the newcomer's
#: place in the fleet's queue comes at most this late (a newcomer of a group
#: of weight w > 1, at most this / w).
LINGER_SECONDS = 0.25

B = TypeVar("B")
Result = Any  # Grant | Denied | (released, registered, state) | BaseException
#: (provider, model, domain, group): a process's callers of one domain wait
#: in one entry per group.
DomainKey = tuple[str, str, str, str | None]
ModelKey = tuple[str, str]
#: Redis's clock in the last reply, and the local clock when its call went.
Heard = tuple[float, float]


class Waiter(Generic[B]):
    """A caller waiting for a slot of its domain."""

    __slots__ = ("box", "ref")

    def __init__(self, ref: LeaseRef, box: B) -> None:
        self.ref = ref
        self.box = box


class Batch(Generic[B]):
    """One domain's part of a batch in flight: what it carries, and whom to answer."""

    __slots__ = ("barriers", "domain", "items", "outcomes", "tries")

    def __init__(
        self,
        domain: DomainQueue[B],
        items: DomainItems,
        outcomes: list[tuple[dict[str, str], B | None]],
        tries: list[tuple[LeaseRef, B]],
        barriers: list[B],
    ) -> None:
        self.domain = domain
        self.items = items
        self.outcomes = outcomes
        self.tries = tries
        self.barriers = barriers


class DomainQueue(Generic[B]):
    """What a process has for one domain of one model and one group."""

    def __init__(self, core: Core, key: DomainKey, out: list[tuple[B, Result]], acked: list[tuple[str, float]]) -> None:
        self.core = core
        self.key = key
        self.out = out
        self.acked = acked
        self.waiters: deque[Waiter[B]] = deque()
        self.outcomes: list[tuple[dict[str, str], B | None]] = []
        self.tries: list[tuple[LeaseRef, B]] = []
        self.acks: list[str] = []
        # Slots handed over and taken up or given back, until Redis has their
        # ack or give-back: a batch reply that still lists them changes nothing.
        self.taken: set[str] = set()
        # Slots handed over too late to use before their ack: lease id -> the
        # claim window's end, given to a caller once acked.
        self.acking: dict[str, float] = {}
        # Callers that went, waiting for the next batch to tell Redis.
        self.barriers: list[B] = []
        self.changed = False  # to be looked at now
        self.linger = math.inf  # when what may wait for the next batch goes anyway
        self.told = 0  # how many slots Redis's entry of the process wants, as far as it knows
        self.due = 0.0  # when the next heartbeat (or re-check) goes
        self.state: DomainState | None = None
        self.weight = 1.0  # the group's weight, as its newest caller gave it

    def idle(self) -> bool:
        """Nothing pending, nothing expected."""
        return not (self.waiters or self.outcomes or self.tries or self.acks or self.taken or self.barriers)

    # -- what callers do ------------------------------------------------------

    def join(self, waiter: Waiter[B], now: float) -> None:
        self.waiters.append(waiter)
        if waiter.ref.weight != self.weight:
            self.weight = waiter.ref.weight
            self.changed = True
        self._wants_more(now)

    def _wants_more(self, now: float) -> None:
        """More callers wait than Redis was told: told at once, unless the
        process is queued in a full domain already (then within LINGER_SECONDS)."""
        st = self.state
        if self.told > 0 and st is not None and (st.waiters > 0 or st.in_flight >= st.current_limit):
            # A group of more weight is served sooner: its newcomers wait less.
            self.linger = min(self.linger, now + LINGER_SECONDS / max(1.0, self.weight))
        else:
            self.changed = True

    def next_due(self) -> float:
        """When this domain's next batch is due (now: -inf; none expected: inf)."""
        if self.changed:
            return -math.inf
        return min(self.due if self.waiters else math.inf, self.linger)

    def leave(self, waiter: Waiter[B]) -> bool:
        """A caller gives up waiting (before anything was delivered to it)."""
        if waiter not in self.waiters:
            return False
        self.waiters.remove(waiter)
        self.changed = True
        return True

    def outcome(self, row: dict[str, str], box: B | None, *, now: bool = True) -> None:
        """An outcome (Core.outcome_row) for the next batch; ``now``: that batch should go."""
        if row["lease_id"] in self.acks:  # a slot handed over and given back unused: no ack
            self.acks.remove(row["lease_id"])
        self.outcomes.append((row, box))
        if now:
            self.changed = True

    def give_back(self, ref: LeaseRef) -> None:
        self.outcomes.append((Core.outcome_row(ref, "abandon"), None))
        self.changed = True

    def try_acquire(self, ref: LeaseRef, box: B) -> None:
        self.tries.append((ref, box))
        self.changed = True

    def barrier(self, box: B) -> None:
        """``box`` is answered True when the next batch of the domain is done."""
        self.barriers.append(box)
        self.changed = True

    def holds_outcome(self, box: B) -> bool:
        """Whether an outcome submitted with ``box`` still waits for a batch."""
        return any(mine is box for _, mine in self.outcomes)

    # -- the batch --------------------------------------------------------------

    def take(self, now: float) -> Batch[B] | None:
        """This domain's part of the next batch, if it has one due at ``now``
        (the pending lists go with it)."""
        beat = bool(self.waiters) and self.due <= now
        if not (self.changed or beat or self.linger <= now):
            return None
        self.changed, self.linger = False, math.inf
        pending = self.outcomes or self.tries or self.acks or self.barriers
        if not (beat or pending or len(self.waiters) != self.told):
            return None
        self.due = now + self.core.config.wait_poll_seconds
        st = self.state
        free = IDS_PER_BATCH if st is None else st.current_limit - st.in_flight
        count = min(IDS_PER_BATCH, max(IDS_WHEN_FULL, free + len(self.outcomes)))
        outcomes, tries, acks, barriers = self.outcomes, self.tries, self.acks, self.barriers
        self.outcomes, self.tries, self.acks, self.barriers = [], [], [], []
        items = DomainItems(
            name=self.key[2],
            outcomes=[row for row, _ in outcomes],
            acks=acks,
            tries=[ref for ref, _ in tries],
            want=len(self.waiters),
            ids=[w.ref for w in itertools.islice(self.waiters, count)],
            tokens=self.waiters[0].ref.tokens if self.waiters else 0,
            group=self.key[3],
            weight=self.weight,
        )
        return Batch(self, items, outcomes, tries, barriers)

    def deliver(self, batch: Batch[B], got: DomainBatchReply, registered: bool, heard: Heard, now: float) -> None:
        """The reply to this domain's part of a batch: every item answered."""
        items = batch.items
        if got.state is not None:
            self.state = got.state
        for (row, box), released in zip(batch.outcomes, got.rel, strict=True):
            self.taken.discard(row["lease_id"])
            if box is not None:
                self.out.append((box, (released, registered, got.state)))
        for lease_id, expiry in zip(items.acks, got.ack, strict=True):
            self.taken.discard(lease_id)
            window = self.acking.pop(lease_id, None)
            if window is not None:  # acked before use: now to the oldest caller
                if expiry and got.state is not None:
                    self._give_acked(lease_id, window, expiry, got.state)
            elif expiry:
                self.acked.append((lease_id, expiry))
            else:
                logger.warning("the slot handed over as %s went on before its ack: one over the limit", lease_id)
        for (ref, box), (status, value) in zip(batch.tries, got.tries, strict=True):
            try:
                self.out.append((box, self.core.acquired(ref, status, value, got.state)))
            except Exception as exc:
                self.out.append((box, exc))
        sent = {ref.lease_id: ref for ref in items.ids}
        too_large = set(got.oversize)
        for waiter in [w for w in self.waiters if w.ref.lease_id in too_large]:
            self.waiters.remove(waiter)
            self.out.append((waiter.box, self.core.too_large(waiter.ref, None)))
        for lease_id, expiry in got.got:
            assert got.state is not None
            ref = sent[lease_id]
            # Its caller went meanwhile: the oldest takes the slot.
            taker = next(
                (w for w in self.waiters if w.ref.lease_id == lease_id), self.waiters[0] if self.waiters else None
            )
            if taker is None:
                self.give_back(ref)
                continue
            self.waiters.remove(taker)
            grant = self.core.acquired(ref, "granted", expiry, got.state)
            assert isinstance(grant, Grant)
            self.out.append((taker.box, grant))
        # Ids sent and not granted may be sent again: Redis has no trace of them.
        if got.state is not None:
            self.on_handed(got.handed, got.state, heard, now)
        if got.wait > 0:
            self.due = min(self.due, now + got.wait)
        if got.more:
            self.changed = True
        # What the entry wants now, as the script set it (before the slots it
        # handed out since, which on_handed counts off).
        self.told = max(0, items.want - len(got.got) - len(got.oversize) - len(got.handed))
        if len(self.waiters) > self.told:  # callers came while the batch was out
            self._wants_more(now)
        elif len(self.waiters) < self.told:  # or went
            self.changed = True
        for box in batch.barriers:
            self.out.append((box, True))

    def failed(self, batch: Batch[B], exc: BaseException) -> None:
        """Every item fails as a call of its own would; what may have run is
        made harmless: ids that may have been granted go back by id."""
        refused = isinstance(exc, REFUSED_BEFORE_RUNNING)
        items = batch.items
        for box in batch.barriers:
            self.out.append((box, exc))
        for row, mine in batch.outcomes:
            if row["outcome"] == "abandon":
                self.outcomes.append((row, None))  # a give-back: again next time
            if mine is not None:
                self.out.append((mine, exc))
        self.acks = items.acks + self.acks
        for ref, box in batch.tries:
            if not refused:
                self.outcomes.append((Core.outcome_row(ref, "abandon"), None))
            self.out.append((box, exc))
        sent = {ref.lease_id for ref in items.ids}
        for waiter in self.waiters:
            if waiter.ref.lease_id in sent and not refused:
                self.outcomes.append((Core.outcome_row(waiter.ref, "abandon"), None))
            self.out.append((waiter.box, exc))
        self.waiters.clear()
        self.told = -1  # unknown: told again
        self.changed = True

    # -- slots handed over ------------------------------------------------------

    def on_handed(self, handed: list[tuple[str, float]], state: DomainState, heard: Heard | None, now: float) -> None:
        """Slots handed over, (lease id, end of its claim window): each to the
        oldest waiting caller, acked in the next batch (first, when too
        little of its claim window may be left, judged from Redis's clock in
        the last reply, ``heard``); given back when nobody here waits any more."""
        for lease_id, expires_at in handed:
            self._take_handed(lease_id, expires_at, state, heard, now)

    def _take_handed(
        self, lease_id: str, expires_at: float, state: DomainState, heard: Heard | None, now: float
    ) -> None:
        if lease_id in self.taken:
            return
        self.taken.add(lease_id)
        self.told = max(0, self.told - 1)  # Redis took it off the process's entry
        left = None if heard is None else self.core.background_claim(expires_at, heard[0], now - heard[1])
        if self.waiters and left is None:
            self.acks.append(lease_id)
            self.acking[lease_id] = expires_at
            self.changed = True
            return
        first, ref = self._to_oldest(lease_id)
        if first is not None:
            # In use at once; the ack rides with the next batch, well within the claim window.
            self.acks.append(lease_id)
            self.out.append((first.box, self.core.handed(ref, expires_at, state)))
            self.linger = min(self.linger, now + min(LINGER_SECONDS, (left or 0.0) / 4))

    def _give_acked(self, lease_id: str, window: float, expiry: float, state: DomainState) -> None:
        first, ref = self._to_oldest(lease_id)
        if first is not None:
            self.out.append(
                (first.box, msgspec.structs.replace(self.core.handed(ref, window, state), expires_at=expiry))
            )

    def _to_oldest(self, lease_id: str) -> tuple[Waiter[B] | None, LeaseRef]:
        """The oldest waiting caller a slot goes to, and the slot's lease;
        a slot nobody here waits for any more goes back at once."""
        first = self.waiters.popleft() if self.waiters else None
        provider_name, model_id, domain, group = self.key
        ref = LeaseRef(
            provider_name=provider_name,
            model_id=model_id,
            domain=domain,
            lease_id=lease_id,
            tokens=0 if first is None else first.ref.tokens,
            group=group,
            weight=self.weight,
        )
        if first is None:
            self.give_back(ref)
        return first, ref


class ProcessQueue(Generic[B]):
    """Every domain a process has callers or pending items for."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.domains: dict[DomainKey, DomainQueue[B]] = {}
        self.out: list[tuple[B, Result]] = []
        """Answers for callers, (box, value), for the shell to deliver (see :meth:`drain`)."""
        self.acked: list[tuple[str, float]] = []
        """Slots handed over, acked and in use: (lease id, expiry), for lease renewal."""
        self.heard: Heard | None = None

    def domain(self, ref: LeaseRef) -> DomainQueue[B]:
        key = (ref.provider_name, ref.model_id, ref.domain, ref.group)
        dom = self.domains.get(key)
        if dom is None:
            dom = self.domains[key] = DomainQueue(self.core, key, self.out, self.acked)
        return dom

    def state(self, provider_name: str, model_id: str, domain: str) -> DomainState | None:
        """The domain as the last batch of any of its groups saw it."""
        seen = [d.state for k, d in self.domains.items() if k[:3] == (provider_name, model_id, domain)]
        return next((s for s in seen if s is not None), None)

    def drain(self) -> tuple[list[tuple[B, Result]], list[tuple[str, float]]]:
        """The answers and acked slots since the last drain."""
        out, acked = self.out[:], self.acked[:]
        self.out.clear()
        self.acked.clear()
        return out, acked

    def next_due(self, now: float, idle: float) -> float:
        """Seconds until a batch is due (``idle`` when none is expected)."""
        due = min((d.next_due() for d in self.domains.values()), default=math.inf)
        return idle if due == math.inf else max(0.0, due - now)

    def take(self, now: float) -> dict[ModelKey, list[Batch[B]]]:
        """Everything due at ``now``, by model; domains with nothing left are forgotten."""
        batches: dict[ModelKey, list[Batch[B]]] = {}
        for key, dom in list(self.domains.items()):
            if not (dom.changed or dom.waiters) and dom.idle():
                del self.domains[key]
                continue
            batch = dom.take(now)
            if batch is not None:
                batches.setdefault(key[:2], []).append(batch)
        return batches

    def deliver(self, batches: list[Batch[B]], reply: BatchReply, sent: float, now: float) -> None:
        """The reply to a model's batch sent at ``sent``, received at ``now``."""
        self.heard = heard = (reply.at, sent)
        for batch, got in zip(batches, reply.domains, strict=True):
            batch.domain.deliver(batch, got, reply.registered, heard, now)

    @staticmethod
    def failed(batches: list[Batch[B]], exc: BaseException) -> None:
        for batch in batches:
            batch.domain.failed(batch, exc)

    def on_wake(self, model: ModelKey, woke: Wake, now: float) -> None:
        """A wake-up on the process's channel of ``model``: slots handed over,
        or when a cooldown that blocks the queue ends."""
        dom = self.domains.get((*model, woke.domain, woke.group))
        if dom is None:
            if not woke.handed:
                return
            dom = self.domain(
                LeaseRef(provider_name=model[0], model_id=model[1], domain=woke.domain, lease_id="", group=woke.group)
            )
        if woke.state is None:
            dom.due = min(dom.due, now + (woke.wait or 0.0))
        else:
            dom.on_handed([(lease_id, woke.expires_at) for lease_id in woke.handed], woke.state, self.heard, now)
