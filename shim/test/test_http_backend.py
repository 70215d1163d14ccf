"""
The C{http} backend against a real web server started in the test, and end to end
with a real etcd and a shim that binds through it.
"""

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from shim import keys
from shim.backends import load_backend
from shim.config import ConfigError, load_config
from shim.etcd import EtcdClient
from shim.interfaces import IBackend
from shim.model import Changes, Model, Port, decode
from shim.plugins.http import HttpBackend, HttpBackendError, parse_options
from shim.portstate import BOUND
from shim.proton import ProtonClient
from shim.service import ShimService
from shim.test.etcdserver import EtcdServer
from shim.test.support import write_config

VIF = {"vif_type": "vhostuser", "vif_details": {"sock": "/run/vhu/p1.sock"}}


class VendorService(Resource):
    """
    A vendor's web service: records each request's decoded JSON body and answers with
    C{answer(body)}, a C{(status code, body bytes)} pair, or a Deferred firing with one.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []
        self.content_types = []
        self.answer = lambda body: (200, b"")

    def render_POST(self, request):
        body = json.loads(request.content.read())
        self.requests.append(body)
        self.content_types.append(request.getHeader(b"content-type"))
        answer = self.answer(body)
        if isinstance(answer, Deferred):
            answer.addCallback(self._finish, request)
            return NOT_DONE_YET
        code, data = answer
        request.setResponseCode(code)
        return data

    def _finish(self, answer, request):
        code, data = answer
        request.setResponseCode(code)
        request.write(data)
        request.finish()

    def callbacks(self):
        return [r["callback"] for r in self.requests]


def json_answer(obj, code=200):
    return lambda body: (code, json.dumps(obj).encode("utf-8"))


def make(table, name, attrs, revision=1):
    return decode(table, json.dumps(attrs).encode("utf-8"), revision)


def sample_model():
    """
    A model with port p1 in VPN vpn-1, whose IPv4 family lists two route targets, one
    of them unknown to the model.
    """
    model = Model()
    model.put(keys.VPN_AFCONFIG, "100:1", make(
        keys.VPN_AFCONFIG, "100:1", {"vrf_rt_value": "100:1", "vrf_rt_type": "both"}))
    model.put(keys.VPN_INSTANCE, "vpn-1", make(
        keys.VPN_INSTANCE, "vpn-1",
        {"id": "vpn-1", "ipv4_family": "100:1, 100:9", "ipv6_family": None}))
    model.put(keys.VPN_PORT, "p1", make(
        keys.VPN_PORT, "p1", {"id": "p1", "vpn_instance": "vpn-1"}))
    model.put(keys.PORT, "p1", make(
        keys.PORT, "p1", {"id": "p1", "host_id": "compute1", "device_id": "vm1"}))
    return model


class ServerTestCase(TestCase):
    """
    A vendor service listening on a free loopback port, and an http backend posting
    to it.
    """

    def setUp(self):
        self.vendor = VendorService()
        self.listening = reactor.listenTCP(0, Site(self.vendor), interface="127.0.0.1")
        self.addCleanup(self.listening.stopListening)
        self.url = "http://127.0.0.1:%d/shim" % (self.listening.getHost().port,)
        self.backend = self.make_backend()

    def make_backend(self, **options):
        options.setdefault("url", self.url)
        backend = HttpBackend(options)
        self.addCleanup(backend.close)
        return backend


class OptionTests(TestCase):
    """
    The C{[backend]} options are checked in the constructor, naming the bad one.
    """

    def assertBad(self, options, *words):
        e = self.assertRaises(ValueError, HttpBackend, options)
        for word in words:
            self.assertIn(word, str(e))

    def test_url_missing(self):
        self.assertBad({}, "[backend] url", "missing")
        self.assertBad({"url": "  "}, "[backend] url", "missing")

    def test_url_bad(self):
        self.assertBad({"url": "ftp://example.com/x"}, "[backend] url", "http or https")
        self.assertBad({"url": "http:///x"}, "[backend] url", "no host")
        self.assertBad({"url": "http://h:99999/x"}, "[backend] url", "port")

    def test_timeout_bad(self):
        for text in ("soon", "0", "-1", "nan", "inf"):
            self.assertBad({"url": "http://h/x", "timeout": text},
                           "[backend] timeout", repr(text))

    def test_unknown_option(self):
        self.assertBad({"url": "http://h/x", "uri": "http://h/y"},
                       "[backend] uri", "unknown", "url, timeout")

    def test_defaults(self):
        self.assertEqual(parse_options({"url": "https://h:8443/shim"}),
                         ("https://h:8443/shim", 5.0))
        self.assertEqual(parse_options({"url": "http://h/x", "timeout": "0.5"}),
                         ("http://h/x", 0.5))

    def test_load_backend_reports_the_option(self):
        """
        Through the configuration file, a missing url stops the shim at start-up with
        a message naming the file, the backend and the option.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, ["http://127.0.0.1:2379"], backend="http")
        e = self.assertRaises(ConfigError, load_backend, load_config(path))
        self.assertIn(path, str(e))
        self.assertIn("'http'", str(e))
        self.assertIn("[backend] url", str(e))


