"""
The shim's Prometheus metrics.

One L{Metrics} per service, each with its own registry, so that several services (in
tests, or two shims in one process) never share counters.  Label children used on the
event path are looked up once and cached: a labelled counter costs a lock and a dict
look-up per call otherwise.

Every labelled counter starts at 0 for each label value this module knows (the tuples
below): an alert on C{increase()} or C{rate()} of a series that does not exist yet never
fires, and the first error would otherwise be invisible to it.  A label value outside
these tuples still works; it just appears when first counted.

The gauges the service keeps (L{Metrics.leader}, L{Metrics.queue_depth},
L{Metrics.queue_oldest}, L{Metrics.writes_pending}) can be set either way: C{set()} as
things change, or C{set_function()} once, to be read at scrape time.
"""

import hashlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from shim.portstate import BOUND, INUSE, UNBOUND

#: The backend's callbacks (L{shim.interfaces.IBackend}).
CALLBACKS = (
    "bind_port", "unbind_port", "modify_port", "delete_port",
    "modify_service", "delete_service",
    "modify_service_binding", "delete_service_binding",
)

#: How a backend callback ended (L{shim.calls}).
CALL_OUTCOMES = ("ok", "rejected", "error", "timeout")

#: What a failed piece of work retried with backoff was: a callback, a result write,
#: or C{internal}: a defect (an exception in the shim itself).
RETRIED = CALLBACKS + ("write_result", "internal")

#: The object types and the kinds of event applied to them.
TABLES = ("ProtonBasePort", "VPNPort", "VpnInstance", "VpnAfConfig",
          "Port", "Interface", "VpnService", "VpnBinding")
ACTIONS = ("PUT", "DELETE")

#: Why the service read everything from etcd again.
RESYNC_CAUSES = ("start", "periodic", "compacted", "cluster_changed", "admin", "takeover",
                 "too_large")

#: Why a watch ended (L{shim.etcd.watch}), before it was restarted.
WATCH_END_REASONS = (
    "stopped", "connection_lost", "compacted", "cancelled", "idle", "auth", "too_large",
)

#: Why a key or value under C{/proton/} was skipped.
BAD_INPUT_REASONS = ("bad_key", "bad_value", "other_api")

#: Writes of bind results (L{shim.results}), and how each attempt ended.
RESULT_OPERATIONS = ("publish", "publish_again", "clear", "remove", "precreate")
#: ok: written; skipped: etcd held it already (or it no longer named us); conflict:
#: a failed compare, read again; error: etcd failed, retried with backoff.
WRITE_OUTCOMES = ("ok", "skipped", "conflict", "error")

