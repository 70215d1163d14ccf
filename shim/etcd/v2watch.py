"""
V2Watch: a recursive watch over etcd's v2 keys API, with the surface of the v3
L{shim.etcd.watch.Watch}.

It holds one long stream, C{GET /v2/keys/<dir>/?wait=true&recursive=true&stream=true
&waitIndex=N}: etcd (3.4, 3.5) writes each event as one JSON object followed by a
newline, so the v3 L{WatchStreamParser} cuts it, with the same cap on one message.

Two traits of etcd's v2 watcher hub shape it:
  - A watch from an index etcd has already passed gets the first matching event from
    its history, and nothing more: the stream stays open and silent.  Such an event
    is known by its index being at most the store index etcd gave in the answer's
    C{X-Etcd-Index} header.  The watch then closes the stream and catches up with
    long-polls (C{wait=true} without C{stream}) on kept-alive connections, one per
    event of the backlog, until etcd answers one with a new event; from then on one
    stream carries every event.
  - etcd drops a stream watcher that has 100 events unsent (a reader that fell
    behind) without a word: the stream stays open and goes silent (etcd 3.4 and
    3.5 take the watcher out of the hub but do not close its stream).  So when the
    stream has been silent for C{probe_interval} seconds, the watch asks etcd, with
    one long-poll from C{last_revision + 1}, for the next event.  etcd answers at
    once if such an event is in its history, else when the next one happens; a
    healthy stream delivers that event too.  If the stream has not delivered it
    C{probe_interval} seconds later, the watcher was dropped: the watch ends with
    C{"connection_lost"} and the caller resumes (the follower from C{last_revision},
    itself included: a v2 watch never moves C{complete_revision}).  On a
    quiet directory this holds one idle long-poll open per watch.
  - etcd keeps the last 1000 events only (of the whole store, not of this
    directory): an older index is "event index cleared", which ends the watch with
    C{"compacted"}, C{compact_revision} being the oldest index etcd holds.  So a
    watch catching up is not safe from writes anywhere in the store until etcd
    holds it past its history: C{live} fires when a stream or long-poll is known to
    be, by its index being past the store index etcd gave (the stream opened from
    a later index, or an event newer than the answer's index), or by etcd leaving
    it unanswered for C{live_after} seconds (etcd answers from its history at
    once).

v2 sends no progress notifications (C{on_progress} is never called): an idle
timeout on a quiet store would end a healthy watch, so keep it off (None).
"""

from urllib.parse import urlencode

from twisted.logger import Logger

from shim.etcd import v2wire
from shim.etcd.errors import (
    AuthFailed, Compacted, ConnectionFailed, EtcdError, Timeout, describe_failure)
from shim.etcd.watch import Watch, WatchStreamParser, _WatchProtocol

log = Logger()