class BindTests(ServerTestCase):
    @inlineCallbacks
    def test_bind_accepted(self):
        """
        bind_port posts the port with its VPN context and answers the vendor's bind
        result, keeping vif_type and vif_details only.
        """
        answer = dict(VIF, extra="ignored")
        self.vendor.answer = json_answer(answer)
        model = sample_model()
        changes = Changes.between(None, model.ports["p1"])
        verifyObject(IBackend, self.backend)
        result = yield self.backend.bind_port("p1", model, changes)
        self.assertEqual(result, VIF)
        [request] = self.vendor.requests
        self.assertEqual(self.vendor.content_types, [b"application/json"])
        self.assertEqual(request["callback"], "bind_port")
        self.assertEqual(request["uuid"], "p1")
        self.assertEqual(request["port"]["host_id"], "compute1")
        self.assertEqual(request["changes"]["new"]["device_id"], "vm1")
        self.assertEqual(request["changes"]["prev"], {})
        self.assertEqual(request["vpn_port"], {"id": "p1", "vpn_instance": "vpn-1"})
        self.assertEqual(request["vpn_instance"]["id"], "vpn-1")
        self.assertEqual(list(request["afconfigs"]), ["100:1"])
        self.assertEqual(request["afconfigs"]["100:1"]["vrf_rt_type"], "both")

    @inlineCallbacks
    def test_bind_rejected(self):
        """
        C{{}} or an empty body rejects the bind.
        """
        model = sample_model()
        changes = Changes.between(None, model.ports["p1"])
        self.vendor.answer = json_answer({})
        result = yield self.backend.bind_port("p1", model, changes)
        self.assertEqual(result, {})
        self.vendor.answer = lambda body: (200, b"")
        result = yield self.backend.bind_port("p1", model, changes)
        self.assertEqual(result, {})
        self.assertEqual(self.vendor.callbacks(), ["bind_port", "bind_port"])

    @inlineCallbacks
    def test_bind_without_vpn(self):
        """
        A port without a VPNPort is posted with null VPN context.
        """
        model = Model()
        model.put(keys.PORT, "p2", make(keys.PORT, "p2", {"id": "p2"}))
        self.vendor.answer = json_answer({})
        yield self.backend.bind_port("p2", model, Changes({}, {}))
        [request] = self.vendor.requests
        self.assertIsNone(request["vpn_port"])
        self.assertIsNone(request["vpn_instance"])
        self.assertEqual(request["afconfigs"], {})

    @inlineCallbacks
    def test_http_500(self):
        """
        A non-2xx answer fails the call with the URL, the callback, the status and the
        start of the body.
        """
        self.vendor.answer = lambda body: (500, b"controller on fire")
        model = sample_model()
        e = yield self.assertFailure(
            self.backend.bind_port("p1", model, Changes({}, {})), HttpBackendError)
        text = str(e)
        for word in (self.url, "bind_port", "port p1", "500", "controller on fire"):
            self.assertIn(word, text)

    @inlineCallbacks
    def test_bad_json(self):
        """
        An answer that is not JSON fails bind_port, quoting it.
        """
        self.vendor.answer = lambda body: (200, b"<html>proxy error</html>")
        e = yield self.assertFailure(
            self.backend.bind_port("p1", sample_model(), Changes({}, {})),
            HttpBackendError)
        self.assertIn("not JSON", str(e))
        self.assertIn("proxy error", str(e))

    @inlineCallbacks
    def test_bad_bind_results(self):
        """
        JSON that is not a usable bind result fails bind_port, saying what is wrong.
        """
        cases = [
            ([VIF], "not an object"),
            ({"vif_details": {}}, "vif_type"),
            ({"vif_type": ""}, "vif_type"),
            ({"vif_type": "ovs", "vif_details": "x"}, "vif_details"),
        ]
        for answer, words in cases:
            self.vendor.answer = json_answer(answer)
            e = yield self.assertFailure(
                self.backend.bind_port("p1", sample_model(), Changes({}, {})),
                HttpBackendError)
            self.assertIn(words, str(e))

    @inlineCallbacks
    def test_timeout(self):
        """
        A service that does not answer within [backend] timeout fails the call.
        """
        backend = self.make_backend(timeout="0.2")
        pending = []

        def hang(body):
            d = Deferred()
            pending.append(d)
            return d

        self.vendor.answer = hang
        e = yield self.assertFailure(
            backend.bind_port("p1", sample_model(), Changes({}, {})), HttpBackendError)
        self.assertIn("no answer within 0.2s", str(e))
        for d in pending:
            d.callback((200, b"{}"))

    @inlineCallbacks
    def test_cancelled(self):
        """
        Cancelling a call (as the shim does after [shim] backend_timeout) fails it with
        CancelledError, which the shim counts as a time-out.
        """
        received = Deferred()
        pending = []

        def hang(body):
            d = Deferred()
            pending.append(d)
            received.callback(None)
            return d

        self.vendor.answer = hang
        call = self.backend.bind_port("p1", sample_model(), Changes({}, {}))
        yield received
        call.cancel()
        yield self.assertFailure(call, CancelledError)
        for d in pending:
            d.callback((200, b"{}"))

    @inlineCallbacks
    def test_connection_refused(self):
        """
        A service that is not listening fails the call, naming the URL.
        """
        port = self.listening.getHost().port
        yield self.listening.stopListening()
        backend = self.make_backend(url="http://127.0.0.1:%d/shim" % (port,))
        e = yield self.assertFailure(
            backend.modify_port("p1", sample_model(), Changes({}, {})),
            HttpBackendError)
        self.assertIn("http://127.0.0.1:%d/shim" % (port,), str(e))
        self.assertIn("modify_port", str(e))


