"""
The follower: keeps the model in step with etcd, and hands each change on.

It reads every table of the configured model generation (and the bind results) at
one revision, applies them to the model, and watches C{/proton/} from the next
revision, so that no change between the read and the watch is lost.  Each value is
checked and decoded at once: bad input is logged with its key and revision, counted
and skipped.  Every change applied to the model is handed to the sink
(C{sink.changed(table, name, prev, obj)}).  A snapshot's bind results are handed on
page by page (C{sink.snapshot_results(kvs, restore)}), and after each snapshot the
sink hears C{sink.snapshot_applied(first, revision, full)} (the revision the results
were read at; whether the watch was stopped for it), which may return a Deferred:
the follower waits for it.  Walks over the whole model run a slice per reactor turn
(L{shim.turns}), so that a snapshot of a million objects never holds binds up.

When the watch ends it is resumed from the last revision seen (after it, when the
watch had that revision's events whole), with backoff while etcd cannot be reached.
It reads everything again (a full resynchronisation, not ready meanwhile) when the
watch fell behind etcd's compaction (or v2's 1000-event window), when a watch
message was too large to take, and when etcd's cluster id changed; then the sink
first hears C{sink.cluster_changed()} and drops its queued work.  A full
resynchronisation begins with C{sink.snapshot_started()}: nothing is decided on a
half-read model, and the writes it calls for wait for the watch that follows it: the
sink hears C{sink.watching()} each time a watch is open, and C{sink.caught_up()} once
etcd holds it past its history (C{watch.live}, or L{LIVE_WAIT} seconds after it
opened; never for a watch a full read asked for is about to end): over v2 etcd keeps
1000 events of its whole store, a watch from the read's index catches up one
long-poll per event, and the thousands of result keys a read found missing wait for
that.  A periodic
resynchronisation runs beside the live watch: readiness does not change and changes
keep flowing while it reads.  It gives way to a full one at its next page (the two
never hand the sink their snapshots at once); one asked for while the watch is not
open, or while another runs, starts once the watch is open and the other has ended.

The follower does not know whether it talks to etcd's v2 or v3 API: both clients
offer the same calls.
"""

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from shim.backoff import Backoff
from shim.etcd import AuthFailed, EtcdError, TLSFailed
from shim.model import BadValue, decode
from shim.schema import PROTON_PREFIX, BadKey, OtherAPI
from shim.turns import NameSet, walk

PUT = "PUT"
DELETE = "DELETE"

#: Seconds between two pages of a periodic resync (beside the live watch): it has
#: no hurry, and etcd serving it flat out slows every bind down (two CPUs shared
#: by etcd and the shim: binds held up to 200 ms at a million objects).
BACKGROUND_PAUSE = 0.01

#: Seconds before a failed resync that restores (a takeover's) is tried again.
RESTORE_RETRY = 2.0

#: Seconds the result keys a read found missing (v2) wait, at most, for the watch
#: to be live (caught up with etcd's history, see L{shim.etcd.v2watch}): under a
#: proton writing faster than the catch-up, they go anyway.
LIVE_WAIT = 5.0

#: Errors that retrying cannot mend: at start-up they stop the shim.
FATAL_AT_START = (AuthFailed, TLSFailed)

#: Watch ends after which the next watch starts again from the shortest delay only
#: if the watch really worked: a watch etcd confirmed and cancelled at once (an
#: expired token) backs off like any failure.
_FAILURES = ("auth", "cancelled")


class _GaveWay(Exception):
    """
    A resync beside the watch ended early: a full read is to start.
    """


