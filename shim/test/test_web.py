"""
The operations endpoint (L{shim.web}) of a real shim following a real etcd, scraped
over HTTP.
"""

import json
import time

from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.test.requesthelper import DummyRequest

from shim import __version__, web
from shim.metrics import group_of
from shim.portstate import BOUND, INUSE, UNBOUND
from shim.test.support import OperationsCase, sleep, wait_for


def samples(text):
    """
    The samples of a Prometheus text exposition, as C{{(name, sorted labels): value}}.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class _Overriding:
    """
    A service with some attributes replaced: the others are the wrapped one's.
    """

    def __init__(self, service, **attributes):
        self.__dict__.update(attributes)
        self._service = service

    def __getattr__(self, name):
        return getattr(self._service, name)


class ShimWebCase(OperationsCase):
    """
    L{OperationsCase} with helpers to read the operations endpoint.
    """

    @inlineCallbacks
    def setUp(self):
        yield OperationsCase.setUp(self)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    @inlineCallbacks
    def fetch(self, path):
        """
        GET C{path}: C{(status code, content type, body text)}.
        """
        response = yield self.http.get(self.url + path)
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
    def model(self):
        code, content_type, body = yield self.fetch("/model")
        self.assertEqual((code, content_type), (200, "application/json"))
        return json.loads(body)

    @inlineCallbacks
    def ready_code(self):
        code, _, _ = yield self.fetch("/readyz")
        return code == 200

    @inlineCallbacks
    def post(self, path, headers=None):
        """
        POST C{path} with the admin header (unless C{headers} says otherwise):
        C{(status code, body text)}.
        """
        if headers is None:
            headers = {b"X-Shim-Admin": [b"test"]}
        response = yield self.http.post(self.url + path, data=b"", headers=headers)
        body = yield response.text("utf-8")
        return response.code, body


class WebTests(ShimWebCase):
    """
    The operations endpoint of a shim with the default configuration.
    """

    @inlineCallbacks
    def test_openmetrics(self):
        """
        A scraper asking for OpenMetrics gets it, with its content type.
        """
        response = yield self.http.get(
            self.url + "/metrics",
            headers={b"Accept": [b"application/openmetrics-text; version=1.0.0"]})
        body = yield response.text("utf-8")
        content_type = response.headers.getRawHeaders(b"content-type")[0]
        self.assertEqual(response.code, 200)
        self.assertTrue(content_type.startswith(b"application/openmetrics-text"),
                        content_type)
        self.assertTrue(body.endswith("# EOF\n"), body[-40:])
        self.assertIn("shim_ready", body)

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
        self.assertEqual((code, body), (200, "ready\nrole: single\n"))
        summary = yield self.model()
        self.assertTrue(summary["ready"])
        self.assertIsNone(summary["not_ready_reason"])
        self.assertEqual(summary["role"], "single")

        self.etcd.stop()
        yield wait_for(lambda: self.ready_code().addCallback(lambda ok: not ok),
                       what="/readyz to answer 503 after etcd stopped")
        code, _, body = yield self.fetch("/readyz")
        self.assertEqual(code, 503)
        self.assertRegex(
            body, r"^not ready: (watch ended|etcd unavailable|synchronising).*\n"
                  r"role: single\n$")
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
        self.assertEqual(before[events], 0)
        self.assertEqual(before[binds], 0)
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
        self.assertEqual(scraped[binds], 0)

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
        self.assertEqual(summary["backend"]["calls"]["bind_port"], {"ok": 1})
        self.assertGreaterEqual(summary["backend"]["total"], 1)
        self.assertEqual(summary["backend"]["errors"], 0)
        self.assertIsInstance(summary["queue_depth"], int)

    @inlineCallbacks
    def test_info_and_role(self):
        """
        /metrics describes the shim in C{shim_info}, and a shim without election is
        the acting one: C{shim_leader} is 1.
        """
        scraped = yield self.metrics()
        infos = {labels: value for (name, labels), value in scraped.items()
                 if name == "shim_info"}
        self.assertEqual(list(infos.values()), [1])
        labels = dict(next(iter(infos)))
        self.assertEqual(labels["controller_name"], "SimServer")
        self.assertEqual(labels["version"], __version__)
        self.assertEqual(labels["api"], "v3")
        self.assertEqual(labels["api_model"], "net-l3vpn")
        self.assertEqual(labels["group"], group_of(["compute1", "compute2"]))
        self.assertEqual(scraped[("shim_leader", ())], 1)
        summary = yield self.model()
        self.assertEqual(summary["controller_name"], "SimServer")
        self.assertEqual(summary["version"], __version__)
        self.assertFalse(summary["admin"])
        # A service that keeps its last resync has had one: the start's.
        last = summary["last_resync"]
        if last is not None:
            self.assertEqual(last["cause"], "start")

    def test_model_reads_service_attributes(self):
        """
        /model reports the role, the last resync and the queue depth of a service
        that has them; /readyz its role.
        """
        service = _Overriding(
            self.shim, role="standby", last_resync=(time.time() - 5, "takeover"),
            queue_depth=7,
        )
        summary = web.model_summary(service)
        self.assertEqual(summary["role"], "standby")
        self.assertEqual(summary["last_resync"]["cause"], "takeover")
        self.assertGreaterEqual(summary["last_resync"]["ago"], 5)
        self.assertEqual(summary["queue_depth"], 7)
        service.queue_depth = lambda: 3
        self.assertEqual(web.model_summary(service)["queue_depth"], 3)
        request = DummyRequest([b""])
        body = web.ReadyPage(service).render_GET(request)
        self.assertEqual((request.responseCode, body), (200, b"ready\nrole: standby\n"))

    def test_leader_follows_role(self):
        """
        C{shim_leader} is read from the service's role when scraped: 1 for leader and
        single, 0 for standby.
        """
        service = _Overriding(self.shim, role="standby")
        web.make_site(service)
        registry = self.shim.metrics.registry
        self.assertEqual(registry.get_sample_value("shim_leader"), 0)
        service.role = "leader"
        self.assertEqual(registry.get_sample_value("shim_leader"), 1)
        service.role = "single"
        self.assertEqual(registry.get_sample_value("shim_leader"), 1)

    @inlineCallbacks
    def test_admin_off(self):
        """
        Without C{[metrics] admin = true} the admin actions are refused, saying how to
        allow them, and nothing is done.
        """
        resyncs = ("shim_resyncs_total", (("cause", "admin"),))
        for action in ("resync", "step-down"):
            code, body = yield self.post("/admin/" + action)
            self.assertEqual(code, 403)
            self.assertIn("[metrics] admin = true", body)
        scraped = yield self.metrics()
        self.assertEqual(scraped[resyncs], 0)

    @inlineCallbacks
    def test_index_and_unknown_paths(self):
        """
        / lists the endpoints; other paths are 404; only GET and HEAD are allowed.
        """
        code, _, body = yield self.fetch("/")
        self.assertEqual(code, 200)
        for path in ("/metrics", "/healthz", "/readyz", "/model", "/admin/resync",
                     "/admin/step-down"):
            self.assertIn(path, body)
        code, _, _ = yield self.fetch("/nothing")
        self.assertEqual(code, 404)
        response = yield self.http.post(self.url + "/healthz", data=b"")
        yield response.content()
        self.assertEqual(response.code, 405)
        response = yield self.http.head(self.url + "/readyz")
        yield response.content()
        self.assertIn(response.code, (200, 503))


class AdminTests(ShimWebCase):
    """
    The admin actions of a shim with C{[metrics] admin = true}.
    """

    extra = "[election]\nenabled = false\n[metrics]\nadmin = true\n"

    @inlineCallbacks
    def test_resync(self):
        """
        POST /admin/resync makes the shim read everything again, with cause admin, and
        it is ready again afterwards.
        """
        resyncs = ("shim_resyncs_total", (("cause", "admin"),))
        code, body = yield self.post("/admin/resync")
        self.assertEqual((code, body), (202, "resync requested\n"))
        yield wait_for(lambda: self.metrics().addCallback(lambda m: m[resyncs] == 1),
                       what="the admin resync to be counted")
        yield wait_for(self.ready_code, what="/readyz to answer 200 after the resync")
        summary = yield self.model()
        self.assertTrue(summary["admin"])

    @inlineCallbacks
    def test_needs_header(self):
        """
        A POST without the X-Shim-Admin header (a browser's cross-site form) is
        refused; a GET is told to POST.
        """
        code, body = yield self.post("/admin/resync", headers={})
        self.assertEqual(code, 403)
        self.assertIn("X-Shim-Admin", body)
        code, _, body = yield self.fetch("/admin/resync")
        self.assertEqual(code, 405)
        self.assertIn("POST", body)

    @inlineCallbacks
    def test_step_down_without_election(self):
        """
        A shim without election has no role to hand over: 409, saying so.
        """
        code, body = yield self.post("/admin/step-down")
        self.assertEqual(code, 409)
        self.assertIn("election is off", body)

    @inlineCallbacks
    def test_step_down(self):
        """
        The acting shim's C{step_down} is called, and the answer waits for it; a
        standby refuses.
        """
        stepped = []

        def step_down():
            stepped.append(True)
            self.shim.role = "standby"
            return sleep(0.01)

        self.shim.role = "leader"
        self.shim.step_down = step_down
        code, body = yield self.post("/admin/step-down")
        self.assertEqual((code, body), (200, "stepped down: now standby\n"))
        self.assertEqual(stepped, [True])
        code, body = yield self.post("/admin/step-down")
        self.assertEqual(code, 409)
        self.assertIn("standby", body)
        self.assertEqual(stepped, [True])

    @inlineCallbacks
    def test_step_down_fails(self):
        """
        A step-down that fails answers 500 with the error.
        """
        self.shim.role = "leader"
        self.shim.step_down = lambda: 1 / 0
        code, body = yield self.post("/admin/step-down")
        self.assertEqual(code, 500)
        self.assertIn("division", body)
        self.flushLoggedErrors(ZeroDivisionError)


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