class V2Watch(Watch):
    """
    A running v2 watch; made by L{shim.etcd.v2.EtcdV2Client.watch}.

    @ivar started: fires (with the watch) once the first stream is open; errbacks
        if the watch ends before that.
    @ivar done: fires exactly once, never errbacks, with a L{WatchEnded}.
    @ivar last_revision: the index of the last event delivered; before any,
        C{start_revision - 1} (from now: the store index when the stream opened).
    @ivar endpoint: the endpoint of the current stream.
    @ivar events_seen: how many events arrived.
    @ivar reopens: how many long-polls were made to catch up.
    @cvar probe_interval: seconds of silence on the stream before the watch checks,
        with a long-poll, that etcd has not dropped its watcher.
    @cvar live_after: seconds a stream or long-poll that is behind waits for its
        first event before the watch is taken to be held at etcd (C{live}).
    """

    probe_interval = 2.0
    live_after = 0.5

    def __init__(self, client, key, start_revision, on_event, prefix=True,
                 prev_kv=False, progress_notify=True, idle_timeout=None,
                 on_progress=None, reactor=None):
        Watch.__init__(self, client, key, start_revision, on_event, prefix=prefix,
                       prev_kv=prev_kv, progress_notify=progress_notify,
                       idle_timeout=idle_timeout, on_progress=on_progress,
                       reactor=reactor)
        self._next = int(start_revision) if start_revision else None
        self.reopens = 0
        self._store_index = 0
        self._live = False
        self._reopening = False
        self._probe = None
        self._probe_timer = None
        self._check_timer = None
        self._live_timer = None
        self.probes = 0

    def _ask(self, prefix, prev_kv, progress_notify):
        """v2 has no request body: the directory's path and the options of a wait."""
        self._prev_kv = prev_kv
        self._recursive = prefix
        self._path = v2wire.key_path(self.key)

    # -- life cycle -----------------------------------------------------

    def _start(self):
        Watch._start(self)
        self._probe_timer = self._reactor.callLater(self.probe_interval, self._tick)

    def _open(self):
        query = {"wait": "true", "stream": "true"}
        if self._recursive:
            query["recursive"] = "true"
        if self._next:
            query["waitIndex"] = str(self._next)
        self._opening = self._client._open_stream(
            self._call, self._path + "?" + urlencode(query))
        self._opening.addCallbacks(self._opened, self._open_failed)

    def _opened(self, result):
        self._opening = None
        self.endpoint, response = result
        self._last_activity = self._reactor.seconds()
        index = response.headers.getRawHeaders(b"x-etcd-index")
        self._store_index = int(index[0]) if index else 0
        if self._next is None:
            # From now: etcd registered the watcher at this index.
            self.last_revision = self._store_index
            self._next = self._store_index + 1
        self._live = self._next > self._store_index
        self._parser = WatchStreamParser(self._message)
        if self._ending is not None:
            self._parser.stopped = True
        if self._live:
            self._became_live()
        else:
            self._wait_for_history()
        if not self.started.called and self._ending is None:
            self.started.callback(self)
        response.deliverBody(_WatchProtocol(self))

    def _open_failed(self, failure):
        self._opening = None
        if self._ending is None:
            self._end(*_ending_for(failure, self._call))
        self._finish()

    def _lost(self, reason):
        self._protocol = None
        if self._reopening and self._ending is None:
            # A history event was delivered: catch up with long-polls.
            self._reopening = False
            self._poll()
            return
        if self._ending is None:
            self._end("connection_lost", None, ConnectionFailed(
                None, "etcd %s at %s: the v2 watch stream ended (%s); resume from"
                " index %d"
                % (self._call, self.endpoint, describe_failure(reason),
                   self.last_revision + 1)))
        self._finish()

    def _poll(self):
        """Ask for the next event from C{_next}; etcd answers from its history."""
        self.reopens += 1
        self._wait_for_history()
        query = {"wait": "true", "waitIndex": str(self._next)}
        if self._recursive:
            query["recursive"] = "true"
        self._opening = self._client._long_poll(
            self._call, self._path + "?" + urlencode(query), pooled=True)
        self._opening.addCallbacks(self._polled, self._open_failed)

    def _polled(self, result):
        self._opening = None
        self._heard_from_history()
        if self._ending is not None:
            self._finish()
            return
        self._last_activity = self._reactor.seconds()
        store_index, message = result
        index = self._deliver(message)
        if index is None:
            return
        if index <= store_index:
            self._poll()
        else:
            # A new event: the backlog is done, back to one stream.
            self._open()

    def _end(self, reason, compact_revision=None, error=None):
        self._reopening = False
        if self._probe_timer is not None and self._probe_timer.active():
            self._probe_timer.cancel()
        self._probe_timer = None
        if self._check_timer is not None and self._check_timer.active():
            self._check_timer.cancel()
        self._check_timer = None
        self._heard_from_history()
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.cancel()
        Watch._end(self, reason, compact_revision, error)

    # -- whether etcd holds the watch past its history -----------------

    def _wait_for_history(self):
        """
        A stream or long-poll from an index etcd has passed: its first event
        comes from etcd's history at once, if there is one for this directory.
        """
        if (self.live.called or self._live_timer is not None
                or self._ending is not None):
            return
        self._live_timer = self._reactor.callLater(self.live_after, self._unanswered)

    def _heard_from_history(self):
        if self._live_timer is not None:
            if self._live_timer.active():
                self._live_timer.cancel()
            self._live_timer = None

    def _unanswered(self):
        # Nothing in etcd's history for this directory past our index: etcd
        # holds the request as a watcher.
        self._live_timer = None
        self._became_live()

    # -- the check that etcd still has our watcher ----------------------

    def _tick(self):
        self._probe_timer = None
        if self._ending is not None:
            return
        quiet = self._reactor.seconds() - self._last_activity
        if (self._probe is None and self._live and not self._reopening
                and self._protocol is not None and quiet >= self.probe_interval):
            self._send_probe(self.last_revision + 1)
        self._probe_timer = self._reactor.callLater(self.probe_interval, self._tick)

    def _send_probe(self, index):
        query = {"wait": "true", "waitIndex": str(index)}
        if self._recursive:
            query["recursive"] = "true"
        self.probes += 1
        probe = self._client._long_poll(self._call + " (check)",
                                        self._path + "?" + urlencode(query))
        self._probe = probe
        probe.addCallbacks(self._probed, self._probe_failed, callbackArgs=(probe,),
                           errbackArgs=(probe,))

    def _probe_failed(self, failure, probe):
        if self._probe is probe:
            self._probe = None
        # The stream notices its own connection's problems; nothing to decide here.
        return None

    def _probed(self, result, probe):
        if self._probe is not probe or self._ending is not None:
            return
        self._probe = None
        index, message = result
        if message.get("errorCode") == v2wire.EVENT_INDEX_CLEARED:
            # The window moved past our last event (writes elsewhere): check from
            # the oldest event etcd still has.
            oldest = v2wire.cleared_start(message.get("cause", ""))
            if oldest and oldest > self.last_revision + 1:
                self._send_probe(oldest)
            return
        node = message.get("node")
        if "errorCode" in message or not node or "modifiedIndex" not in node:
            return
        expected = int(node["modifiedIndex"])
        if self.last_revision >= expected:
            return
        if self._check_timer is not None and self._check_timer.active():
            # One check at a time: a second would be left behind, unreferenced.
            self._check_timer.cancel()
        self._check_timer = self._reactor.callLater(
            self.probe_interval, self._check_delivered, expected)

    def _check_delivered(self, expected):
        self._check_timer = None
        if self._ending is None and self.last_revision < expected:
            self._end("connection_lost", None, ConnectionFailed(
                None, "etcd %s at %s: etcd dropped this v2 watcher (it falls silent"
                " once 100 events are unsent, as when the reader falls 100 events"
                " behind): event %d did not arrive; resume from index %d"
                % (self._call, self.endpoint, expected, self.last_revision + 1)))

    # -- the stream -----------------------------------------------------

    def _message(self, message):
        """One event (or error) of the stream."""
        if self._ending is not None or self._reopening:
            return
        self._heard_from_history()
        index = self._deliver(message)
        if index is not None and not self._live and self._ending is None:
            if index <= self._store_index:
                # From etcd's history: this stream will carry nothing more.
                self._reopening = True
                self._parser.stopped = True
                if self._protocol is not None:
                    self._protocol.transport.stopProducing()
            else:
                self._live = True
                self._became_live()

    def _deliver(self, message):
        """
        Hand one answer's event on; its index, or None when it ended the watch.
        """
        if "errorCode" in message:
            error = v2wire.error_from_v2(200, message, self._call, self.endpoint)
            self._end(*_ending_for_error(error))
            return None
        try:
            index, event = v2wire.decode_event(message, self._prev_kv)
        except (KeyError, TypeError, ValueError) as e:
            self._end("connection_lost", None, EtcdError(
                None, "etcd %s at %s: a v2 watch event without a node or index (%s):"
                " %r" % (self._call, self.endpoint, e, str(message)[:200])))
            return None
        self.events_seen += 1
        if index > self.last_revision:
            self.last_revision = index
        self._next = index + 1
        if event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.failure("etcd {call}: on_event failed for {key} at {revision}",
                            call=self._call, key=event.key, revision=index)
        return index


def _ending_for_error(error):
    """(reason, compact_revision, error) for an L{EtcdError} of a v2 watch."""
    if isinstance(error, Compacted):
        return "compacted", error.compact_revision, error
    if isinstance(error, AuthFailed):
        return "auth", None, error
    if isinstance(error, (ConnectionFailed, Timeout)):
        return "connection_lost", None, error
    if getattr(error, "v2_code", None) == v2wire.WATCHER_CLEARED:
        return "connection_lost", None, error
    return "cancelled", None, error


def _ending_for(failure, call):
    """(reason, compact_revision, error) for a failure to open a v2 stream."""
    error = failure.value
    if isinstance(error, EtcdError):
        return _ending_for_error(error)
    return "connection_lost", None, ConnectionFailed(
        None, "etcd %s: could not open the watch: %s" % (call, failure.getErrorMessage()))