#: The outcomes of a campaign for the election of the acting shim.
ELECTION_OUTCOMES = ("won", "lost")

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class Metrics:
    """
    Counters, gauges and histograms of one shim service.
    """

    def __init__(self, registry=None):
        """
        @param registry: the registry to register with; a new one by default.
        """
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "shim_events_applied", "Events applied to the model, by object type and action.",
            ["table", "action"], registry=r,
        )
        self.callbacks = Counter(
            "shim_backend_calls", "Backend callbacks, by name and outcome "
            "(ok, rejected, error, timeout).", ["callback", "outcome"], registry=r,
        )
        self.callback_latency = Histogram(
            "shim_backend_call_seconds", "Backend callback latency.", ["callback"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.bind_latency = Histogram(
            "shim_bind_seconds", "Bind round trip inside the shim: bind request seen to "
            "bind result written.", buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.result_writes = Counter(
            "shim_result_writes", "Writes of bind results to etcd, by operation and "
            "outcome.", ["operation", "outcome"], registry=r,
        )
        self.resyncs = Counter(
            "shim_resyncs", "Full resynchronisations with etcd, by cause.", ["cause"],
            registry=r,
        )
        self.reconnects = Counter(
            "shim_watch_restarts", "Watches restarted, by the reason the previous one "
            "ended.", ["reason"], registry=r,
        )
        self.bad_values = Counter(
            "shim_bad_input", "Keys and values skipped as unusable, by reason.",
            ["reason"], registry=r,
        )
        self.revision = Gauge(
            "shim_revision", "The etcd revision applied last.", registry=r,
        )
        self.ready = Gauge(
            "shim_ready", "1 while the model is synchronised and the watch is live.",
            registry=r,
        )
        self.info = Gauge(
            "shim_info", "Always 1: what this shim is, in its labels (group: a short "
            "hash of the sorted host list; shims of one controller name and group "
            "elect one acting shim).",
            ["version", "controller_name", "group", "api", "api_model"], registry=r,
        )
        self.leader = Gauge(
            "shim_leader", "1 while this shim is the acting one of its group (always, "
            "when election is off), 0 while it is a standby or not acting.",
            registry=r,
        )
        self.elections = Counter(
            "shim_elections", "Elections of the acting shim this shim took part in, by "
            "outcome (won: it became the acting shim; lost: it stopped being it).",
            ["outcome"], registry=r,
        )
        self.queue_depth = Gauge(
            "shim_workqueue_depth", "Objects with work waiting or running on their "
            "queue.", registry=r,
        )
        self.queue_oldest = Gauge(
            "shim_workqueue_oldest_seconds", "Age of the oldest object waiting for its "
            "work to be done (0 when none waits).", registry=r,
        )
        self.retries = Counter(
            "shim_retries", "Failed work requeued with backoff, by what failed: a "
            "backend callback or write_result.", ["callback"], registry=r,
        )
        self.writes_pending = Gauge(
            "shim_result_writes_pending", "Bind results waiting to be written to etcd, "
            "retrying ones included.", registry=r,
        )
        #: C{shim_info}'s labels once L{describe_shim} is called, else C{None}.
        self.description = None
        self.described = False
        self._children = {}
        self._start_at_zero()

    def _start_at_zero(self):
        """
        Create the children of every labelled counter (and the callback latency
        histogram) for each known label value, so that they are exported at 0.
        """
        for callback in CALLBACKS:
            for outcome in CALL_OUTCOMES:
                self.child(self.callbacks, callback, outcome)
            self.child(self.callback_latency, callback)
        for table in TABLES:
            for action in ACTIONS:
                self.child(self.events, table, action)
        for operation in RESULT_OPERATIONS:
            for outcome in WRITE_OUTCOMES:
                self.child(self.result_writes, operation, outcome)
        for cause in RESYNC_CAUSES:
            self.child(self.resyncs, cause)
        for reason in WATCH_END_REASONS:
            self.child(self.reconnects, reason)
        for reason in BAD_INPUT_REASONS:
            self.child(self.bad_values, reason)
        for outcome in ELECTION_OUTCOMES:
            self.child(self.elections, outcome)
        for callback in RETRIED:
            self.child(self.retries, callback)

    def describe_shim(self, version, controller_name, api, api_model, group=""):
        """
        Export C{shim_info} with these labels (once: a later call replaces the
        labels).  Dashboards and alerts join on it to name a shim's controller.

        @param version: the shim's version (L{shim.__version__}).
        @param controller_name: C{[shim] controller_name}.
        @param api: the etcd API used: C{"v3"} or C{"v2"}.
        @param api_model: C{[shim] api_model}.
        @param group: a short name of the shim's election group among shims of the same
            controller name; L{group_of} a host list gives one.
        """
        self.info.clear()
        self.info.labels(version, controller_name, group, api, api_model).set(1)
        self.description = {
            "version": version, "controller_name": controller_name, "group": group,
            "api": api, "api_model": api_model,
        }
        self.described = True

    def child(self, metric, *labels):
        """
        The (cached) child of C{metric} for C{labels}.
        """
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def watch_model(self, model):
        """
        Export the number of ports per binding state and objects per type of C{model},
        computed when scraped.
        """
        self.registry.register(_ModelCollector(model))


def group_of(host_list):
    """
    A short, stable name of the group of shims serving C{host_list}: the first 12 hex
    digits of the SHA-256 of the sorted host names joined by commas (C{"*"} for an
    empty list, which serves every host).
    """
    text = ",".join(sorted(host_list)) or "*"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class _ModelCollector:
    """
    Reads the model at scrape time, so the event path keeps no gauges up to date.
    """

    def __init__(self, model):
        self._model = model

    def describe(self):
        return []

    def collect(self):
        objects = GaugeMetricFamily(
            "shim_objects", "Objects in the model, by type.", labels=["table"]
        )
        for table, n in self._model.counts().items():
            objects.add_metric([table], n)
        yield objects
        ports = GaugeMetricFamily(
            "shim_ports", "Ports in the model, by binding state.", labels=["state"]
        )
        for state, n in sorted(port_states(self._model).items()):
            ports.add_metric([state], n)
        yield ports


def port_states(model):
    """
    The number of ports per binding state.
    """
    counts = {UNBOUND: 0, BOUND: 0, INUSE: 0}
    for port in model.ports.values():
        counts[port.binding] += 1
    return counts
