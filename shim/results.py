"""
Writing bind results to C{/controller/net-l3vpn/<port table>/<uuid>}.

Every write is a compare-and-set against what the shim last read or wrote for that
key, so that nothing written meanwhile by proton (which creates the key as C{{}} just
before it writes the port) or by another shim is overwritten unseen.  A failed compare
is normal: the key is read again and the wish decided again.  A result for a key not
seen yet is first written only if the key holds exactly C{{}} (L{IfValue}): what
proton created is nobody's result, and the bind costs one round trip instead of a
read and a write.

  - A result for a port on our host is written over C{{}}, over our own older result,
    or over a result naming another controller (PROTOCOL.md section 3).
  - A clear (C{{}}) or a delete happens only while the key names this shim.
  - Only the latest wish for a port is written: a newer wish supersedes an older one,
    which is dropped and never written late.  A delayed clear (a release after a
    migration) is cancelled by any newer wish.
  - A write that fails is retried with backoff while its wish stands.
  - Before every attempt the writer asks whether this shim may act (an elected
    leader whose lease has not run out), and on v3 each write carries the election's
    fence in the same transaction.
"""

from collections import deque

from twisted.internet.defer import (
    CancelledError, Deferred, DeferredList, inlineCallbacks, maybeDeferred)
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.logger import Logger

from shim.backoff import Backoff
from shim.bindresult import EMPTY, controller_of
from shim.etcd.errors import EtcdError
from shim.etcd.wire import CasResult, IfValue, Op, cas_compare, txn_request

PUBLISH = "publish"
PUBLISH_AGAIN = "publish_again"
PRECREATE = "precreate"

CLEAR = "clear"
REMOVE = "remove"

_FINGERPRINT = (1 << 64) - 1


def fingerprint(value):
    """
    What L{ResultWriter.known} keeps of a result value (bytes, or C{None} for an
    absent key): its 64-bit hash, unsigned.  Two different results taken for the
    same is a chance of one in 2**64 per comparison.
    """
    return None if value is None else hash(value) & _FINGERPRINT


def pack(mod_revision, fingerprint, ours):
    """
    What is known of a result key, as one int: the revision + 1, the fingerprint + 1
    (0 for C{None}) and whether it names us, in 66 + 65 + 1 bits.

    An int, not a tuple: the garbage collector does not track ints.  A dict of
    hundreds of thousands of keys holding only untracked values is not tracked
    either, and stays so after C{gc.freeze()}; one fresh tuple put in it would
    have every full collection walk it whole (tens of milliseconds at a million
    objects).  It is also about a third of the size.
    """
    return (((mod_revision + 1) << 66)
            | ((0 if fingerprint is None else fingerprint + 1) << 1) | bool(ours))


def unpack(packed):
    """The C{(mod_revision, fingerprint, ours)} that L{pack} packed."""
    code = (packed >> 1) & ((1 << 65) - 1)
    return (packed >> 66) - 1, (None if code == 0 else code - 1), bool(packed & 1)


#: What L{ResultWriter.known} holds for a key that exists with an unknown value.
EXISTS = pack(-1, None, False)


_EMPTY = fingerprint(EMPTY)

#: Compare failures in a row before a write backs off like a failure.
MAX_CONFLICTS = 5

#: C{{}} result keys being created at a time (L{ResultWriter.precreate}).
PRECREATES_IN_FLIGHT = 8


