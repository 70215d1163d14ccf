"""
The C{http} backend: forwards every callback to a vendor's web service as a JSON POST.

A vendor whose controller already has an HTTP API (or who prefers to write the backend
in another language) runs a small web service and points the shim at it::

    [shim]
    backend = http

    [backend]
    url = http://127.0.0.1:8181/shim
    timeout = 5
    max_in_flight = 64
    max_response_bytes = 1048576

Each callback POSTs one JSON object to C{url}: C{callback} (its name), C{uuid} (the
object it is about) and what the callback received (see L{HttpBackend} and
C{docs/backends.md}).  A 2xx answer is success; anything else, a time-out, or (for
C{bind_port}) a body that is not the expected JSON fails the call with a message
naming the URL, the callback and what was wrong, which the shim logs and counts.

C{bind_port}'s answer is the bind result: a JSON object with C{vif_type} (a non-empty
string) and C{vif_details} (an object), or C{{}} (or an empty body) to reject the port.

Under load at most C{max_in_flight} requests are out at once, over as many persistent
connections; further calls wait in a first-come, first-served queue.  So a burst of
ten thousand binds costs a few dozen file descriptors, not ten thousand.  The time a
call waits in the queue counts toward the shim's own time limit for the call (the
Deferred it gets can be cancelled at any time) but not toward C{timeout}, which starts
when the request is sent.
"""

import json
from collections import deque, namedtuple
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from shim.backends import BackendPlugin
from shim.interfaces import IBackend

#: Seconds one request may take, answer included, unless C{[backend] timeout} says.
DEFAULT_TIMEOUT = 5.0

#: Requests out at once (and connections kept open), unless C{[backend] max_in_flight}
#: says.
DEFAULT_MAX_IN_FLIGHT = 64

#: Bytes an answer's body may have, unless C{[backend] max_response_bytes} says: a bind
#: result is a few hundred bytes; anything near a mebibyte is a misdirected request.
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024

#: Seconds an idle connection to the web service is kept open for the next call.
IDLE_CONNECTION_TIMEOUT = 30

#: The options C{[backend]} may hold for this backend.
OPTIONS = ("url", "timeout", "max_in_flight", "max_response_bytes")

#: File descriptors the process needs besides the backend's connections (etcd, the
#: metrics listener, logs, Python itself): below C{max_in_flight} plus this, the shim
#: warns at start-up.
_FD_MARGIN = 64

#: How much of a bad answer's body is quoted in an error message.
_QUOTE = 200


class HttpBackendError(Exception):
    """
    A call to the vendor's web service failed; the message says which call, where,
    and why.
    """


class HttpBackendTimeout(HttpBackendError, TimeoutError):
    """
    The web service did not answer within C{[backend] timeout}.  Being a
    L{TimeoutError}, it is counted as a time-out by the shim, not as an error.
    """


#: The checked C{[backend]} options of the http backend.
HttpOptions = namedtuple("HttpOptions", "url timeout max_in_flight max_response_bytes")


def _quote(body):
    """
    The start of a response body, readable in one log line.
    """
    text = body[:_QUOTE].decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(body) > _QUOTE:
        text += "..."
    return repr(text)


def _cancelled(failure):
    """
    Whether a failed request was cancelled: the agent reports a cancellation as a
    L{ResponseFailed} (or its subclass C{ResponseNeverReceived}) carrying a
    L{CancelledError} among its reasons.
    """
    if not failure.check(ResponseFailed):
        return False
    return any(r.check(CancelledError) for r in failure.value.reasons)


def _nothing(body, where):
    """
    What a notification's answer gives: nothing (its body is ignored).
    """
    return None


def _changes(changes):
    """
    A L{shim.model.Changes} as JSON: C{{"new": {...}, "prev": {...}}}.
    """
    return {"new": dict(changes.new), "prev": dict(changes.prev)}


def _plain(obj):
    """
    A model object (or C{None}) as a plain dict for JSON (or C{None}).
    """
    return None if obj is None else dict(obj)


