"""
The shim's operations endpoint: metrics, liveness, readiness and a summary of the model.

L{make_site} serves, for one L{shim.service.ShimService}:

  - C{GET /metrics}: the service's Prometheus metrics, in the text exposition format;
  - C{GET /healthz}: C{200 ok} whenever the process answers at all (liveness);
  - C{GET /readyz}: C{200 ready} once the model is synchronised with etcd and the watch
    is live, C{503} with the reason otherwise (readiness);
  - C{GET /model}: a JSON summary: objects per type, ports per binding state, the last
    etcd revision applied, and readiness.

Every answer is computed from the service's state at request time, in the reactor thread,
without I/O, so a scrape never waits on etcd nor on the backend.  L{listen} starts serving
on a C{host:port} (as C{[metrics] listen} gives it) or a Twisted endpoint description.
"""

import json

from prometheus_client.exposition import choose_encoder
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from shim.metrics import port_states

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"

#: The paths served, with what each is for; the root page lists them.
PATHS = (
    ("metrics", "Prometheus metrics"),
    ("healthz", "liveness: 200 while the process runs"),
    ("readyz", "readiness: 200 when synchronised with etcd and watching, else 503"),
    ("model", "JSON summary of the model"),
)

#: Endpoint types that mark a string as a Twisted endpoint description rather than a
#: C{host:port}.
_ENDPOINT_TYPES = ("tcp:", "tcp6:", "unix:", "ssl:", "systemd:")


def _answer(request, code, content_type, body):
    """
    Set the status and headers of a plain answer that must never be cached.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    return body


class _ServiceResource(Resource):
    """
    A leaf resource answering C{GET} (and C{HEAD}) from a service's state.
    """

    isLeaf = True

    def __init__(self, service):
        Resource.__init__(self)
        self.service = service


class MetricsPage(_ServiceResource):
    """
    C{/metrics}: the service's registry in Prometheus' text format (version 0.0.4,
    from C{prometheus_client.generate_latest}), or in OpenMetrics when the scraper's
    C{Accept} header asks for it, with the matching content type.
    """

    def render_GET(self, request):
        accept = request.getHeader(b"accept") or b""
        encode, content_type = choose_encoder(accept.decode("latin-1"))
        body = encode(self.service.metrics.registry)
        return _answer(request, 200, content_type.encode("ascii"), body)


class HealthPage(_ServiceResource):
    """
    C{/healthz}: answering at all means the process and its reactor are alive.
    """

    def render_GET(self, request):
        return _answer(request, 200, _TEXT, b"ok\n")


class ReadyPage(_ServiceResource):
    """
    C{/readyz}: 200 while the service is ready, 503 with the reason while it is not
    (starting, synchronising, etcd unreachable, stopping).
    """

    def render_GET(self, request):
        service = self.service
        if service.ready:
            return _answer(request, 200, _TEXT, b"ready\n")
        reason = service.not_ready_reason or "not ready"
        return _answer(
            request, 503, _TEXT, ("not ready: %s\n" % (reason,)).encode("utf-8")
        )


class ModelPage(_ServiceResource):
    """
    C{/model}: what the shim holds, as JSON.
    """

    def render_GET(self, request):
        return _answer(
            request, 200, _JSON,
            json.dumps(model_summary(self.service), sort_keys=True).encode("utf-8")
            + b"\n",
        )


class IndexPage(Resource):
    """
    C{/}: the list of the paths served, for an operator poking with curl.
    """

    def render_GET(self, request):
        lines = ["/%s  %s" % (path, what) for path, what in PATHS]
        return _answer(request, 200, _TEXT, ("\n".join(lines) + "\n").encode("utf-8"))


def model_summary(service):
    """
    The summary C{/model} serves, as a dict.

    @return: C{{"objects": {table: count}, "ports": {binding state: count},
        "revision": int, "ready": bool, "not_ready_reason": str or None}}.
    """
    return {
        "objects": service.model.counts(),
        "ports": port_states(service.model),
        "revision": service.revision,
        "ready": bool(service.ready),
        "not_ready_reason": None if service.ready else service.not_ready_reason,
    }


class OperationsSite(Site):
    """
    A L{Site} that logs requests at debug level only: a Prometheus server scraping
    every few seconds would otherwise fill the shim's log.
    """

    noisy = False
    _log = Logger()

    def log(self, request):
        self._log.debug(
            "{method} {uri} from {client}: {code}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            client=getattr(request.getClientAddress(), "host", "?"),
            code=request.code,
        )


def make_site(service):
    """
    The web site serving the operations endpoints of C{service}.

    @param service: a L{shim.service.ShimService} (anything with its C{metrics},
        C{model}, C{revision}, C{ready} and C{not_ready_reason}).
    @rtype: L{twisted.web.server.Site}
    """
    root = IndexPage()
    root.putChild(b"", root)
    root.putChild(b"metrics", MetricsPage(service))
    root.putChild(b"healthz", HealthPage(service))
    root.putChild(b"readyz", ReadyPage(service))
    root.putChild(b"model", ModelPage(service))
    return OperationsSite(root)


def endpoint_for(where, reactor):
    """
    The server endpoint for C{where}.

    @param where: a C{(host, port)} tuple (as L{shim.config.ShimConfig.metrics_listen}
        holds it), a C{"host:port"} string (C{"[::1]:9100"} for IPv6), or a Twisted
        endpoint description such as C{"tcp:9100:interface=127.0.0.1"}.
    @raise ValueError: C{where} is none of those.
    """
    original = where
    if isinstance(where, str):
        if where.startswith(_ENDPOINT_TYPES) or "=" in where:
            return serverFromString(reactor, where)
        host, sep, port = where.rpartition(":")
        if not sep:
            raise ValueError(
                "listen address %r: expected host:port, such as 127.0.0.1:9100"
                % (original,)
            )
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        where = (host, port)
    try:
        host, port = where
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(
            "listen address %r: expected host:port, such as 127.0.0.1:9100"
            % (original,)
        ) from None
    if not 0 <= port < 65536:
        raise ValueError("listen address %r: port %d is not 0-65535" % (original, port))
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host or "")


def listen(service, where, reactor=None):
    """
    Serve L{make_site}C{(service)} at C{where} (see L{endpoint_for}).

    @return: a Deferred firing with the listening port (C{getHost().port} tells the
        port number chosen for port 0; C{stopListening()} stops serving).
    """
    if reactor is None:
        from twisted.internet import reactor
    return endpoint_for(where, reactor).listen(make_site(service))
