"""
Watch: one etcd watch over the v3 gateway's streamed POST /v3/watch.

The gateway answers with newline-delimited JSON messages C{{"result": {...}}}.
L{WatchStreamParser} cuts the byte stream into lines (a message may span reads,
one read may hold several) and L{Watch} turns each message into calls of
C{on_event} with L{WatchEvent}s, strictly in order. The watch ends exactly once,
firing C{done} with a L{WatchEnded} that says why; the caller restarts from
C{last_revision + 1}. The parser is on the service's hot path (tens of thousands of
events per second), so it does one C{json.loads} per line, a base64 decode per
field and one tuple per event, and nothing else.

Two endings need more than a resume:
  - C{"auth"}: etcd refused our token or our permissions.  etcd confirms such a
    watch (C{created}) and cancels it in the same breath, so C{started} fires; a
    caller tells it from a working watch by C{events_seen}, still 0.  The client
    has dropped the token by then, so its next call authenticates again.
  - C{"too_large"}: one message over L{MAX_WATCH_MESSAGE}.  The parser holds at
    most that many bytes of an unfinished message, then gives up: a resume would
    read the same message again, so the caller resynchronises fully.
"""

import json

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from shim.etcd import wire
from shim.etcd.errors import (
    AuthFailed, Compacted, ConnectionFailed, EtcdError, MessageTooLarge, Timeout,
    describe_failure, error_from_status, is_auth_refusal, is_invalid_token)
from shim.etcd.wire import WatchEnded, WatchEvent  # noqa: F401 (re-exported)

log = Logger()

#: The largest watch message (one line of the stream) a watch accepts, in bytes.  A
#: larger one ends the watch with reason C{"too_large"}.  Read when a watch (or a
#: L{WatchStreamParser}) is made, so that a test can lower it.
MAX_WATCH_MESSAGE = 64 * 1024 * 1024


class LineTooLarge(ValueError):
    """
    A line of the stream is longer than the parser's cap.

    @ivar size: how many bytes of it had arrived when the parser gave up.
    @ivar limit: the cap.
    """

    def __init__(self, size, limit):
        ValueError.__init__(self, "a watch message of more than %d bytes (%d bytes"
                            " of it held)" % (limit, size))
        self.size = size
        self.limit = limit


class WatchStreamParser(object):
    """
    Split a newline-delimited JSON byte stream into decoded messages, in order.

    @ivar stopped: set to stop delivering (the rest of the stream is ignored).
    @ivar max_message: the longest line accepted, in bytes; a longer one raises
        L{LineTooLarge} as soon as that many bytes of it are held.
    """

    def __init__(self, on_message, max_message=None):
        self._on_message = on_message
        self._pending = []
        self._held = 0
        self.max_message = MAX_WATCH_MESSAGE if max_message is None else max_message
        self.stopped = False

    def feed(self, data):
        """
        Take the next bytes of the stream; call C{on_message} with each complete
        message. Raises C{ValueError} for a line that is not JSON, L{LineTooLarge}
        (a C{ValueError}) for one longer than C{max_message}.
        """
        limit = self.max_message
        if b"\n" not in data:
            if data:
                self._pending.append(data)
                self._held += len(data)
                if self._held > limit:
                    raise LineTooLarge(self._held, limit)
            return
        lines = data.split(b"\n")
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending = []
            self._held = 0
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
            self._held = len(tail)
        loads = json.loads
        on_message = self._on_message
        for line in lines:
            if self.stopped:
                return
            if len(line) > limit:
                raise LineTooLarge(len(line), limit)
            if line and not line.isspace():
                on_message(loads(line))
        if self._held > limit and not self.stopped:
            raise LineTooLarge(self._held, limit)

    @property
    def buffered(self):
        """How many bytes of an unfinished message are held."""
        return self._held


class _WatchProtocol(Protocol):
    """Receives the watch response body and hands it to the L{Watch}."""

    def __init__(self, watch):
        self.watch = watch
        self.lost = False

    def connectionMade(self):
        self.watch._connected(self)

    def dataReceived(self, data):
        self.watch._data(data)

    def connectionLost(self, reason):
        self.lost = True
        self.watch._lost(reason)