def parse_options(options):
    """
    Check the C{[backend]} options of the C{http} backend.

    @param options: option name to string.
    @return: an L{HttpOptions}: the URL (a C{str}), the timeout in seconds, the most
        requests out at once and the most bytes an answer may have.
    @raise ValueError: an option is missing, unknown or wrong; the message names it.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            "[backend] %s: unknown option for the http backend; known options are %s"
            % (", ".join(unknown), ", ".join(OPTIONS))
        )
    url = (options.get("url") or "").strip()
    if not url:
        raise ValueError(
            "[backend] url: missing; the http backend needs the URL of the vendor's web "
            "service, such as http://127.0.0.1:8181/shim"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            "[backend] url: %r: the scheme must be http or https" % (url,)
        )
    if not parts.hostname:
        raise ValueError("[backend] url: %r: no host" % (url,))
    try:
        parts.port
    except ValueError:
        raise ValueError(
            "[backend] url: %r: the port is not a number from 1 to 65535" % (url,)
        ) from None
    timeout = DEFAULT_TIMEOUT
    text = (options.get("timeout") or "").strip()
    if text:
        try:
            timeout = float(text)
        except ValueError:
            timeout = float("nan")
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError(
                "[backend] timeout: %r is not a number of seconds above 0" % (text,)
            )
    max_in_flight = _count(options, "max_in_flight", DEFAULT_MAX_IN_FLIGHT,
                           "requests out at once")
    max_response_bytes = _count(options, "max_response_bytes",
                                DEFAULT_MAX_RESPONSE_BYTES, "bytes")
    return HttpOptions(url, timeout, max_in_flight, max_response_bytes)


def _count(options, name, default, unit):
    """
    The whole number of C{unit} above 0 that option C{name} gives, or C{default}.
    """
    text = (options.get(name) or "").strip()
    if not text:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError("[backend] %s: %r is not a whole number of %s above 0 "
                         "(default %d)" % (name, text, unit, default))
    return value


class InFlightLimit:
    """
    At most C{size} calls running at once; the others wait their turn in arrival
    order.

    A call waiting its turn can be cancelled: it leaves the queue and is never
    started.  A running call cancelled is cancelled by its own Deferred's canceller.
    (Cancelled entries stay in the queue until their turn comes, and are then skipped,
    so that cancelling thousands of waiting calls at once costs no queue search.)
    A waiting call holds a handful of objects only: a burst of thousands of calls
    should cost the garbage collector little.

    @ivar size: the most calls running at once.
    @ivar running: calls running now.
    @ivar waiting: calls waiting their turn now (not counting cancelled ones).
    """

    def __init__(self, size):
        self.size = size
        self.running = 0
        self.waiting = 0
        self._queue = deque()
        self._dispatching = False

    def run(self, start, *args):
        """
        Call C{start(*args)} once fewer than C{size} calls are running and every call
        that came earlier has started.

        @param start: a callable returning a Deferred (or raising).
        @return: a Deferred firing with what C{start(*args)}'s Deferred fires with.
            Cancelling it before C{start} was called takes the call out of the queue
            (it fails with L{CancelledError}); after, cancels C{start}'s Deferred.
        """
        if self.running < self.size and not self.waiting:
            return self._start(start, args)
        turn = _Turn(self, start, args)
        self._queue.append(turn)
        self.waiting += 1
        return turn.result

    def _start(self, start, args):
        self.running += 1
        try:
            d = start(*args)
        except Exception:
            d = fail()
        d.addBoth(self._finished)
        return d

    def _finished(self, result):
        self.running -= 1
        self._next()
        return result

    def _next(self):
        """
        Start waiting calls while there is room.  A loop rather than recursion: a call
        failing at once would otherwise start the next one from inside itself, and so
        on down the queue.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            queue = self._queue
            while queue and self.running < self.size:
                turn = queue.popleft()
                if turn.result.called:
                    continue  # cancelled while waiting
                self.waiting -= 1
                turn.begin(self._start(turn.start, turn.args))
        finally:
            self._dispatching = False


class _Turn:
    """
    A call waiting in an L{InFlightLimit}'s queue.

    @ivar result: the Deferred its caller holds.
    @ivar running: the started call's Deferred, once started.
    """

    __slots__ = ("limit", "start", "args", "result", "running")

    def __init__(self, limit, start, args):
        self.limit = limit
        self.start = start
        self.args = args
        self.running = None
        self.result = Deferred(self._cancel)

    def begin(self, running):
        self.start = self.args = None
        self.running = running
        running.addBoth(self._done)

    def _done(self, outcome):
        if not self.result.called:
            self.result.callback(outcome)  # a Failure goes down the errback chain

    def _cancel(self, result):
        if self.running is None:
            # Still queued: left in the queue, already fired, skipped in its turn.
            self.limit.waiting -= 1
            self.start = self.args = None
        else:
            self.running.cancel()


