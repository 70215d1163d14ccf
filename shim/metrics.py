"""
The shim's Prometheus metrics.

One L{Metrics} per service, each with its own registry, so that several services (in
tests, or two shims in one process) never share counters.  Label children used on the
event path are looked up once and cached: a labelled counter costs a lock and a dict
look-up per call otherwise.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from shim.portstate import BOUND, INUSE, UNBOUND

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class Metrics:
    """
    Counters, gauges and histograms of one shim service.
    """

    def __init__(self, registry=None):
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
        self._children = {}

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