class Follower:
    """
    Snapshot, watch and resume; resync triggers, readiness and cluster identity.

    @ivar revision: the last etcd revision seen (events and progress notifications).
    @ivar ready: C{True} after the first synchronisation and while the watch is live.
    @ivar not_ready_reason: why not, when not.
    @ivar last_resync: C{(time, cause)} of the last completed synchronisation.
    """

    log = Logger()

    def __init__(self, client, model, sink, reactor, metrics, resync_interval=0,
                 watch_idle_timeout=None):
        self.client = client
        self.model = model
        self.schema = model.schema
        self.sink = sink
        self.reactor = reactor
        self.metrics = metrics
        self.resync_interval = resync_interval
        self.watch_idle_timeout = watch_idle_timeout
        self.revision = 0
        self.ready = False
        self.not_ready_reason = "not started"
        self.cluster_id = None
        self.last_resync = None
        self.running = False
        self.synchronised = False
        #: Fires with the error when start-up fails for good (a wrong password, an
        #: untrusted certificate).
        self.start_failed = Deferred()
        self.on_ready_changed = None
        self._watch = None
        self._sleep = None
        self._loop = None
        self._resync_cause = None
        self._periodic = None
        self._background = None
        self._tombstones = None
        # Set when a full read needs the resync beside the watch to end.
        self._give_way = False
        # The cause of a resync asked for while the watch was not open or
        # another resync ran, and the next try of a failed restore.
        self._beside_wanted = None
        self._retry = None
        # The watch etcd holds past its history, and the limit on waiting for it.
        self._live_watch = None
        self._live_wait = None
        self._ready_waiters = []
        self._other_apis = set()
        self._first_snapshot = True
        self._restore = False
        self._watch_from = 1

    # -- life cycle

    def start(self):
        self.running = True
        self._loop = self._run()
        if self.resync_interval > 0:
            self._periodic = LoopingCall(self.request_resync, "periodic")
            self._periodic.clock = self.reactor
            self._periodic.start(self.resync_interval, now=False)

    @inlineCallbacks
    def stop(self):
        self.running = False
        self._set_not_ready("stopping")
        if self._periodic is not None and self._periodic.running:
            self._periodic.stop()
        if self._watch is not None:
            self._watch.stop()
        if self._sleep is not None:
            self._sleep.cancel()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._cancel_live_wait()
        if self._loop is not None:
            yield self._loop
        if self._background is not None:
            yield self._background

    def when_ready(self):
        """
        A Deferred that fires when the follower is ready (at once if it is).
        """
        d = Deferred()
        if self.ready:
            d.callback(self)
        else:
            self._ready_waiters.append(d)
        return d

    def request_resync(self, cause, full=False, restore=False):
        """
        Read everything from etcd again and repair any difference from the model.

        A periodic or requested resync runs beside the live watch.  One asked for
        while the watch is not open or another resync runs starts once the watch
        is open and that one has ended, unless a full read begins meanwhile; a
        periodic one is dropped then (the read under way, or the watch resumed
        from its revision, misses nothing, and the next one comes).

        C{full=True} stops the watch and reads everything before watching again.
        A resync beside the watch gives way to it, and it does what every resync
        asked for before it began: a full one asked for during it follows it.

        With C{restore=True} (a takeover) the sink takes the bind results read as
        what the backend holds; a restore that failed is tried again after
        L{RESTORE_RETRY} seconds.
        """
        if restore:
            self._restore = True
        if not full:
            if self._background is None and self._watch_open():
                self._start_beside(cause)
            elif restore or cause != "periodic":
                # Once the watch is open and the read under way has ended, unless
                # a full read starting meanwhile does what it would.  A periodic
                # resync is not kept: the read under way, or the watch resumed
                # from its revision, misses nothing, and the next one comes.
                self._beside_wanted = cause
            return
        self._resync_cause = cause
        # The work that waits for the watch to catch up waits for the next one.
        self._cancel_live_wait()
        if self._watch is not None:
            self._watch.stop()

    # -- following etcd

    @inlineCallbacks
    def _run(self):
        backoff = Backoff(initial=0.2, maximum=10.0)
        cause = "start"
        while self.running:
            if cause is None and self._resync_cause is not None:
                cause, self._resync_cause = self._resync_cause, None
            try:
                if cause is not None:
                    yield self._synchronise(cause)
                    cause = None
                    if self._resync_cause is not None:
                        # Asked for while the read ran: read again.
                        continue
                if not self.running:
                    break
                watch = self._follow()
                ended = yield watch.done
            except Exception as e:
                if not self.running:
                    break
                if not self.synchronised and isinstance(e, FATAL_AT_START):
                    self._set_not_ready("cannot start: %s" % (e,))
                    self.log.critical("cannot start: {error}", error=e)
                    self.start_failed.callback(e)
                    break
                delay = backoff.next_delay()
                if isinstance(e, EtcdError):
                    self._set_not_ready("etcd unavailable: %s" % (e,))
                    self.log.warn(
                        "etcd unavailable ({error}); retrying in {delay:.1f}s",
                        error=e, delay=delay,
                    )
                else:
                    # Not etcd's doing: a defect, logged with its traceback.
                    self._set_not_ready("synchronisation failed: %r" % (e,))
                    self.log.failure(
                        "synchronising with etcd failed; retrying in {delay:.1f}s",
                        Failure(), delay=delay,
                    )
                yield self._pause(delay)
                continue
            worked = watch.confirmed and ended.reason not in _FAILURES
            if worked and getattr(watch, "events_seen", 1) == 0 and ended.reason != "stopped":
                worked = False
            if worked:
                # A watch that worked: the next one starts from the shortest delay.
                backoff.reset()
            if not self.running:
                break
            if self._resync_cause is not None:
                continue
            if ended.reason == "compacted":
                self.log.warn(
                    "the watch fell behind etcd's compaction at revision {compacted}",
                    compacted=ended.compact_revision,
                )
                cause = "compacted"
            elif ended.reason == "too_large":
                self.log.error(
                    "the watch ended: {error}; reading everything again",
                    error=ended.error,
                )
                cause = "too_large"
            elif self.client.cluster_id not in (None, self.cluster_id):
                self.log.warn(
                    "etcd's cluster id changed from {old} to {new}",
                    old=self.cluster_id, new=self.client.cluster_id,
                )
                cause = "cluster_changed"
            else:
                delay = backoff.next_delay()
                self.log.warn(
                    "the watch ended ({reason}: {error}); resuming from revision "
                    "{revision} in {delay:.1f}s",
                    reason=ended.reason, error=ended.error, revision=self._watch_from,
                    delay=delay,
                )
                yield self._pause(delay)

    def _pause(self, delay):
        self._sleep = deferLater(self.reactor, delay, lambda: None)
        self._sleep.addErrback(lambda _: None)
        self._sleep.addBoth(self._woke)
        return self._sleep

    def _woke(self, _):
        self._sleep = None

    def _follow(self):
        """
        Watch C{/proton/} from the last revision seen (after it, when the last
        watch had its events whole).

        @return: the watch; C{watch.done} fires with its L{WatchEnded}.
        """
        # From the last revision seen, itself included, unless the last watch had
        # it whole (see _watch_ended): a revision's events may come in several
        # messages (fragments), and a watch broken between them must not skip the
        # rest.  Applying an event again is a no-op (the model keeps the newer or
        # equal revision).
        watch = self.client.watch(
            PROTON_PREFIX,
            self._watch_from,
            self._on_watch_event,
            prefix=True,
            prev_kv=False,
            progress_notify=True,
            idle_timeout=self.watch_idle_timeout or None,
            on_progress=self._on_progress,
        )
        self._watch = watch
        watch.confirmed = False
        watch.started.addCallbacks(self._watching, lambda _: None, callbackArgs=(watch,))
        watch.done.addBoth(self._watch_ended, watch)
        return watch

    def _watching(self, _, watch):
        watch.confirmed = True
        if self.client.cluster_id not in (None, self.cluster_id):
            self.log.warn(
                "etcd's cluster id changed from {old} to {new}",
                old=self.cluster_id, new=self.client.cluster_id,
            )
            self.request_resync("cluster_changed", full=True)
            return
        self._set_ready()
        # The work the read calls for waits for this (see ShimService.watching).
        self.sink.watching()
        self._start_beside()
        if self.running:
            self._cancel_live_wait()
            self._live_wait = self.reactor.callLater(
                LIVE_WAIT, self._still_behind, watch)
        watch.live.addCallback(self._live)

    def _live(self, watch):
        """
        etcd holds the watch past its history: the writes that come by the
        thousand (over v2, the result keys a read found missing) go from now on
        (see ShimService.caught_up).
        """
        if (self._watch is not watch or not self.ready or self._live_watch is watch
                or self._resync_cause is not None):
            # Not this watch's turn, or a full read is asked for (which stops it).
            return
        self._live_watch = watch
        self._cancel_live_wait()
        self.sink.caught_up()

    def _still_behind(self, watch):
        self._live_wait = None
        if self._watch is watch and self._live_watch is not watch:
            self.log.warn(
                "the watch is still catching up with etcd's history after {wait:.0f}s"
                " (at revision {revision}); the work that waits for it (over v2, the missing"
                " result keys) goes now",
                wait=LIVE_WAIT, revision=watch.last_revision,
            )
            self._live(watch)

    def _cancel_live_wait(self):
        if self._live_wait is not None and self._live_wait.active():
            self._live_wait.cancel()
        self._live_wait = None

    def _watch_open(self):
        """
        Whether a watch is open after the first read, so that a resync may run
        beside it.
        """
        return self.synchronised and self.ready

    @property
    def caught_up(self):
        """
        Whether etcd holds the watch past its history (L{Watch.live}, or
        L{LIVE_WAIT} seconds after it opened).
        """
        return (self.ready and self._watch is not None
                and self._live_watch is self._watch)

    def _watch_ended(self, ended, watch):
        complete = watch.complete_revision
        if complete >= self._watch_from:
            # Every event up to it arrived whole and was applied: resume after it.
            # Seen again, it would be sent again, and etcd skips the next progress
            # notification of a watch it has just sent events: a quiet watch would
            # then stay silent past its idle timeout, be ended and resumed again,
            # over and over.
            self._watch_from = complete + 1
        if ended.reason in ("connection_lost", "idle"):
            # Resume on the next endpoint first: this one may be the member that died.
            self.client.skip_endpoint(watch.endpoint)
        if self._watch is watch:
            self._watch = None
        self._cancel_live_wait()
        self._set_not_ready("watch ended: %s" % (ended.reason,))
        self.metrics.child(self.metrics.reconnects, ended.reason).inc()
        return ended

    def _on_watch_event(self, event):
        self.revision = self._watch_from = event.mod_revision
        key = event.key
        if event.type == DELETE and key.endswith("/"):
            # v2: a directory deleted or expired, as one event.
            self._delete_under(key, event.mod_revision)
            return
        self.apply(event.type, key, event.value, event.mod_revision)

    def _on_progress(self, revision):
        if revision > self.revision:
            self.revision = revision
            self._watch_from = revision + 1

    # -- applying changes

    def apply(self, kind, key, value, revision):
        """
        Check and decode one change of a key under C{/proton/} and apply it.  A bad
        key or value is logged with the key, counted and skipped.
        """
        try:
            table, name = self.schema.parse_key(key)
        except OtherAPI as e:
            self._other_api(e)
            return
        except BadKey as e:
            self._bad_input("bad_key", key, revision, e)
            return
        if table is None:
            return
        self._apply_to(table, name, kind, key, value, revision)

    def _apply_to(self, table, name, kind, key, value, revision):
        if kind == DELETE:
            obj = None
            if self._tombstones is not None:
                self._tombstones[(table, name)] = revision
        else:
            try:
                obj = decode(table, value, revision, self.schema)
            except BadValue as e:
                self._bad_input("bad_value", key, revision, e)
                return
        applied, prev = self.model.store(table, name, obj, revision)
        if applied:
            self.metrics.child(self.metrics.events, table, kind).inc()
            self.sink.changed(table, name, prev, obj)

    def _delete_under(self, prefix, revision):
        for table in self.schema.tables:
            table_prefix = self.schema.proton_key(table, "")
            if not (table_prefix.startswith(prefix) or prefix.startswith(table_prefix)):
                continue
            for name in [n for n in self.model.table(table)
                         if self.schema.proton_key(table, n).startswith(prefix)]:
                self._apply_to(table, name, DELETE, None, None, revision)

    def _bad_input(self, reason, key, revision, error):
        self.metrics.child(self.metrics.bad_values, reason).inc()
        self.log.warn(
            "skipping {key} at revision {revision}: {error}",
            key=key, revision=revision, error=error,
        )

    def _other_api(self, error):
        self.metrics.child(self.metrics.bad_values, "other_api").inc()
        if (error.api, error.table) not in self._other_apis:
            self._other_apis.add((error.api, error.table))
            self.log.info(
                "ignoring objects of {api}/{table}: not handled by this shim",
                api=error.api, table=error.table,
            )

    # -- snapshots

    @inlineCallbacks
    def _read(self, on_table_page, on_results_page, pause=0):
        """
        Read every table and the bind results at one revision (v3; v2 reads each at
        the index it is at, and the watch starts after the oldest).  The results are
        handed on page by page, after every table: what they restore is about ports
        the model has.

        @return: C{(revision to watch after, status, objects read, revision the
            results were read at)}.
        """
        status = yield self.client.status()
        revision = status.revision
        oldest = None
        objects = 0
        for table in self.schema.tables:
            read = yield self.client.get_all(
                self.schema.proton_key(table, ""), revision=revision, pause=pause,
                on_page=lambda page, table=table: on_table_page(table, page),
                expect=len(self.model.table(table)),
            )
            objects += read.count
            oldest = read.revision if oldest is None else min(oldest, read.revision)
        results = yield self.client.get_all(
            self.schema.result_prefix, revision=revision, pause=pause,
            on_page=on_results_page,
            # about one result per port
            expect=len(self.model.table(self.schema.port)),
        )
        return (
            (oldest if oldest is not None else revision), status, objects,
            results.revision,
        )

    @inlineCallbacks
    def _snapshot(self, restore, tombstones, pause=0):
        """
        Read a snapshot and bring the model to it: every page applied, then every
        object it does not have deleted.

        @param tombstones: beside the live watch, the deletions the watch applies
            meanwhile (C{(table, name)} to revision); C{None} for a full resync.
            Beside the watch, each page and each deletion first checks that no
            full read waits for this one to give way.
        @return: what L{_read} returns.
        """
        present = {table: NameSet() for table in self.schema.tables}

        def going_on():
            if tombstones is not None and self._give_way:
                raise _GaveWay()

        def table_page(table, page):
            going_on()
            self._apply_page(table, page, present[table], tombstones)

        def results_page(page):
            going_on()
            self.sink.snapshot_results(page, restore)
        read = yield self._read(table_page, results_page, pause=pause)
        yield self._apply_deletions(present, read[0], going_on)
        return read

    @inlineCallbacks
    def _synchronise(self, cause):
        """
        A full resynchronisation: read everything at one revision and bring the model
        to it; the watch then starts after that revision.
        """
        started = self.reactor.seconds()
        self._set_not_ready("synchronising (%s)" % (cause,))
        if self._background is not None:
            # A resync beside the watch ends at its next page: the two would hand
            # the sink their results at once, and its deletions could undo this
            # read's writes.
            self._give_way = True
            yield self._background
            if not self.running:
                return
        # This read does what every resync asked for so far would.
        self._resync_cause = self._beside_wanted = None
        status = yield self.client.status()
        if self.cluster_id is not None and status.cluster_id != self.cluster_id:
            # A replaced cluster numbers its revisions its own way: what is queued
            # belongs to the old one, and every object is compared by value.
            self.sink.cluster_changed()
            for table in self.schema.tables:
                for obj in self.model.table(table).values():
                    obj.revision = 0
        self.cluster_id = status.cluster_id
        self.metrics.child(self.metrics.resyncs, cause).inc()
        # Nothing is decided on a half-read model.
        self.sink.snapshot_started()
        first, self._first_snapshot = self._first_snapshot, False
        restore, self._restore = self._restore, False
        try:
            revision, status, objects, results_at = yield self._snapshot(
                first or restore, None)
            self.revision = revision
            # The snapshot holds all of its revision: watch from the next one.
            self._watch_from = revision + 1
            self.synchronised = True
            yield self.sink.snapshot_applied(first or restore, results_at, full=True)
        except BaseException:
            # Read again from the start: the next snapshot restores what this one
            # would have (and what a takeover asked for meanwhile).
            self._first_snapshot = first
            self._restore = self._restore or restore
            raise
        self.last_resync = (self.reactor.seconds(), cause)
        self.log.info(
            "synchronised ({cause}): {objects} objects at revision {revision} in "
            "{elapsed:.2f}s, etcd {version}",
            cause=cause, objects=objects, revision=revision,
            elapsed=self.reactor.seconds() - started, version=status.version,
        )

    def _retry_restore(self, cause):
        self._retry = None
        if self._restore:
            self._beside_wanted = self._beside_wanted or cause
            self._start_beside()

    def _start_beside(self, cause=None):
        """
        Start a resync beside the watch, for C{cause} or the one asked for while
        the watch was not open or another read ran, if the watch is open and no
        other runs.
        """
        cause = cause or self._beside_wanted
        if (cause is None or self._background is not None or not self.running
                or not self._watch_open()):
            return
        # This read takes every restore asked for so far: what was wanted is done.
        self._beside_wanted = None
        self._background = self._resync_beside(cause)

    @inlineCallbacks
    def _resync_beside(self, cause):
        """
        A resynchronisation beside the live watch: changes the watch applies meanwhile
        are newer than the snapshot's and win; deletions it applies are remembered,
        so that the snapshot does not bring the objects back.
        """
        started = self.reactor.seconds()
        self._tombstones = {}
        self._give_way = False
        try:
            self.metrics.child(self.metrics.resyncs, cause).inc()
            self.sink.snapshot_started(full=False)
            restore, self._restore = self._restore, False
            try:
                revision, status, objects, results_at = yield self._snapshot(
                    restore, self._tombstones, pause=BACKGROUND_PAUSE)
                if self.running:
                    yield self.sink.snapshot_applied(restore, results_at, full=False)
            except BaseException:
                self._restore = self._restore or restore
                raise
            if self.running:
                self.last_resync = (self.reactor.seconds(), cause)
                self.log.info(
                    "resynchronised beside the watch ({cause}): {objects} objects at "
                    "revision {revision} in {elapsed:.2f}s",
                    cause=cause, objects=objects, revision=revision,
                    elapsed=self.reactor.seconds() - started,
                )
        except _GaveWay:
            self.log.info(
                "the resync beside the watch ({cause}) gave way to a full "
                "resynchronisation", cause=cause,
            )
        except Exception as e:
            if self.running:
                self.log.warn(
                    "resynchronising ({cause}) failed: {error}; the watch goes on, "
                    "and the next resync tries again", cause=cause, error=e,
                )
                if self._restore:
                    # A takeover waits for its restore: tried again soon.
                    if self._retry is not None and self._retry.active():
                        self._retry.cancel()
                    self._retry = self.reactor.callLater(
                        RESTORE_RETRY, self._retry_restore, cause)
        finally:
            self._tombstones = None
            self._background = None
            # One asked for meanwhile (a takeover's) starts now.
            self._start_beside()

    def _apply_page(self, table, kvs, present, tombstones):
        """
        Apply a page of a snapshot of C{table}: each object that is new or newer than
        the model's.  The names seen are added to C{present}.
        """
        prefix = len(self.schema.proton_key(table, ""))
        objects = self.model.table(table)
        for kv in kvs:
            name = kv.key[prefix:]
            if not name or "/" in name:
                self.apply(PUT, kv.key, kv.value, kv.mod_revision)  # logs the bad key
                continue
            present.add(name)
            known = objects.get(name)
            if known is not None and known.revision and known.revision >= kv.mod_revision:
                continue
            if tombstones is not None:
                deleted = tombstones.get((table, name))
                if deleted is not None and deleted >= kv.mod_revision:
                    continue
            self._apply_to(table, name, PUT, kv.key, kv.value, kv.mod_revision)

    def _apply_deletions(self, present, revision, going_on):
        """
        Delete each object of the model that the snapshot at C{revision} does not
        have (ports first), unless it was written after the snapshot; a slice per
        reactor turn, C{going_on()} called every 256 objects.

        @return: a Deferred firing when done.
        """
        def each_name():
            for table in reversed(self.schema.tables):
                objects = self.model.table(table)
                for n, name in enumerate(self.model.names(table)):
                    if not n & 255:
                        going_on()
                    yield table, objects, name

        def step(item):
            table, objects, name = item
            if name in present[table]:
                return
            obj = objects.get(name)
            # Looked at again: the watch may have written it since the walk began.
            if obj is not None and obj.revision <= revision:
                self._apply_to(
                    table, name, DELETE, self.schema.proton_key(table, name), None,
                    revision,
                )

        return walk(self.reactor, each_name(), step)

    # -- readiness

    def _set_ready(self):
        if not self.ready:
            self.ready = True
            self.not_ready_reason = None
            self.metrics.ready.set(1)
            self.log.info(
                "shim ready: {objects} objects, watching from revision {revision}",
                objects=sum(self.model.counts().values()), revision=self.revision + 1,
            )
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(self)

    def _set_not_ready(self, reason):
        self.ready = False
        self.not_ready_reason = reason
        self.metrics.ready.set(0)