class Watch(object):
    """
    A running watch; made by L{shim.etcd.client.EtcdClient.watch}.

    @ivar started: fires (with the watch) when etcd confirmed the watch; errbacks
        if the watch ends before that.
    @ivar live: fires (with the watch) once etcd holds the watch past its
        history, so that the changes made from now on come as they happen, and
        writes, however many, cannot push the watch out of what etcd keeps; for
        v3, just before C{started}.  It never fires if the watch ends before that.
    @ivar done: fires exactly once, never errbacks, with a L{WatchEnded}.
    @ivar last_revision: the highest revision seen (events and progress
        notifications); before any, C{start_revision - 1}.
    @ivar complete_revision: the highest revision whose events have all arrived:
        that of the last event of a message that is not a fragment (etcd splits a
        revision's events only between fragments), or of a progress notification.
        A watch resumed after it need not see it again, and should not: etcd
        skips the next progress notification of a watch it has just sent events.
    @ivar endpoint: the endpoint the watch is connected to, once it is.
    @ivar events_seen: how many events and progress notifications arrived.  etcd
        confirms a watch whose token or permissions it refuses and cancels it at
        once: a watch that ends with this still 0 was never really connected.
    """

    # How long to wait for the connection to close after we stop it.
    close_grace = 5.0

    def __init__(self, client, key, start_revision, on_event, prefix=True,
                 prev_kv=True, progress_notify=True, idle_timeout=None,
                 on_progress=None, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._client = client
        self.key = key
        self.start_revision = start_revision
        self._on_event = on_event
        self._on_progress = on_progress
        self.last_revision = (int(start_revision) - 1) if start_revision else 0
        self.complete_revision = self.last_revision
        self._idle_timeout = idle_timeout
        self._ask(prefix, prev_kv, progress_notify)
        self._call = "watch %r" % (key,)
        self.started = defer.Deferred()
        self.live = defer.Deferred()
        self.done = defer.Deferred()
        self.endpoint = None
        self.watch_id = None
        self.events_seen = 0
        self._parser = WatchStreamParser(self._message)
        self._protocol = None
        self._opening = None
        self._ending = None
        self._watchdog = None
        self._grace = None
        self._token = None
        self._last_activity = 0.0

    def _ask(self, prefix, prev_kv, progress_notify):
        """Make the request that opens the watch (a subclass asks its own way)."""
        self._from_now = not self.start_revision
        self._request = wire.encode(wire.watch_create_request(
            self.key, self.start_revision, prefix, prev_kv, progress_notify))

    def __repr__(self):
        return "<%s %r from %s last_revision=%d>" % (
            type(self).__name__, self.key, self.start_revision, self.last_revision)

    # -- life cycle -----------------------------------------------------

    def _start(self):
        self._last_activity = self._reactor.seconds()
        if self._idle_timeout:
            self._watchdog = self._reactor.callLater(self._idle_timeout, self._check_idle)
        self._open()

    def _open(self):
        """Open the stream (once: a v3 watch is one stream)."""
        self._token = self._client._token
        self._opening = self._client._open_stream(self._call, "/watch", self._request)
        self._opening.addCallbacks(self._opened, self._open_failed)

    def _opened(self, result):
        self._opening = None
        self.endpoint, response = result
        self._last_activity = self._reactor.seconds()
        response.deliverBody(_WatchProtocol(self))

    def _open_failed(self, failure):
        self._opening = None
        if self._ending is None:
            error = failure.value
            if isinstance(error, (ConnectionFailed, Timeout)):
                self._end("connection_lost", None, error)
            elif isinstance(error, AuthFailed):
                self._client._token_rejected(self._token)
                self._end("auth", None, error)
            elif isinstance(error, EtcdError):
                self._end("cancelled", None, error)
            else:
                self._end("connection_lost", None, ConnectionFailed(
                    None, "etcd %s: could not open the watch: %s"
                    % (self._call, failure.getErrorMessage())))
        self._finish()

    def _connected(self, protocol):
        self._protocol = protocol
        if self._ending is not None:
            protocol.transport.stopProducing()

    def _lost(self, reason):
        if self._ending is None:
            self._end("connection_lost", None, ConnectionFailed(
                None, "etcd %s at %s: watch stream ended: %s"
                % (self._call, self.endpoint, describe_failure(reason))))
        self._finish()

    def stop(self):
        """
        End the watch. Returns a Deferred that fires like C{done} (with the
        L{WatchEnded}) once the connection is closed; a new one on every call, so
        that waiting on it leaves C{done}'s result alone.
        """
        self._end("stopped")
        return self.ended()

    def ended(self):
        """A new Deferred that fires with the L{WatchEnded} when the watch is over."""
        d = defer.Deferred()

        def fire(result):
            d.callback(self._ending)
            return result
        self.done.addBoth(fire)
        return d

    def _became_live(self):
        if not self.live.called and self._ending is None:
            self.live.callback(self)

    def _end(self, reason, compact_revision=None, error=None):
        """Decide how the watch ends (once), then tear the connection down."""
        if self._ending is not None:
            return
        self._ending = WatchEnded(reason, compact_revision, error)
        self._parser.stopped = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if not self.started.called:
            self.started.errback(error if error is not None else defer.CancelledError(
                "etcd %s: stopped before etcd confirmed it" % (self._call,)))
        if self._protocol is not None and not self._protocol.lost:
            self._grace = self._reactor.callLater(self.close_grace, self._finish)
            self._protocol.transport.stopProducing()
        elif self._opening is not None:
            self._opening.cancel()
        else:
            self._finish()

    def _finish(self):
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if self._ending is not None and not self.done.called:
            self.done.callback(self._ending)

    def _check_idle(self):
        self._watchdog = None
        if self._ending is not None:
            return
        idle = self._reactor.seconds() - self._last_activity
        if idle >= self._idle_timeout:
            self._end("idle", None, Timeout(
                None, "etcd %s at %s: nothing received for %.1f s"
                % (self._call, self.endpoint, idle)))
        else:
            self._watchdog = self._reactor.callLater(
                self._idle_timeout - idle, self._check_idle)

    # -- the stream -----------------------------------------------------

    def _data(self, data):
        self._last_activity = self._reactor.seconds()
        try:
            self._parser.feed(data)
        except LineTooLarge as e:
            self._end("too_large", None, MessageTooLarge(
                None, "etcd %s at %s: %s; the watch ends, resynchronise instead of"
                " resuming (the limit is shim.etcd.watch.MAX_WATCH_MESSAGE)"
                % (self._call, self.endpoint, e)))
        except ValueError as e:
            self._end("connection_lost", None, EtcdError(
                None, "etcd %s at %s: garbled watch stream: %s"
                % (self._call, self.endpoint, e)))

    def _message(self, message):
        """One decoded message of the stream."""
        if self._ending is not None:
            return
        result = message.get("result")
        if result is None:
            fields = wire.error_fields(message)
            if fields is not None:
                error = error_from_status(fields[0], fields[1], self._call, self.endpoint)
                if isinstance(error, AuthFailed) or is_invalid_token(error):
                    self._client._token_rejected(self._token)
                    if not isinstance(error, AuthFailed):
                        error = AuthFailed(error.code, error.message)
                    self._end("auth", None, error)
                else:
                    self._end("cancelled", None, error)
            return
        header = result.get("header")
        if header is not None:
            self._client._header_seen(header)
        events = result.get("events")
        if events:
            on_event = self._on_event
            self.events_seen += len(events)
            for event in wire.decode_watch_events(events):
                self.last_revision = event.mod_revision
                try:
                    on_event(event)
                except Exception:
                    log.failure("etcd {call}: on_event failed for {key} at {revision}",
                                call=self._call, key=event.key,
                                revision=event.mod_revision)
            if not result.get("fragment"):
                self.complete_revision = self.last_revision
            return
        if result.get("created"):
            self.watch_id = result.get("watch_id", 0)
            if self._from_now and header is not None:
                revision = int(header.get("revision", 0))
                if revision > self.last_revision:
                    self.last_revision = self.complete_revision = revision
            if not self.started.called:
                self._became_live()
                self.started.callback(self)
        if result.get("canceled"):
            compact = wire.as_int(result.get("compact_revision"))
            if compact:
                self._end("compacted", compact, Compacted(
                    compact, "etcd %s at %s: start revision %s was compacted; oldest"
                    " available revision is %d" % (self._call, self.endpoint,
                                                   self.last_revision + 1, compact)))
            else:
                reason = result.get("cancel_reason") or "no reason given"
                if is_auth_refusal(reason):
                    # The token expired or died with an etcd restart, or our user
                    # lost a permission: authenticate again before the next try.
                    self._client._token_rejected(self._token)
                    self._end("auth", None, AuthFailed(
                        None, "etcd %s at %s: cancelled by etcd for authentication"
                        " or permission: %s" % (self._call, self.endpoint, reason)))
                else:
                    self._end("cancelled", None, EtcdError(
                        None, "etcd %s at %s: cancelled by etcd: %s"
                        % (self._call, self.endpoint, reason)))
            return
        if result.get("created"):
            return
        # A progress notification: etcd has nothing more up to this revision.
        self.events_seen += 1
        revision = int(header.get("revision", 0)) if header is not None else 0
        if revision > self.last_revision:
            self.last_revision = revision
        if revision > self.complete_revision:
            self.complete_revision = revision
        if self._on_progress is not None:
            try:
                self._on_progress(revision)
            except Exception:
                log.failure("etcd {call}: on_progress failed", call=self._call)