@implementer(IBodyProducer)
class _RequestBody:
    """
    A request body already in memory, written at once.
    """

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _ResponseBody(Protocol):
    """
    Collects an answer's body up to C{limit} bytes.  A larger body fails
    C{finished} with L{HttpBackendError} and closes the connection at once, so that
    the rest is neither read nor kept.

    @ivar finished: a Deferred firing with the whole body; cancelling it closes the
        connection.
    """

    def __init__(self, limit, where):
        self._limit = limit
        self._where = where
        self._parts = []
        self._size = 0
        self.finished = Deferred(lambda d: self.abort())

    def dataReceived(self, data):
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.refuse()
            return
        self._parts.append(data)

    def refuse(self, length=None):
        """
        Fail the call because the answer is too large, and close the connection.

        @param length: the body's length, when the answer announced it.
        """
        self._parts = []
        self.abort()
        if not self.finished.called:
            size = "" if length is None else " (%d bytes)" % (length,)
            self.finished.errback(HttpBackendError(
                "%s: the answer's body%s is larger than the %d bytes allowed "
                "([backend] max_response_bytes)" % (self._where, size, self._limit)))

    def abort(self):
        """
        Close the connection without reading the rest of the answer (on a refused
        answer, or a call cancelled while its answer arrives).
        """
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._parts))
        else:
            self.finished.errback(reason)


