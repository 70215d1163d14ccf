"""
The shim's operations endpoint: metrics, liveness, readiness and a summary of the model.

L{make_site} serves, for one L{shim.service.ShimService}:

  - C{GET /metrics}: the service's Prometheus metrics, in the text exposition format;
  - C{GET /healthz}: C{200 ok} whenever the process answers at all (liveness);
  - C{GET /readyz}: C{200 ready} once the model is synchronised with etcd and the watch
    is live, C{503} with the reason otherwise (readiness); a second line gives the
    shim's role: C{leader}, C{standby}, or C{single} when election is off;
  - C{GET /model}: a JSON summary (L{model_summary}): role, readiness, objects per type,
    ports per binding state, the last etcd revision applied, the last resync, the
    work-queue depth and the backend's calls and errors, for C{shimctl status};
  - C{POST /admin/resync} and C{POST /admin/step-down}: operator actions, refused
    (403) unless C{[metrics] admin = true}, and only with an C{X-Shim-Admin} header,
    which a browser cannot send to another site without asking it first.

Every C{GET} is answered from the service's state at request time, in the reactor thread,
without I/O, so a scrape never waits on etcd nor on the backend.  L{listen} starts serving
on a C{host:port} (as C{[metrics] listen} gives it) or a Twisted endpoint description.
"""

import json
import time

from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from shim import __version__
from shim.metrics import group_of, port_states

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"

#: The paths served, with what each is for; the root page lists them.
PATHS = (
    ("metrics", "Prometheus metrics"),
    ("healthz", "liveness: 200 while the process runs"),
    ("readyz", "readiness: 200 when synchronised with etcd and watching, else 503"),
    ("model", "JSON summary of the model, the role and the work in progress"),
    ("admin/resync", "POST: read everything from etcd again ([metrics] admin = true)"),
    ("admin/step-down",
     "POST: hand the acting role to a standby ([metrics] admin = true)"),
)

#: The header an admin request must carry (any value): a web page in an operator's
#: browser cannot add it to a cross-site POST without a CORS preflight, which this
#: server never grants.
ADMIN_HEADER = b"x-shim-admin"

