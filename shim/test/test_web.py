"""
The operations endpoint (L{shim.web}) of a real shim following a real etcd, scraped
over HTTP.
"""

import json

from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from shim import web
from shim.portstate import BOUND, INUSE, UNBOUND
from shim.test.etcdserver import start_etcd
from shim.test.support import ShimRunner, proton_side, wait_for


def samples(text):
    """
    The samples of a Prometheus text exposition, as C{{(name, sorted labels): value}}.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class WebTests(TestCase):
    """
    A fresh etcd, a shim, and its operations endpoint on a free loopback port.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self)
        self.client, self.proton = proton_side(self, self.etcd)
        self.shim = yield ShimRunner(self, [self.etcd.client_url]).start()
        port = yield web.listen(self.shim, ("127.0.0.1", 0), reactor)
        self.addCleanup(port.stopListening)
        self.base = "http://127.0.0.1:%d" % (port.getHost().port,)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    @inlineCallbacks
    def fetch(self, path):
        """
        GET C{path}: C{(status code, content type, body text)}.
        """
        response = yield self.http.get(self.base + path)
        body = yield response.text("utf-8")
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        return response.code, content_type.decode("ascii"), body

    @inlineCallbacks
    def metrics(self):
        code, content_type, body = yield self.fetch("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"),
                        content_type)
        return samples(body)

    @inlineCallbacks
    def test_openmetrics(self):
        """
        A scraper asking for OpenMetrics gets it, with its content type.
        """
        response = yield self.http.get(
            self.base + "/metrics",
            headers={b"Accept": [b"application/openmetrics-text; version=1.0.0"]})
        body = yield response.text("utf-8")
        content_type = response.headers.getRawHeaders(b"content-type")[0]
        self.assertEqual(response.code, 200)
        self.assertTrue(content_type.startswith(b"application/openmetrics-text"),
                        content_type)
        self.assertTrue(body.endswith("# EOF\n"), body[-40:])
        self.assertIn("shim_ready", body)

    @inlineCallbacks
    def model(self):
        code, content_type, body = yield self.fetch("/model")
        self.assertEqual((code, content_type), (200, "application/json"))
        return json.loads(body)

    @inlineCallbacks
    def ready_code(self):
        code, _, _ = yield self.fetch("/readyz")
        return code == 200

    @inlineCallbacks
    def test_health_and_readiness(self):
        """
        /healthz answers 200; /readyz answers 200 once the shim is ready, and 503 with
        the reason once etcd is gone, while /healthz still answers 200.
        """
        code, content_type, body = yield self.fetch("/healthz")
        self.assertEqual((code, body), (200, "ok\n"))
        self.assertTrue(content_type.startswith("text/plain"))
        yield wait_for(self.ready_code, what="/readyz to answer 200")
        code, _, body = yield self.fetch("/readyz")
        self.assertEqual((code, body), (200, "ready\n"))
        summary = yield self.model()
        self.assertTrue(summary["ready"])
        self.assertIsNone(summary["not_ready_reason"])

        self.etcd.stop()
        yield wait_for(lambda: self.ready_code().addCallback(lambda ok: not ok),
                       what="/readyz to answer 503 after etcd stopped")
        code, _, body = yield self.fetch("/readyz")
        self.assertEqual(code, 503)
        self.assertRegex(
            body, r"^not ready: (watch ended|etcd unavailable|synchronising)")
        summary = yield self.model()
        self.assertFalse(summary["ready"])
        self.assertTrue(summary["not_ready_reason"])
        code, _, _ = yield self.fetch("/healthz")
        self.assertEqual(code, 200)
        scraped = yield self.metrics()
        self.assertEqual(scraped[("shim_ready", ())], 0)

    @inlineCallbacks
    def test_metrics_and_model_follow_events(self):
        """
        Writing a VPN, ports and binds moves the event, callback, object and port
        numbers that /metrics and /model report.
        """
        before = yield self.metrics()
        self.assertEqual(before[("shim_ready", ())], 1)
        events = ("shim_events_applied_total",
                  (("action", "PUT"), ("table", "ProtonBasePort")))
        binds = ("shim_backend_calls_total",
                 (("callback", "bind_port"), ("outcome", "ok")))
        self.assertNotIn(events, before)
        self.assertNotIn(binds, before)
        summary = yield self.model()
        self.assertEqual(summary["objects"], {
            "ProtonBasePort": 0, "VPNPort": 0, "VpnInstance": 0, "VpnAfConfig": 0})
        self.assertEqual(summary["ports"], {BOUND: 0, INUSE: 0, UNBOUND: 0})

        yield self.proton.create_route_target("100:1")
        yield self.proton.create_vpn("vpn-1", ipv4_family=["100:1"])
        for uuid in ("p1", "p2", "p3"):
            yield self.proton.create_port(uuid)
            yield self.proton.create_vpn_port(uuid, "vpn-1")
        status = yield self.client.status()
        yield wait_for(lambda: self.shim.revision >= status.revision,
                       what="the shim to apply the writes")
        scraped = yield self.metrics()
        self.assertEqual(scraped[events], 3)
        self.assertNotIn(binds, scraped)

        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.proton.bind("p2", "compute9", "vm2", timeout=0.1)
        status = yield self.client.status()
        yield wait_for(lambda: self.shim.revision >= status.revision
                       and self.shim.model.ports["p2"].binding == INUSE,
                       what="the shim to apply the binds")

        scraped = yield self.metrics()
        self.assertEqual(scraped[events], 5)
        self.assertEqual(scraped[binds], 1)
        self.assertEqual(
            scraped[("shim_backend_call_seconds_count", (("callback", "bind_port"),))],
            1)
        self.assertEqual(scraped[("shim_ports", (("state", BOUND),))], 1)
        self.assertEqual(scraped[("shim_ports", (("state", INUSE),))], 1)
        self.assertEqual(scraped[("shim_objects", (("table", "VPNPort"),))], 3)
        self.assertIn(("shim_revision", ()), scraped)

        summary = yield self.model()
        self.assertEqual(summary["objects"], {
            "ProtonBasePort": 3, "VPNPort": 3, "VpnInstance": 1, "VpnAfConfig": 1})
        self.assertEqual(summary["ports"], {BOUND: 1, INUSE: 1, UNBOUND: 1})
        self.assertEqual(summary["revision"], self.shim.revision)
        self.assertGreaterEqual(summary["revision"], status.revision)
        self.assertTrue(summary["ready"])

    @inlineCallbacks
    def test_index_and_unknown_paths(self):
        """
        / lists the endpoints; other paths are 404; only GET and HEAD are allowed.
        """
        code, _, body = yield self.fetch("/")
        self.assertEqual(code, 200)
        for path in ("/metrics", "/healthz", "/readyz", "/model"):
            self.assertIn(path, body)
        code, _, _ = yield self.fetch("/nothing")
        self.assertEqual(code, 404)
        response = yield self.http.post(self.base + "/healthz", data=b"")
        yield response.content()
        self.assertEqual(response.code, 405)
        response = yield self.http.head(self.base + "/readyz")
        yield response.content()
        self.assertIn(response.code, (200, 503))