@implementer(IBackend)
class HttpBackend:
    """
    A backend that POSTs each callback as JSON to a web service and waits for its
    answer.  At most L{max_in_flight} requests are out at once, over as many
    persistent connections; further calls wait in a queue (see L{InFlightLimit}).

    @ivar url: the web service's URL.
    @ivar timeout: seconds one request may take once sent, answer included.
    @ivar max_in_flight: the most requests out at once.
    @ivar max_response_bytes: the most bytes an answer's body may have.
    @ivar limit: the L{InFlightLimit}: C{limit.running} requests are out, and
        C{limit.waiting} calls wait their turn.
    """

    log = Logger()

    def __init__(self, options, reactor=None, clock=None):
        """
        @param options: the C{[backend]} section: C{url} (required), C{timeout}
            (seconds, default 5), C{max_in_flight} (default 64), C{max_response_bytes}
            (default 1 MiB).
        @param reactor: the reactor (the global one by default).
        @param clock: what times requests out (the reactor by default; tests pass a
            L{twisted.internet.task.Clock}).
        @raise ValueError: an option is missing or wrong; the message names it.
        """
        (self.url, self.timeout, self.max_in_flight,
         self.max_response_bytes) = parse_options(options)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._url = self.url.encode("ascii")
        self.limit = InFlightLimit(self.max_in_flight)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        # One connection per request out: never more, so a burst reuses them.
        self._pool.maxPersistentPerHost = self.max_in_flight
        # Close idle connections before common servers do (twisted.web after 60 s,
        # many others after 60-75 s), so a POST rarely meets one the server is closing:
        # a POST is never retried automatically.
        self._pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        self._agent = Agent(reactor, pool=self._pool)
        # The same for every request (the agent copies them to add Host).
        self._headers = Headers({b"Content-Type": [b"application/json"],
                                 b"Accept": [b"application/json"]})
        self.log.info(
            "http backend posting to {url}, timeout {timeout}s, at most {max_in_flight} "
            "requests at once, answers up to {max_response_bytes} bytes",
            url=self.url, timeout=self.timeout, max_in_flight=self.max_in_flight,
            max_response_bytes=self.max_response_bytes)
        self._check_file_limit()

    def _check_file_limit(self):
        """
        Warn when the process may open fewer files than C{max_in_flight} connections
        and the rest of the shim need.
        """
        try:
            import resource
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, OSError, ValueError):
            return
        if soft != resource.RLIM_INFINITY and soft < self.max_in_flight + _FD_MARGIN:
            self.log.warn(
                "http backend: [backend] max_in_flight = {max_in_flight} connections, "
                "but the process may open only {soft} files; raise the limit "
                "(LimitNOFILE= in the systemd unit, ulimit -n) or lower max_in_flight",
                max_in_flight=self.max_in_flight, soft=soft)

    def close(self):
        """
        Close the connections kept open to the web service.

        @return: a Deferred firing once they are closed.
        """
        return self._pool.closeCachedConnections()

    # -- the exchange

    def post(self, callback, about, body, parse=None):
        """
        POST one callback's JSON body and read the answer, once fewer than
        L{max_in_flight} requests are out.

        @param callback: the callback's name, for error messages.
        @param about: what the call is about (C{"port <uuid>"}), for error messages.
        @param body: the JSON-serialisable request.
        @param parse: if given, called with a 2xx answer's body and C{where} (the
            call's description for messages); its result is the call's.
        @return: a Deferred firing with the raw response body (bytes) of a 2xx answer
            (or with what C{parse} makes of it),
            or failing with L{HttpBackendError} (L{HttpBackendTimeout} when no answer
            came within L{timeout} of sending).  Cancelling it before the request is
            sent takes the call out of the queue; after, aborts the request, closing
            its connection.  Either way it fails with L{CancelledError}.
        """
        where = "http backend: POST %s for %s of %s" % (self.url, callback, about)
        return self.limit.run(self._send, body, where, parse)

    def _send(self, body, where, parse):
        """
        Send one request now; its time limit starts here, not when the call was made.
        (The body is encoded here too, and the answer's handling set up, so that a
        call waiting its turn holds little.)
        """
        try:
            data = json.dumps(body, sort_keys=True).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise HttpBackendError("%s: cannot encode the request as JSON: %s"
                                   % (where, e)) from None
        d = self._agent.request(b"POST", self._url, self._headers, _RequestBody(data))
        d.addCallback(self._read, where)
        d.addTimeout(self.timeout, self._clock,
                     onTimeoutCancel=lambda result, timeout: self._timed_out(where))
        d.addErrback(self._failed, where)
        if parse is not None:
            d.addCallback(parse, where)
        return d

    def _timed_out(self, where):
        raise HttpBackendTimeout("%s: no answer within %gs ([backend] timeout)"
                                 % (where, self.timeout))

    def _read(self, response, where):
        reader = _ResponseBody(self.max_response_bytes, where)
        finished = reader.finished
        response.deliverBody(reader)
        if response.length is not UNKNOWN_LENGTH and \
                response.length > self.max_response_bytes:
            reader.refuse(response.length)
        finished.addCallback(self._check_status, response.code, response.phrase, where)
        return finished

    @staticmethod
    def _check_status(body, code, phrase, where):
        if not 200 <= code < 300:
            raise HttpBackendError("%s: answered %d %s: %s" % (
                where, code, phrase.decode("latin-1", "replace"), _quote(body)))
        return body

    def _failed(self, failure, where):
        if failure.check(HttpBackendError, CancelledError):
            return failure
        if _cancelled(failure):
            # Cancelled by the caller (the shim's time limit for the call): it stays a
            # cancellation, so that the shim counts the call as timed out.
            raise CancelledError()
        raise HttpBackendError("%s: %s: %s" % (
            where, failure.type.__name__, failure.getErrorMessage()))


    @staticmethod
    def _bind_result(body, where):
        """
        The bind result in C{bind_port}'s answer: C{{}} for an empty body or C{{}}.
        """
        if not body.strip():
            return {}
        try:
            answer = json.loads(body.decode("utf-8"))
        except ValueError as e:
            raise HttpBackendError("%s: the answer is not JSON (%s): %s"
                                   % (where, e, _quote(body))) from None
        if not isinstance(answer, dict):
            raise HttpBackendError(
                "%s: the answer is JSON %s, not an object with vif_type and "
                "vif_details (or {} to reject)" % (where, type(answer).__name__))
        if not answer:
            return {}
        vif_type = answer.get("vif_type")
        if not isinstance(vif_type, str) or not vif_type:
            raise HttpBackendError(
                "%s: the answer's vif_type is %r, not a non-empty string (answer {} "
                "to reject the port)" % (where, vif_type))
        details = answer.get("vif_details", {})
        if details is None:
            details = {}
        if not isinstance(details, dict):
            raise HttpBackendError("%s: the answer's vif_details is %s, not an object"
                                   % (where, type(details).__name__))
        return {"vif_type": vif_type, "vif_details": details}

    # -- context sent with a port

    @staticmethod
    def _vpn_context(uuid, model):
        """
        The VPNPort of port C{uuid}, its VpnInstance and that instance's route targets
        (those the model has), as the request fields C{vpn_port}, C{vpn_instance} and
        C{afconfigs}.
        """
        bindings = model.bindings_of_port(uuid)
        vpn_port = next(iter(bindings.values()), None)
        vpn_id = model.vpn_of_port(uuid)
        vpn = model.services.get(vpn_id) if vpn_id else None
        afconfigs = {}
        if vpn is not None:
            for name in model.route_targets_of(vpn):
                afconfig = model.route_targets.get(name)
                if afconfig is not None:
                    afconfigs[name] = dict(afconfig)
        return {
            "vpn_port": _plain(vpn_port),
            "vpn_instance": _plain(vpn),
            "afconfigs": afconfigs,
        }

    # -- IBackend

    def bind_port(self, uuid, model, changes):
        """
        POST C{{"callback": "bind_port", "uuid", "changes", "port", "vpn_port",
        "vpn_instance", "afconfigs"}}; the answer is the bind result, C{{}} (or an
        empty body) rejecting the port.
        """
        body = {
            "callback": "bind_port",
            "uuid": uuid,
            "changes": _changes(changes),
            "port": _plain(model.ports.get(uuid)),
        }
        body.update(self._vpn_context(uuid, model))
        return self.post("bind_port", "port %s" % (uuid,), body, self._bind_result)

    def _notify(self, callback, about, body):
        return self.post(callback, about, body, _nothing)

    def unbind_port(self, uuid, model, changes):
        """
        POST C{{"callback": "unbind_port", "uuid", "changes", "port"}}.
        """
        return self._notify("unbind_port", "port %s" % (uuid,), {
            "callback": "unbind_port", "uuid": uuid, "changes": _changes(changes),
            "port": _plain(model.ports.get(uuid)),
        })

    def modify_port(self, uuid, model, changes):
        """
        POST C{{"callback": "modify_port", "uuid", "changes", "port"}}.
        """
        return self._notify("modify_port", "port %s" % (uuid,), {
            "callback": "modify_port", "uuid": uuid, "changes": _changes(changes),
            "port": _plain(model.ports.get(uuid)),
        })

    def delete_port(self, uuid, model, port):
        """
        POST C{{"callback": "delete_port", "uuid", "port"}}, C{port} being the deleted
        port as it last was.
        """
        return self._notify("delete_port", "port %s" % (uuid,), {
            "callback": "delete_port", "uuid": uuid, "port": _plain(port),
        })

    def modify_service(self, uuid, model, changes):
        """
        POST C{{"callback": "modify_service", "uuid", "changes", "service"}},
        C{service} being the VpnInstance as it is now.
        """
        return self._notify("modify_service", "VPN %s" % (uuid,), {
            "callback": "modify_service", "uuid": uuid, "changes": _changes(changes),
            "service": _plain(model.services.get(uuid)),
        })

    def delete_service(self, uuid, model, service):
        """
        POST C{{"callback": "delete_service", "uuid", "service"}}, C{service} being the
        deleted VpnInstance as it last was.
        """
        return self._notify("delete_service", "VPN %s" % (uuid,), {
            "callback": "delete_service", "uuid": uuid, "service": _plain(service),
        })

    def modify_service_binding(self, uuid, model, prev_binding):
        """
        POST C{{"callback": "modify_service_binding", "uuid", "prev_binding", "port",
        "vpn_port", "vpn_instance", "afconfigs"}}; C{prev_binding} is C{{}} for a new
        VPNPort.
        """
        body = {
            "callback": "modify_service_binding", "uuid": uuid,
            "prev_binding": _plain(prev_binding) or {},
            "port": _plain(model.ports.get(uuid)),
        }
        body.update(self._vpn_context(uuid, model))
        return self._notify("modify_service_binding", "port %s" % (uuid,), body)

    def delete_service_binding(self, model, prev_binding):
        """
        POST C{{"callback": "delete_service_binding", "uuid", "prev_binding"}},
        C{uuid} being the port's (C{prev_binding["id"]}).
        """
        uuid = prev_binding.get("id")
        return self._notify("delete_service_binding", "port %s" % (uuid,), {
            "callback": "delete_service_binding", "uuid": uuid,
            "prev_binding": _plain(prev_binding),
        })


#: The plugin that makes C{backend = http} find L{HttpBackend}.
http = BackendPlugin("http", HttpBackend)