class NotificationTests(ServerTestCase):
    """
    The callbacks other than bind_port post what they received and ignore the body of
    a 2xx answer.
    """

    @inlineCallbacks
    def test_every_callback(self):
        model = sample_model()
        self.vendor.answer = lambda body: (204, b"")
        changes = Changes({"mtu": "9000"}, {"mtu": "1500"})
        gone = Port(id="p1", host_id="compute1")
        service = dict(model.vpn_instances["vpn-1"])
        binding = dict(model.vpn_ports["p1"])
        results = []
        for call in (
            lambda: self.backend.unbind_port("p1", model, changes),
            lambda: self.backend.modify_port("p1", model, changes),
            lambda: self.backend.delete_port("p1", model, gone),
            lambda: self.backend.modify_service("vpn-1", model, changes),
            lambda: self.backend.delete_service("vpn-1", model, service),
            lambda: self.backend.modify_service_binding("p1", model, {}),
            lambda: self.backend.delete_service_binding(model, binding),
        ):
            results.append((yield call()))
        self.assertEqual(results, [None] * 7)
        r = {request["callback"]: request for request in self.vendor.requests}
        self.assertEqual(self.vendor.callbacks(), [
            "unbind_port", "modify_port", "delete_port", "modify_service",
            "delete_service", "modify_service_binding", "delete_service_binding"])
        self.assertEqual(r["unbind_port"]["changes"],
                         {"new": {"mtu": "9000"}, "prev": {"mtu": "1500"}})
        self.assertEqual(r["modify_port"]["port"]["id"], "p1")
        self.assertEqual(r["delete_port"]["port"], {"id": "p1", "host_id": "compute1"})
        self.assertEqual(r["modify_service"]["uuid"], "vpn-1")
        self.assertEqual(r["modify_service"]["service"]["ipv4_family"], "100:1, 100:9")
        self.assertEqual(r["delete_service"]["service"], service)
        self.assertEqual(r["modify_service_binding"]["prev_binding"], {})
        self.assertEqual(r["modify_service_binding"]["vpn_instance"]["id"], "vpn-1")
        self.assertEqual(r["delete_service_binding"]["uuid"], "p1")
        self.assertEqual(r["delete_service_binding"]["prev_binding"], binding)

    @inlineCallbacks
    def test_failure(self):
        self.vendor.answer = lambda body: (404, b"no such path")
        e = yield self.assertFailure(
            self.backend.delete_service_binding(
                sample_model(), {"id": "p1", "vpn_instance": "vpn-1"}),
            HttpBackendError)
        self.assertIn("404", str(e))
        self.assertIn("delete_service_binding of port p1", str(e))


class EndToEndTests(ServerTestCase):
    """
    A shim with C{backend = http}, found by plugin name, binding a port in a real etcd
    through the vendor service.
    """

    timeout = 120

    @inlineCallbacks
    def test_bind_through_http(self):
        etcd = EtcdServer()
        etcd.start()
        self.addCleanup(etcd.cleanup)
        client = EtcdClient([etcd.client_url])
        self.addCleanup(client.close)
        proton = ProtonClient(client)

        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(
            directory, [etcd.client_url], backend="http",
            extra="\n[backend]\nurl = %s\ntimeout = 5\n" % (self.url,),
        )
        config = load_config(path)
        backend = load_backend(config)
        self.assertIsInstance(backend, HttpBackend)
        self.addCleanup(backend.close)

        def vendor(body):
            if body["callback"] == "bind_port" and body["vpn_instance"]:
                return (200, json.dumps(VIF).encode("utf-8"))
            return (200, b"{}")

        self.vendor.answer = vendor
        shim = ShimService(config, backend)
        shim.startService()
        self.addCleanup(shim.stopService)
        yield shim.when_ready()

        yield proton.create_route_target("100:1")
        yield proton.create_vpn("vpn-1", ipv4_family=["100:1"])
        yield proton.create_port("p1")
        yield proton.create_vpn_port("p1", "vpn-1")
        outcome = yield proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result, dict(VIF, controller="SimServer"))
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)
        binds = [r for r in self.vendor.requests if r["callback"] == "bind_port"]
        self.assertEqual(len(binds), 1)
        self.assertEqual(binds[0]["port"]["host_id"], "compute1")
        self.assertEqual(binds[0]["vpn_instance"]["id"], "vpn-1")
        self.assertIn("100:1", binds[0]["afconfigs"])