class ResultWriter:
    """
    Keeps each port's bind result in etcd as the controller last asked.

    @ivar pending: port uuid to the latest wish not yet done.
    @ivar delayed: port uuid to the delayed call of a clear asked with a delay.
    @ivar known: port uuid to C{(mod_revision, fingerprint, ours)} as last read or
        written, L{pack}ed: the value's L{fingerprint} (C{None} when the key was
        absent, with a revision of 0) and whether it names this controller.  A
        fingerprint rather than the value: with hundreds of thousands of bound
        ports, the values would cost a few hundred bytes each.  L{known_of} unpacks.
    """

    log = Logger()

    def __init__(self, client, schema, controller, clock, metrics=None,
                 backoff=Backoff, acting=lambda: True, fence=lambda: (),
                 on_conflict=None):
        self._client = client
        self._cas = Batcher(client)
        self._schema = schema
        self._controller = controller
        self._clock = clock
        self._metrics = metrics
        self._backoff = backoff
        self._acting = acting
        self._fence = fence
        self._on_conflict = on_conflict
        self.pending = {}
        self.delayed = {}
        self.known = {}
        self._running = set()
        self._pauses = {}
        # The ports whose {} result key is to be created, and those being created
        # whose port went meanwhile.
        self._precreates = Paced(self._send_precreate, PRECREATES_IN_FLIGHT)
        self._precreates_orphaned = set()
        self._idle_waiters = []
        self._stopped = False

    # -- wishes

    def publish(self, uuid, result, on_written=None, again=False):
        """
        Write C{result} (a L{shim.bindresult.BindResult} naming this controller) as
        port C{uuid}'s bind result.  C{on_written(revision)} is called once it is in
        etcd.

        @param again: write it even when etcd holds it already, as a new revision:
            proton asked again and waits for a change of the key.
        """
        self._want(uuid, (PUBLISH_AGAIN if again else PUBLISH, result.encode(),
                          on_written))

    def clear(self, uuid, delay=0):
        """
        Replace port C{uuid}'s bind result with C{{}}, if it names this controller.

        @param delay: seconds to wait first; any other wish for the port meanwhile
            replaces this one.
        """
        if delay:
            # A release supersedes any write of ours still pending: a result retried
            # after the port left must never land over the gaining shim's.
            self._drop(uuid)
            self.pending.pop(uuid, None)
            self.delayed[uuid] = self._clock.callLater(
                delay, self._want, uuid, (CLEAR, EMPTY, None)
            )
            return
        self._want(uuid, (CLEAR, EMPTY, None))

    def remove(self, uuid):
        """
        Delete port C{uuid}'s bind result key, if the result names this controller.
        """
        self._want(uuid, (REMOVE, None, None))

    def cancel(self, uuid):
        """
        Drop any wish for port C{uuid}, delayed or not: the controller decided
        otherwise (a bind on our host cancels a delayed release at once).
        """
        self._drop(uuid)
        self.pending.pop(uuid, None)

    def cancel_all(self):
        """
        Drop every wish (this shim stopped acting).
        """
        for uuid in list(self.delayed):
            self._drop(uuid)
        self.pending.clear()
        for pause in list(self._pauses.values()):
            pause.cancel()

    def precreate(self, uuid, first=False):
        """
        Create port C{uuid}'s result key as C{{}} if it is absent, once, so that
        proton always takes its "key exists" path and waits from the key's own index
        (its process-wide wait index otherwise catches its own C{{}}: see
        docs/real-proton.md).  Best effort: a failure is only logged.

        At most L{PRECREATES_IN_FLIGHT} go at a time, the rest wait their turn: over
        v2 each is a request of its own, thousands come after a read, and a bind's
        result must not wait behind them for the client's calls.

        @param first: ahead of those a read found missing (a new port, which
            proton binds next).
        """
        # The port is back (the same uuid): the {} being created stays.
        self._precreates_orphaned.discard(uuid)
        if (uuid in self.known or uuid in self.pending or uuid in self._running
                or self._stopped or not self._acting()):
            return
        self.known[uuid] = EXISTS
        self._precreates.add(uuid, first)

    def precreate_missing(self, uuid, revision):
        """
        A read at C{revision} found no result key for port C{uuid}: L{precreate}
        it, again if it was there before the read and is gone (deleted behind the
        shim's back): the C{{}} this writer created, or a key it found there
        already.  A key written since the read is left alone; a create only
        writes where the key is absent.
        """
        if (uuid in self.pending or uuid in self._running or self._stopped
                or uuid in self._precreates or not self._acting()):
            return
        packed = self.known.get(uuid)
        if packed is not None:
            mod_revision, current, _ = unpack(packed)
            if packed == EXISTS or (current == _EMPTY and revision is not None
                                    and 0 < mod_revision <= revision):
                del self.known[uuid]
        self.precreate(uuid)

    def drop_precreates(self):
        """
        Forget the C{{}} keys waiting to be created (a full read begins, and finds
        again those still missing; or the writer stops).  Those being created
        finish.
        """
        for uuid in self._precreates.drop():
            if self.known.get(uuid) == EXISTS:
                del self.known[uuid]

    def _send_precreate(self, uuid):
        if self.known.get(uuid) != EXISTS:
            # Read, written or forgotten while it waited: not ours to create.
            return None
        if (uuid in self.pending or uuid in self._running or self._stopped
                or not self._acting()):
            # A result wish has the key now (it reads it first), or this shim no
            # longer writes: as if never asked.
            del self.known[uuid]
            return None
        d = self._cas.put_if(self._schema.result_key(uuid), EMPTY, 0)
        d.addCallbacks(self._precreated, self._precreate_failed,
                       callbackArgs=(uuid,), errbackArgs=(uuid,))
        return d

    def _precreated(self, outcome, uuid):
        self._count(PRECREATE, "ok" if outcome.succeeded else "skipped")
        if uuid in self._precreates_orphaned:
            # The port went while its key was being created (remove_empty found
            # nothing to delete yet): the {} goes too.
            self._precreates_orphaned.discard(uuid)
            if outcome.succeeded:
                self._remember(uuid, outcome.revision, EMPTY)
                self.remove_empty(uuid)
        elif outcome.succeeded and self.known.get(uuid) == EXISTS:
            self._remember(uuid, outcome.revision, EMPTY)

    def _precreate_failed(self, failure, uuid):
        self._precreates_orphaned.discard(uuid)
        if self.known.get(uuid) == EXISTS:
            del self.known[uuid]
        self._count(PRECREATE, "error")
        self.log.debug("creating the result key of port {uuid} failed: {error}",
                       uuid=uuid, error=failure.getErrorMessage())

    def remove_empty(self, uuid):
        """
        Delete port C{uuid}'s result key if it still holds C{{}} as last seen (a
        deleted port's key, created by proton or by L{precreate}); never a result.
        """
        packed = self.known.pop(uuid, None)
        if packed is None:
            return
        if packed == EXISTS and uuid in self._precreates.out:
            # Its {} is being created: deleted once it is.
            self._precreates_orphaned.add(uuid)
            return
        revision, current, _ = unpack(packed)
        if (current != _EMPTY or revision <= 0
                or uuid in self.pending or self._stopped or not self._acting()):
            return
        d = self._cas.delete_if(self._schema.result_key(uuid), revision)
        d.addCallbacks(
            lambda outcome: self._count(REMOVE, "ok" if outcome.succeeded else "skipped"),
            lambda failure: self._count(REMOVE, "error"),
        )

    def note(self, uuid, mod_revision, value, ours=None):
        """
        Remember what etcd holds for port C{uuid}'s result key, as read by a snapshot
        (C{value} C{None}: absent), unless what the writer knows is newer than the
        value read: a resync beside the watch reads at a revision from before the
        results written while it read, and taken as the key's state, the older
        value would cost each of them a read and a write again.  An absent key
        has no revision: the caller compares the revision it read at.

        @param ours: whether C{value} names this controller, when the caller knows
            (it read it already): a snapshot's results are not decoded twice.
        """
        if value is not None:
            known = self.known.get(uuid)
            if known is not None and unpack(known)[0] > mod_revision:
                return
        self._remember(uuid, mod_revision, value, ours)

    def cluster_changed(self):
        """
        etcd's cluster was replaced: the revisions known are another cluster's, and
        tell nothing of the new one's.
        """
        self.drop_precreates()
        self.known.clear()

    def _remember(self, uuid, mod_revision, value, ours=None):
        if ours is None:
            ours = value is not None and controller_of(value) == self._controller
        self.known[uuid] = pack(mod_revision, fingerprint(value), ours)

    def known_of(self, uuid):
        """
        What is known of port C{uuid}'s result key: C{(mod_revision, fingerprint,
        ours)}, or C{None}.
        """
        packed = self.known.get(uuid)
        return None if packed is None else unpack(packed)

    def revision(self, uuid):
        """
        The mod_revision of port C{uuid}'s result key as last read or written (0 when
        absent or unknown).
        """
        known = self.known_of(uuid)
        return known[0] if known is not None and known[0] > 0 else 0

    def forget(self, uuid):
        self.known.pop(uuid, None)

    def holds(self, uuid, value):
        """
        Whether etcd holds C{value} for port C{uuid} as far as the writer knows, or a
        wish to write it is pending.
        """
        wish = self.pending.get(uuid)
        if wish is not None:
            return wish[0] in (PUBLISH, PUBLISH_AGAIN) and wish[1] == value
        known = self.known_of(uuid)
        return known is not None and known[1] == fingerprint(value)

    def names_us(self, uuid):
        """
        Whether the result known for port C{uuid} names this controller, or a write
        of ours is pending (and may land).
        """
        wish = self.pending.get(uuid)
        if wish is not None and wish[0] in (PUBLISH, PUBLISH_AGAIN):
            return True
        if uuid in self._running:
            # A write may be landing: clear or delete after it, compare-and-set.
            return True
        known = self.known_of(uuid)
        return known is not None and known[2]

    def idle(self):
        """
        A Deferred that fires when no write is pending (or the writer is stopped).
        """
        d = Deferred()
        if not self.pending or self._stopped:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def stop(self):
        """
        Give up retrying: pending writes are abandoned after their current attempt,
        waits before the next attempt, delayed clears and the C{{}} keys waiting to
        be created are dropped.
        """
        self._stopped = True
        self.cancel_all()
        self.drop_precreates()

    # -- writing

    def _drop(self, uuid):
        call = self.delayed.pop(uuid, None)
        if call is not None and call.active():
            call.cancel()


    def _want(self, uuid, wish):
        self._drop(uuid)
        self.pending[uuid] = wish
        if uuid not in self._running:
            self._running.add(uuid)
            self._write(uuid)

    @inlineCallbacks
    def _write(self, uuid):
        backoff = self._backoff()
        conflicts = 0
        try:
            while True:
                wish = self.pending.get(uuid)
                if wish is None or self._stopped:
                    return
                if not self._acting():
                    # Not ours to write any more: the acting shim reconciles it.
                    self.pending.pop(uuid, None)
                    return
                kind, value, on_written = wish
                try:
                    outcome = yield self._attempt(uuid, wish)
                except Exception as e:
                    self._count(kind, "error")
                    delay = backoff.next_delay()
                    self.log.warn(
                        "writing the bind result of port {uuid} ({operation}) failed: "
                        "{error}; retrying in {delay:.2f}s",
                        uuid=uuid, operation=kind, error=e, delay=delay,
                    )
                    if not (yield self._pause(uuid, delay)):
                        return
                    continue
                if outcome is None:
                    # A failed compare: read again, decide again.
                    self._count(kind, "conflict")
                    conflicts += 1
                    if self._on_conflict is not None:
                        self._on_conflict(uuid)
                    if conflicts >= MAX_CONFLICTS:
                        conflicts = 0
                        if not (yield self._pause(uuid, backoff.next_delay())):
                            return
                    continue
                self._count(kind, "ok" if outcome else "skipped")
                backoff.reset()
                if self.pending.get(uuid) is wish:
                    del self.pending[uuid]
                    if on_written is not None and outcome:
                        on_written(self.revision(uuid))
        finally:
            self._running.discard(uuid)
            if not self.pending or self._stopped:
                waiters, self._idle_waiters = self._idle_waiters, []
                for d in waiters:
                    d.callback(None)

    @inlineCallbacks
    def _pause(self, uuid, delay):
        pause = self._pauses[uuid] = deferLater(self._clock, delay, lambda: None)
        try:
            yield pause
        except CancelledError:
            return False
        finally:
            self._pauses.pop(uuid, None)
        return True

    @inlineCallbacks
    def _attempt(self, uuid, wish):
        """
        One compare-and-set attempt of C{wish}, C{(kind, value, on_written)}.

        @return: a Deferred firing with C{True} when written, C{False} when nothing
            needed writing, C{None} when the compare failed (the key changed).
        """
        kind, value, _ = wish
        key = self._schema.result_key(uuid)
        known = self.known_of(uuid)
        if known is None and kind in (PUBLISH, PUBLISH_AGAIN):
            # Not seen yet: most often proton's empty {}, created just before it
            # wrote the port.  Written over without reading it first (one round
            # trip, not two): an empty key is nobody's result.  Anything else there
            # is read, and compared as usual.
            done = yield self._cas.put_if(key, value, IfValue(EMPTY),
                                          guard=self._fence())
            if done.succeeded:
                self._remember(uuid, done.revision, value)
                return True
            known = self.known_of(uuid)
        if known is None or known[0] < 0:
            found = yield self._client.get(key)
            if found.kvs:
                self._remember(uuid, found.kvs[0].mod_revision, found.kvs[0].value)
            else:
                self._remember(uuid, 0, None)
            known = self.known_of(uuid)
        if self.pending.get(uuid) is not wish:
            # Superseded or dropped while the key was read: what was read may be
            # another shim's result noted meanwhile, and this wish no longer stands.
            return False
        revision, current, ours = known
        if kind in (PUBLISH, PUBLISH_AGAIN):
            if current == fingerprint(value) and kind == PUBLISH:
                return False
            done = yield self._cas.put_if(key, value, revision, guard=self._fence())
        elif kind == CLEAR:
            if current is None or current == _EMPTY or not ours:
                return False
            done = yield self._cas.put_if(key, EMPTY, revision, guard=self._fence())
        else:
            if current is None or not ours:
                return False
            done = yield self._cas.delete_if(key, revision, guard=self._fence())
        if not done.succeeded:
            self.known.pop(uuid, None)
            return None
        if kind == REMOVE:
            self.known.pop(uuid, None)
        else:
            self._remember(uuid, done.revision, value)
        return True

    def _count(self, kind, outcome):
        if self._metrics is not None:
            self._metrics.child(self._metrics.result_writes, kind, outcome).inc()


