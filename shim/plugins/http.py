"""
The C{http} backend: forwards every callback to a vendor's web service as a JSON POST.

A vendor whose controller already has an HTTP API (or who prefers to write the backend
in another language) runs a small web service and points the shim at it::

    [shim]
    backend = http

    [backend]
    url = http://127.0.0.1:8181/shim
    timeout = 5

Each callback POSTs one JSON object to C{url}: C{callback} (its name), C{uuid} (the
object it is about) and what the callback received (see L{HttpBackend} and
C{docs/backends.md}).  A 2xx answer is success; anything else, a time-out, or (for
C{bind_port}) a body that is not the expected JSON fails the call with a message
naming the URL, the callback and what was wrong, which the shim logs and counts.

C{bind_port}'s answer is the bind result: a JSON object with C{vif_type} (a non-empty
string) and C{vif_details} (an object), or C{{}} (or an empty body) to reject the port.
"""

import json
from urllib.parse import urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from zope.interface import implementer

from shim.backends import BackendPlugin
from shim.interfaces import IBackend
from shim.model import split_list

#: Seconds one request may take, answer included, unless C{[backend] timeout} says.
DEFAULT_TIMEOUT = 5.0

#: Seconds an idle connection to the web service is kept open for the next call.
IDLE_CONNECTION_TIMEOUT = 30

#: The options C{[backend]} may hold for this backend.
OPTIONS = ("url", "timeout")

#: How much of a bad answer's body is quoted in an error message.
_QUOTE = 200


class HttpBackendError(Exception):
    """
    A call to the vendor's web service failed; the message says which call, where,
    and why.
    """


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
    @return: C{(url, timeout)}: the URL (a C{str}) and the timeout in seconds.
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
    text = (options.get("timeout") or "").strip()
    if not text:
        return url, DEFAULT_TIMEOUT
    try:
        timeout = float(text)
    except ValueError:
        timeout = float("nan")
    if not timeout > 0 or timeout == float("inf"):
        raise ValueError(
            "[backend] timeout: %r is not a number of seconds above 0" % (text,)
        )
    return url, timeout


@implementer(IBackend)
class HttpBackend:
    """
    A backend that POSTs each callback as JSON to a web service and waits for its
    answer.  Connections are kept open between calls.

    @ivar url: the web service's URL.
    @ivar timeout: seconds one request may take, answer included.
    """

    log = Logger()

    def __init__(self, options, reactor=None):
        """
        @param options: the C{[backend]} section: C{url} (required), C{timeout}
            (seconds, default 5).
        @param reactor: the reactor (the global one by default).
        @raise ValueError: an option is missing or wrong; the message names it.
        """
        self.url, self.timeout = parse_options(options)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        # Close idle connections before common servers do (twisted.web after 60 s,
        # many others after 60-75 s), so a POST rarely meets one the server is closing:
        # a POST is never retried automatically.
        self._pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self.log.info("http backend posting to {url}, timeout {timeout}s",
                      url=self.url, timeout=self.timeout)

    def close(self):
        """
        Close the connections kept open to the web service.

        @return: a Deferred firing once they are closed.
        """
        return self._pool.closeCachedConnections()

    # -- the exchange

    def post(self, callback, about, body):
        """
        POST one callback's JSON body and read the answer.

        @param callback: the callback's name, for error messages.
        @param about: what the call is about (C{"port <uuid>"}), for error messages.
        @param body: the JSON-serialisable request.
        @return: a Deferred firing with the raw response body (bytes) of a 2xx answer,
            or failing with L{HttpBackendError}.
        """
        where = "http backend: POST %s for %s of %s" % (self.url, callback, about)
        try:
            data = json.dumps(body, sort_keys=True).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise HttpBackendError("%s: cannot encode the request as JSON: %s"
                                   % (where, e)) from None
        d = self._http.post(
            self.url, data=data, allow_redirects=False,
            headers={b"Content-Type": [b"application/json"],
                     b"Accept": [b"application/json"]},
        )
        d.addCallback(self._read, where)
        d.addTimeout(self.timeout, self._reactor,
                     onTimeoutCancel=lambda result, timeout: self._timed_out(where))
        d.addErrback(self._failed, where)
        return d

    def _timed_out(self, where):
        raise HttpBackendError("%s: no answer within %gs ([backend] timeout)"
                               % (where, self.timeout))

    def _read(self, response, where):
        d = treq.content(response)
        d.addCallback(self._check_status, response.code, response.phrase, where)
        return d

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
            # Cancelled by the caller (the shim's backend_timeout): it stays a
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
        vpn_port = model.vpn_ports.get(uuid)
        vpn_id = vpn_port.get("vpn_instance") if vpn_port is not None else None
        vpn = model.vpn_instances.get(vpn_id) if vpn_id else None
        afconfigs = {}
        if vpn is not None:
            for family in ("ipv4_family", "ipv6_family"):
                for name in split_list(vpn.get(family)):
                    afconfig = model.vpn_afconfigs.get(name)
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
        where = "http backend: POST %s for bind_port of port %s" % (self.url, uuid)
        body = {
            "callback": "bind_port",
            "uuid": uuid,
            "changes": _changes(changes),
            "port": _plain(model.ports.get(uuid)),
        }
        body.update(self._vpn_context(uuid, model))
        d = self.post("bind_port", "port %s" % (uuid,), body)
        d.addCallback(self._bind_result, where)
        return d

    def _notify(self, callback, about, body):
        d = self.post(callback, about, body)
        d.addCallback(lambda _: None)
        return d

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
            "service": _plain(model.vpn_instances.get(uuid)),
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