class EndpointTests(TestCase):
    """
    Where L{web.listen} listens: C{host:port} strings and tuples, endpoint
    descriptions, and clear errors for anything else.
    """

    def test_forms(self):
        from twisted.internet.endpoints import (
            TCP4ServerEndpoint,
            TCP6ServerEndpoint,
        )

        e = web.endpoint_for("127.0.0.1:9100", reactor)
        self.assertIsInstance(e, TCP4ServerEndpoint)
        self.assertEqual((e._interface, e._port), ("127.0.0.1", 9100))
        e = web.endpoint_for("[::1]:9100", reactor)
        self.assertIsInstance(e, TCP6ServerEndpoint)
        self.assertEqual((e._interface, e._port), ("::1", 9100))
        e = web.endpoint_for(("0.0.0.0", 9100), reactor)
        self.assertIsInstance(e, TCP4ServerEndpoint)
        e = web.endpoint_for("tcp:9100:interface=127.0.0.1", reactor)
        self.assertIsInstance(e, TCP4ServerEndpoint)
        self.assertEqual((e._interface, e._port), ("127.0.0.1", 9100))

    def test_bad(self):
        for where in ("9100", "host:port", "127.0.0.1:70000", ("h",)):
            e = self.assertRaises(ValueError, web.endpoint_for, where, reactor)
            self.assertIn(repr(where), str(e))