class Paced:
    """
    Calls C{send(item)} for each item added, at most C{limit} at a time: those
    added C{first} in the order added, then the others in the order added.
    C{send} returns a Deferred that fires when the item is done, or C{None} when
    it no longer needs sending.  An answer that comes before C{send} returns
    starts the next item without recursing.

    @ivar out: the items sent and not yet done.
    """

    def __init__(self, send, limit):
        self._send = send
        self._limit = limit
        self._first = deque()
        self._rest = deque()
        self._waiting = set()
        self.out = set()
        self._sending = False

    def __contains__(self, item):
        """Whether C{item} waits or is out."""
        return item in self._waiting or item in self.out

    def add(self, item, first=False):
        self._waiting.add(item)
        (self._first if first else self._rest).append(item)
        self._next()

    def drop(self):
        """
        Forget the items waiting (those out finish): returns them.
        """
        dropped, self._waiting = self._waiting, set()
        self._first.clear()
        self._rest.clear()
        return dropped

    def _next(self):
        if self._sending:
            # Called back from within the loop below (an answer that came at once).
            return
        self._sending = True
        try:
            while len(self.out) < self._limit:
                queue = self._first or self._rest
                if not queue:
                    break
                item = queue.popleft()
                self._waiting.discard(item)
                d = self._send(item)
                if d is not None:
                    self.out.add(item)
                    d.addBoth(self._done, item)
        finally:
            self._sending = False

    def _done(self, result, item):
        self.out.discard(item)
        self._next()
        return result