#: The roles C{/readyz} and C{/model} report.
ROLES = ("leader", "standby", "single")

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
        role = "role: %s\n" % (role_of(service),)
        if service.ready:
            return _answer(request, 200, _TEXT, ("ready\n" + role).encode("utf-8"))
        reason = service.not_ready_reason or "not ready"
        return _answer(
            request, 503, _TEXT,
            ("not ready: %s\n%s" % (reason, role)).encode("utf-8"),
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


class AdminAction(_ServiceResource):
    """
    C{POST /admin/<action>}: an operator's action on the running shim.  Refused with
    403 unless C{[metrics] admin = true} and the request carries L{ADMIN_HEADER}.
    """

    _log = Logger()

    def __init__(self, service, action):
        _ServiceResource.__init__(self, service)
        self.action = action

    def render_GET(self, request):
        request.setHeader(b"allow", b"POST")
        return _answer(
            request, 405, _TEXT,
            b"use POST (shimctl %s --url ...)\n" % (self.action.encode("ascii"),),
        )

    def render_POST(self, request):
        service = self.service
        config = getattr(service, "config", None)
        if not getattr(config, "metrics_admin", False):
            return _answer(
                request, 403, _TEXT,
                b"admin actions are off: set [metrics] admin = true in the shim's "
                b"configuration to allow them\n",
            )
        if request.getHeader(ADMIN_HEADER) is None:
            return _answer(
                request, 403, _TEXT,
                b"admin requests must carry the X-Shim-Admin header (shimctl sends "
                b"it)\n",
            )
        if self.action == "resync":
            self._log.info("resync requested by {client} through /admin/resync",
                           client=_client(request))
            service.request_resync("admin")
            return _answer(request, 202, _TEXT, b"resync requested\n")
        step_down = getattr(service, "step_down", None)
        if step_down is None or role_of(service) == "single":
            return _answer(
                request, 409, _TEXT,
                b"election is off: this shim acts alone, there is no role to hand "
                b"over\n",
            )
        if role_of(service) != "leader":
            return _answer(
                request, 409, _TEXT,
                ("this shim is %s, not the acting shim: nothing to hand over\n"
                 % (role_of(service),)).encode("utf-8"),
            )
        self._log.info("step-down requested by {client} through /admin/step-down",
                       client=_client(request))
        d = maybeDeferred(step_down)

        def done(_):
            _finish(request, 200, b"stepped down: now %s\n"
                    % (role_of(service).encode("utf-8"),))

        def failed(failure):
            self._log.failure("stepping down failed", failure)
            _finish(request, 500, ("stepping down failed: %s\n"
                                   % (failure.getErrorMessage(),)).encode("utf-8"))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


def _client(request):
    """
    The address a request came from, for the log.
    """
    return getattr(request.getClientAddress(), "host", "?")


def _finish(request, code, body):
    """
    Answer a request left open with C{NOT_DONE_YET}, unless the client went away.
    """
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.write(_answer(request, code, _TEXT, body))
    request.finish()


class AdminPage(Resource):
    """
    C{/admin}: the list of actions; each is a child answering C{POST}.
    """

    def render_GET(self, request):
        lines = ["/%s  %s" % (path, what) for path, what in PATHS
                 if path.startswith("admin/")]
        return _answer(request, 200, _TEXT, ("\n".join(lines) + "\n").encode("utf-8"))


class IndexPage(Resource):
    """
    C{/}: the list of the paths served, for an operator poking with curl.
    """

    def render_GET(self, request):
        lines = ["/%s  %s" % (path, what) for path, what in PATHS]
        return _answer(request, 200, _TEXT, ("\n".join(lines) + "\n").encode("utf-8"))


def role_of(service):
    """
    The service's role: C{"leader"} (the acting shim of its group), C{"standby"}, or
    C{"single"} when election is off (a service without a C{role} is that).
    """
    return getattr(service, "role", None) or "single"


def _queue_depth(service):
    """
    The number of objects with work waiting or running: the service's C{queue_depth}
    when it has one (a number or a callable), else the size of its serial queues.
    """
    depth = getattr(service, "queue_depth", None)
    if callable(depth):
        depth = depth()
    if depth is None:
        queues = getattr(service, "queues", None)
        try:
            depth = len(queues) if queues is not None else 0
        except TypeError:
            depth = 0
    return int(depth)


def _last_resync(service):
    """
    C{{"time": epoch seconds, "ago": seconds since, "cause": str}} of the service's
    last resync (its C{last_resync}, a C{(time, cause)} pair), or C{None}.
    """
    last = getattr(service, "last_resync", None)
    if not last:
        return None
    at, cause = last
    return {"time": at, "ago": max(0.0, time.time() - at), "cause": cause}


def backend_calls(metrics):
    """
    The backend calls counted in C{metrics}, as C{{callback: {outcome: count}}}, only
    the counts above zero.
    """
    calls = {}
    for family in metrics.callbacks.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                labels = sample.labels
                calls.setdefault(labels["callback"], {})[labels["outcome"]] = int(
                    sample.value
                )
    return calls


def model_summary(service):
    """
    The summary C{/model} serves, as a dict.

    @return: C{{"role": "leader" | "standby" | "single", "ready": bool,
        "not_ready_reason": str or None, "revision": int,
        "objects": {table: count}, "ports": {binding state: count},
        "last_resync": {"time", "ago", "cause"} or None, "queue_depth": int,
        "backend": {"calls": {callback: {outcome: count}}, "total": int,
        "errors": int}, "controller_name": str, "version": str, "admin": bool}};
        C{errors} counts the calls that failed or timed out.
    """
    calls = backend_calls(service.metrics)
    config = getattr(service, "config", None)
    return {
        "role": role_of(service),
        "ready": bool(service.ready),
        "not_ready_reason": None if service.ready else service.not_ready_reason,
        "revision": service.revision,
        "objects": service.model.counts(),
        "ports": port_states(service.model),
        "last_resync": _last_resync(service),
        "queue_depth": _queue_depth(service),
        "backend": {
            "calls": calls,
            "total": sum(n for outcomes in calls.values() for n in outcomes.values()),
            "errors": sum(
                outcomes.get("error", 0) + outcomes.get("timeout", 0)
                for outcomes in calls.values()
            ),
        },
        "controller_name": getattr(config, "controller_name", None),
        "version": __version__,
        "admin": bool(getattr(config, "metrics_admin", False)),
    }


def describe(service):
    """
    Export C{shim_info} for C{service} from its configuration, unless the service
    did already (L{shim.metrics.Metrics.describe_shim}); add the group (from the host
    list) when it left it out.
    """
    metrics = service.metrics
    config = getattr(service, "config", None)
    if config is None or not hasattr(metrics, "describe_shim"):
        return
    group = group_of(getattr(config, "host_list", ()))
    described = getattr(metrics, "description", None)
    if described is None:
        metrics.describe_shim(
            __version__, config.controller_name, getattr(config, "etcd_api", "v3"),
            getattr(config, "api_model", "net-l3vpn"), group=group,
        )
    elif not described.get("group"):
        # Described without its group: the alerts on acting shims need it.
        metrics.describe_shim(**dict(described, group=group))


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


def export_role(service):
    """
    Make C{shim_leader} read the service's role at scrape time: 1 for C{leader} and
    C{single} (election off: the shim acts alone), 0 for C{standby}.  The role is what
    C{/readyz} reports, so the two never disagree.
    """
    leader = getattr(service.metrics, "leader", None)
    if leader is not None:
        leader.set_function(
            lambda: 1.0 if role_of(service) in ("leader", "single") else 0.0
        )


def make_site(service):
    """
    The web site serving the operations endpoints of C{service}.

    @param service: a L{shim.service.ShimService} (anything with its C{metrics},
        C{model}, C{revision}, C{ready} and C{not_ready_reason}; its C{config},
        C{role}, C{last_resync}, C{queue_depth}, C{request_resync} and C{step_down}
        are used when it has them).
    @rtype: L{twisted.web.server.Site}
    """
    describe(service)
    export_role(service)
    root = IndexPage()
    root.putChild(b"", root)
    root.putChild(b"metrics", MetricsPage(service))
    root.putChild(b"healthz", HealthPage(service))
    root.putChild(b"readyz", ReadyPage(service))
    root.putChild(b"model", ModelPage(service))
    admin = AdminPage()
    admin.putChild(b"", admin)
    admin.putChild(b"resync", AdminAction(service, "resync"))
    admin.putChild(b"step-down", AdminAction(service, "step-down"))
    root.putChild(b"admin", admin)
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