#: Operations in one transaction, compares included: etcd's default
#: C{--max-txn-ops}.
TXN_OPS = 128

#: Bytes of keys and values in one transaction: base64 in the JSON gateway makes
#: them a third larger, under etcd's 1.5 MiB request limit.
TXN_BYTES = 1000 * 1000

_PUT = "put"
_DELETE = "delete"


class Batcher:
    """
    Compare-and-set writes, gathered into v3 transactions when they queue up.

    A write asked while nothing is in flight is sent at once, alone: a lone bind
    result never waits.  Writes asked while a request is out wait for it, and are
    then sent together, as one transaction of up to L{TXN_OPS} operations (a
    compare and a put or delete per key, and the fence's compares once) and
    L{TXN_BYTES}: a burst of 500 binds costs etcd a handful of requests instead of
    500.  Each write is a nested transaction of its own within it, so that each
    hears its own outcome; where nested transactions are refused, a transaction
    succeeds or fails whole, and when one key's compare fails each key of it is
    tried again alone.

    Without C{txn} (etcd's v2 API) every write is its own request, as it must be.
    """

    def __init__(self, client):
        self._client = client
        # The v2 client's txn raises NotImplementedError: found out on first use.
        self._batching = getattr(client, "txn", None) is not None
        # (kind, key, value, mod_revision, guard, Deferred) waiting for a turn
        self._queue = []
        self._in_flight = 0
        self._nested = True

    def put_if(self, key, value, mod_revision, guard=()):
        return self._submit(_PUT, key, value, mod_revision, guard)

    def delete_if(self, key, mod_revision, guard=()):
        if not mod_revision:
            # The client refuses it (a delete "if absent" means nothing): alone, it
            # says so; in a transaction it would become "if it has no version".
            return self._alone(_DELETE, key, None, mod_revision, guard)
        return self._submit(_DELETE, key, None, mod_revision, guard)

    def _submit(self, kind, key, value, mod_revision, guard):
        if not self._batching and not self._queue:
            # v2: one request per write; after the writes that queued before that
            # was found out, in order.
            return self._alone(kind, key, value, mod_revision, guard)
        if self._in_flight == 0 and not self._queue:
            self._in_flight += 1
            return self._alone(kind, key, value, mod_revision, guard).addBoth(
                self._settled)
        d = Deferred()
        self._queue.append((kind, key, value, mod_revision, tuple(guard), d))
        return d

    def _alone(self, kind, key, value, mod_revision, guard):
        if kind == _PUT:
            return maybeDeferred(self._client.put_if, key, value, mod_revision,
                                 guard=guard)
        return maybeDeferred(self._client.delete_if, key, mod_revision, guard=guard)

    def _settled(self, outcome):
        self._in_flight -= 1
        self._send()
        return outcome

    def _send(self):
        """
        Send what queued up, as one transaction.
        """
        if self._in_flight or not self._queue:
            return
        batch = self._take()
        self._in_flight += 1
        if len(batch) == 1:
            kind, key, value, mod_revision, guard, d = batch[0]
            sent = self._alone(kind, key, value, mod_revision, guard)
            sent.addBoth(self._settled)
            sent.chainDeferred(d)
            return
        self._transaction(batch).addBoth(self._settled)

    def _take(self):
        """
        The next batch from the queue: the oldest writes that share its fence, one
        per key, within etcd's limits.  Only the writes taken, and those passed over
        on the way, are looked at: a long queue costs nothing per batch.
        """
        queue = self._queue
        guard = queue[0][4]
        room = (TXN_OPS - len(guard)) // 2
        size = 0
        keys = set()
        batch = []
        passed = []
        i = 0
        for i, item in enumerate(queue):
            if len(batch) == room:
                break
            kind, key, value, _, item_guard, _ = item
            cost = len(key) + (len(value) if value is not None else 0) + 64
            if batch and size + cost > TXN_BYTES:
                break
            if item_guard == guard and key not in keys:
                batch.append(item)
                size += cost
            else:
                # A later write of a key passed over waits for it: per key, writes
                # go in the order asked.
                passed.append(item)
            keys.add(key)
        else:
            i = len(queue)
        self._queue = passed + queue[i:]
        return batch

    @inlineCallbacks
    def _transaction(self, batch):
        """
        Send C{batch} as one transaction: the fence's compares, then per write a
        nested transaction holding its own compare-and-set, so that each write
        succeeds or fails on its own (etcd 3.3 and later).  Without nested
        transactions (a client that refuses them), one compare per write in the
        transaction itself: one stale key fails them all, and each is then tried
        alone.
        """
        guard = list(batch[0][4])
        compares = []
        ops = []
        for kind, key, value, mod_revision, _, _ in batch:
            compares.append(cas_compare(key, mod_revision))
            ops.append(Op.put(key, value) if kind == _PUT else Op.delete(key))
        result = None
        if self._nested:
            success = [{"request_txn": txn_request([c], [op])}
                       for c, op in zip(compares, ops)]
            try:
                result = yield maybeDeferred(self._client.txn, compare=guard,
                                             success=success)
            except EtcdError:
                self._fail(batch, Failure())
                return
            except NotImplementedError:
                # etcd's v2 API: no transactions; from now on one request per write.
                self._batching = False
            except Exception:
                self._nested = False
        if result is None and self._batching and not self._nested:
            try:
                result = yield maybeDeferred(self._client.txn, compare=guard + compares,
                                             success=ops)
            except NotImplementedError:
                self._batching = False
            except Exception:
                self._fail(batch, Failure())
                return
        if result is not None and result.succeeded:
            responses = list(result.responses) + [None] * len(batch)
            for item, response in zip(batch, responses):
                succeeded = True
                if self._nested:
                    succeeded = bool(getattr(response, "succeeded", False))
                revision = getattr(response, "revision", 0) or result.revision
                item[5].callback(CasResult(succeeded, revision))
            return
        # The fence (or, without nested transactions, one stale key) failed them
        # all: each on its own.  (On v2, each on its own from the start.)
        tries = []
        for kind, key, value, mod_revision, guard, d in batch:
            sent = self._alone(kind, key, value, mod_revision, guard)
            sent.chainDeferred(d)
            tries.append(sent)
        yield DeferredList(tries, consumeErrors=True)

    @staticmethod
    def _fail(batch, failure):
        for item in batch:
            item[5].errback(failure)
