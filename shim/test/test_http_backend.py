"""
The C{http} backend against a real web server started in the test, and end to end
with a real etcd and a shim that binds through it.  Under load: the bound on requests
out at once, its queue, the cap on answers, and a burst with few file descriptors.
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from shim import keys
from shim.backends import load_backend
from shim.calls import BackendCaller
from shim.config import ConfigError, load_config
from shim.etcd import EtcdClient
from shim.interfaces import IBackend
from shim.metrics import Metrics
from shim.model import Changes, Model, Port, decode
from shim.plugins.http import (
    DEFAULT_MAX_IN_FLIGHT,
    HttpBackend,
    InFlightLimit,
    HttpBackendError,
    HttpBackendTimeout,
    HttpOptions,
    parse_options,
)
from shim.portstate import BOUND
from shim.proton import ProtonClient
from shim.service import ShimService
from shim.test.etcdserver import EtcdServer
from shim.test.support import write_config

VIF = {"vif_type": "vhostuser", "vif_details": {"sock": "/run/vhu/p1.sock"}}

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class VendorService(Resource):
    """
    A vendor's web service: records each request's decoded JSON body and answers with
    C{answer(body)}, a C{(status code, body bytes)} pair, or a Deferred firing with one
    (the answer is then sent chunked).

    @ivar open: requests received and not answered yet.
    @ivar most_open: the most requests open at once so far.
    @ivar clients: the client ports seen, one per connection.
    @ivar lost: the bodies of requests whose connection closed before the answer.
    @ivar on_lost: called with each such body.
    """

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []
        self.content_types = []
        self.answer = lambda body: (200, b"")
        self.open = 0
        self.most_open = 0
        self.clients = set()
        self.lost = []
        self.on_lost = lambda body: None

    def render_POST(self, request):
        body = json.loads(request.content.read())
        self.requests.append(body)
        self.content_types.append(request.getHeader(b"content-type"))
        self.clients.add(request.getClientAddress().port)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        gone = []
        request.notifyFinish().addCallbacks(
            self._closed, self._lost, errbackArgs=(body, gone))
        answer = self.answer(body)
        if isinstance(answer, Deferred):
            answer.addCallback(self._finish, request, gone)
            return NOT_DONE_YET
        code, data = answer
        request.setResponseCode(code)
        return data

    def _closed(self, _):
        self.open -= 1

    def _lost(self, failure, body, gone):
        self.open -= 1
        gone.append(True)
        self.lost.append(body)
        self.on_lost(body)

    def _finish(self, answer, request, gone):
        if gone:
            return
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

    def make_backend(self, clock=None, **options):
        options.setdefault("url", self.url)
        backend = HttpBackend(options, clock=clock)
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

    def test_counts_bad(self):
        for name in ("max_in_flight", "max_response_bytes"):
            for text in ("many", "0", "-1", "1.5", "1e3", "0x10"):
                self.assertBad({"url": "http://h/x", name: text},
                               "[backend] %s" % (name,), repr(text), "whole number")

    def test_unknown_option(self):
        self.assertBad({"url": "http://h/x", "uri": "http://h/y"},
                       "[backend] uri", "unknown",
                       "url, timeout, max_in_flight, max_response_bytes")

    def test_defaults(self):
        self.assertEqual(parse_options({"url": "https://h:8443/shim"}),
                         HttpOptions("https://h:8443/shim", 5.0, 64, 1024 * 1024))
        self.assertEqual(
            parse_options({"url": "http://h/x", "timeout": "0.5", "max_in_flight": "8",
                           "max_response_bytes": " 4096 "}),
            HttpOptions("http://h/x", 0.5, 8, 4096))
        self.assertEqual(DEFAULT_MAX_IN_FLIGHT, 64)

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

    def test_load_backend_reports_a_bad_count(self):
        """
        A bad max_in_flight stops the shim at start-up, naming the option and value.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(
            directory, ["http://127.0.0.1:2379"], backend="http",
            extra="\n[backend]\nurl = http://127.0.0.1:8181/shim\nmax_in_flight = 0\n")
        e = self.assertRaises(ConfigError, load_backend, load_config(path))
        self.assertIn(path, str(e))
        self.assertIn("[backend] max_in_flight: '0'", str(e))


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
        self.assertIsInstance(e, HttpBackendTimeout)
        self.assertIsInstance(e, TimeoutError)
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


class Held:
    """
    Answers the vendor service holds back until the test releases them, in arrival
    order; C{arrived(n)} fires once C{n} requests have come.
    """

    def __init__(self, vendor):
        self.vendor = vendor
        self.pending = []
        self._waits = []
        vendor.answer = self._hold

    def _hold(self, body):
        d = Deferred()
        self.pending.append(d)
        for n, wait in list(self._waits):
            if len(self.vendor.requests) >= n:
                self._waits.remove((n, wait))
                reactor.callLater(0, wait.callback, None)
        return d

    def arrived(self, n):
        wait = Deferred()
        if len(self.vendor.requests) >= n:
            wait.callback(None)
        else:
            self._waits.append((n, wait))
        return wait

    def release(self, answer=(200, json.dumps(VIF).encode("utf-8"))):
        """
        Answer the oldest held request.
        """
        self.pending.pop(0).callback(answer)

    def release_all(self):
        while self.pending:
            self.release()


def bind(backend, uuid, model=None):
    return backend.bind_port(uuid, model or sample_model(), Changes({}, {}))


class InFlightLimitTests(TestCase):
    """
    The queue itself, without a network.
    """

    def test_failing_at_once_down_a_long_queue(self):
        """
        Thousands of queued calls that fail as they start all fail in order, started
        by a loop, not by recursion.
        """
        limit = InFlightLimit(1)
        first = Deferred()
        limit.run(lambda: first)
        failed = []

        def start(n):
            raise ValueError(n)

        calls = [limit.run(start, n) for n in range(5000)]
        for call in calls:
            call.addErrback(lambda f: failed.append(f.value.args[0]))
        self.assertEqual(limit.waiting, 5000)
        first.callback(None)
        self.assertEqual(failed, list(range(5000)))
        self.assertEqual((limit.running, limit.waiting), (0, 0))

    def test_cancel_a_started_call_that_ignores_it(self):
        """
        Cancelling a started call whose Deferred does not go on at once (here: paused)
        fails the caller's Deferred at once; what comes later is dropped, not an
        error, and frees the place.
        """
        limit = InFlightLimit(1)
        first = Deferred()
        limit.run(lambda: first)
        late = Deferred()
        second = limit.run(lambda: late)
        first.callback(None)
        late.pause()
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(limit.running, 1)
        late.unpause()
        self.assertEqual((limit.running, limit.waiting), (0, 0))


class LoadTests(ServerTestCase):
    """
    At most [backend] max_in_flight requests out at once, the others queued in order;
    queued time is not the request's; cancelling frees the queue or the connection.
    """

    @inlineCallbacks
    def test_max_in_flight(self):
        """
        With max_in_flight = 3, twenty calls at once never have more than three
        requests open at the server, over at most three connections, and all succeed.
        """
        backend = self.make_backend(max_in_flight="3")
        total = 20
        held = []

        def answer(body):
            d = Deferred()
            held.append(d)
            # Answer once three are open (or the last ones have come), so that the
            # bound is reached each round.
            if len(held) == 3 or len(self.vendor.requests) == total:
                batch = held[:]
                del held[:]
                reactor.callLater(0, lambda: [
                    b.callback((200, json.dumps(VIF).encode("utf-8"))) for b in batch])
            return d

        self.vendor.answer = answer
        calls = [bind(backend, "p%d" % (i,)) for i in range(total)]
        self.assertEqual((backend.limit.running, backend.limit.waiting), (3, 17))
        results = yield gatherResults(calls)
        self.assertEqual(results, [VIF] * total)
        self.assertEqual(len(self.vendor.requests), total)
        self.assertEqual(self.vendor.most_open, 3)
        self.assertLessEqual(len(self.vendor.clients), 3)
        self.assertEqual((backend.limit.running, backend.limit.waiting), (0, 0))

    @inlineCallbacks
    def test_queue_order(self):
        """
        Queued calls are sent first come, first served.
        """
        backend = self.make_backend(max_in_flight="1")
        held = Held(self.vendor)
        names = ["p%d" % (i,) for i in range(6)]
        calls = [bind(backend, name) for name in names]
        for n in range(1, len(names) + 1):
            yield held.arrived(n)
            held.release()
        yield gatherResults(calls)
        self.assertEqual([r["uuid"] for r in self.vendor.requests], names)

    @inlineCallbacks
    def test_queued_time_is_not_the_requests(self):
        """
        A call queued for 0.9 s then answered 0.9 s after it was sent succeeds with
        [backend] timeout = 1: its time limit starts when its request is sent.
        """
        clock = Clock()
        backend = self.make_backend(clock=clock, max_in_flight="1", timeout="1")
        held = Held(self.vendor)
        first = bind(backend, "p1")
        second = bind(backend, "p2")
        outcomes = []
        second.addBoth(lambda result: outcomes.append(result) or result)
        yield held.arrived(1)
        clock.advance(0.9)
        held.release()
        self.assertEqual((yield first), VIF)
        yield held.arrived(2)
        clock.advance(0.9)
        self.assertEqual(outcomes, [])
        held.release()
        self.assertEqual((yield second), VIF)
        # The sent request's own time limit still applies.
        third = bind(backend, "p3")
        yield held.arrived(3)
        clock.advance(1)
        e = yield self.assertFailure(third, HttpBackendTimeout)
        self.assertIn("for bind_port of port p3: no answer within 1s", str(e))

    @inlineCallbacks
    def test_request_timeout_is_a_timeout(self):
        """
        Through the shim's BackendCaller, the backend's own request time-out is
        counted with outcome "timeout", not "error".
        """
        clock = Clock()
        backend = self.make_backend(clock=clock, timeout="2")
        metrics = Metrics()
        caller = BackendCaller(backend, 30, clock, metrics)
        held = Held(self.vendor)
        call = caller.call("bind_port", "port p1", "p1", sample_model(), Changes({}, {}))
        yield held.arrived(1)
        clock.advance(2)
        self.assertEqual((yield call), (False, None))

        def count(outcome):
            return metrics.registry.get_sample_value(
                "shim_backend_calls_total",
                {"callback": "bind_port", "outcome": outcome}) or 0

        self.assertEqual((count("timeout"), count("error")), (1, 0))

    @inlineCallbacks
    def test_caller_timeout_while_queued(self):
        """
        The caller's time limit counts the queued time: a call still queued when it
        runs out is cancelled, counted as a time-out, and never sent.
        """
        clock = Clock()
        backend = self.make_backend(clock=clock, max_in_flight="1", timeout="5")
        metrics = Metrics()
        caller = BackendCaller(backend, 2.5, clock, metrics)
        held = Held(self.vendor)
        first = bind(backend, "p1")
        queued = caller.call("bind_port", "port p2", "p2", sample_model(),
                             Changes({}, {}))
        yield held.arrived(1)
        clock.advance(2.5)
        self.assertEqual((yield queued), (False, None))
        self.assertEqual(metrics.registry.get_sample_value(
            "shim_backend_calls_total", {"callback": "bind_port", "outcome": "timeout"}),
            1)
        self.assertEqual(backend.limit.waiting, 0)
        held.release()
        yield first
        after = bind(backend, "p3")
        yield held.arrived(2)
        held.release()
        yield after
        self.assertEqual([r["uuid"] for r in self.vendor.requests], ["p1", "p3"])

    @inlineCallbacks
    def test_cancelled_queued_call_never_sent(self):
        """
        A queued call cancelled leaves the queue: it fails with CancelledError and its
        request is never sent.
        """
        backend = self.make_backend(max_in_flight="1")
        held = Held(self.vendor)
        first = bind(backend, "p1")
        queued = bind(backend, "p2")
        last = bind(backend, "p3")
        yield held.arrived(1)
        self.assertEqual(backend.limit.waiting, 2)
        queued.cancel()
        yield self.assertFailure(queued, CancelledError)
        self.assertEqual(backend.limit.waiting, 1)
        held.release()
        yield first
        yield held.arrived(2)
        held.release()
        yield last
        self.assertEqual([r["uuid"] for r in self.vendor.requests], ["p1", "p3"])

    @inlineCallbacks
    def test_cancelled_call_in_flight_closes_its_connection(self):
        """
        A call cancelled while its request is out fails with CancelledError, closes
        its connection (the server sees it go), and frees its place for the next call.
        """
        backend = self.make_backend(max_in_flight="1")
        held = Held(self.vendor)
        lost = Deferred()
        self.vendor.on_lost = lost.callback
        call = bind(backend, "p1")
        queued = bind(backend, "p2")
        yield held.arrived(1)
        call.cancel()
        yield self.assertFailure(call, CancelledError)
        body = yield lost
        self.assertEqual(body["uuid"], "p1")
        yield held.arrived(2)
        held.pending.pop(0)
        held.release()
        self.assertEqual((yield queued), VIF)

    @inlineCallbacks
    def test_unencodable_body(self):
        """
        A body that is not JSON-serialisable fails its call (encoded when its turn
        comes), and the next call still goes out.
        """
        e = yield self.assertFailure(
            self.backend.post("bind_port", "port p1", {"x": object()}), HttpBackendError)
        self.assertIn("bind_port of port p1: cannot encode the request as JSON", str(e))
        self.assertEqual(self.backend.limit.running, 0)
        self.vendor.answer = json_answer(VIF)
        self.assertEqual((yield bind(self.backend, "p2")), VIF)

    @inlineCallbacks
    def test_oversized_answer(self):
        """
        An answer larger than [backend] max_response_bytes fails the call, naming the
        callback, the port and the option, whether its length is announced or not
        (chunked); the backend then goes on working.
        """
        backend = self.make_backend(max_response_bytes="100")
        big = json.dumps(dict(VIF, padding="x" * 200)).encode("utf-8")
        self.vendor.answer = lambda body: (200, big)
        e = yield self.assertFailure(bind(backend, "p1"), HttpBackendError)
        for words in ("bind_port of port p1", "(%d bytes)" % (len(big),),
                      "larger than the 100 bytes allowed",
                      "[backend] max_response_bytes"):
            self.assertIn(words, str(e))

        held = Held(self.vendor)
        call = backend.modify_port("p2", sample_model(), Changes({}, {}))
        yield held.arrived(2)
        held.release((200, big))
        e = yield self.assertFailure(call, HttpBackendError)
        for words in ("modify_port of port p2", "larger than the 100 bytes allowed",
                      "[backend] max_response_bytes"):
            self.assertIn(words, str(e))

        self.vendor.answer = json_answer(VIF)
        self.assertEqual((yield bind(backend, "p3")), VIF)


class _Child(ProcessProtocol):
    def __init__(self):
        self.out = []
        self.err = []
        self.ended = Deferred()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


def burst_with_few_files(url, count, files):
    """
    Run in a child process: lower the open-file limit to C{files}, make C{count}
    bind_port calls at once through an http backend with default options, and print
    one JSON line: the limit in force, how many succeeded, and the first errors.
    """
    import resource

    from twisted.internet import task

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, hard))

    @inlineCallbacks
    def main(reactor):
        backend = HttpBackend({"url": url})
        model = sample_model()
        calls = [backend.bind_port("p%d" % (i,), model, Changes({}, {}))
                 for i in range(count)]
        results = yield DeferredList(calls, consumeErrors=True)
        yield backend.close()
        print(json.dumps({
            "files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "ok": sum(1 for ok, value in results if ok and value == VIF),
            "errors": [value.getErrorMessage() for ok, value in results if not ok][:5],
        }))

    task.react(main)


class FileLimitTests(ServerTestCase):
    """
    A burst far larger than the process's file limit completes: the backend opens at
    most max_in_flight connections.
    """

    timeout = 180

    @inlineCallbacks
    def test_burst_with_256_files(self):
        count = 2000
        self.vendor.answer = json_answer(VIF)
        child = _Child()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        code = ("from shim.test.test_http_backend import burst_with_few_files; "
                "burst_with_few_files(%r, %d, 256)" % (self.url, count))
        reactor.spawnProcess(child, sys.executable, [sys.executable, "-c", code],
                             env=env, path=REPO)
        exit_code = yield child.ended
        err = b"".join(child.err).decode("utf-8", "replace")
        self.assertEqual(exit_code, 0, err)
        outcome = json.loads(b"".join(child.out).decode("utf-8").splitlines()[-1])
        self.assertEqual(outcome["files"], 256)
        self.assertEqual(outcome["errors"], [])
        self.assertEqual(outcome["ok"], count)
        self.assertEqual(len(self.vendor.requests), count)
        self.assertLessEqual(len(self.vendor.clients), DEFAULT_MAX_IN_FLIGHT)


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
        # The result written holds the vendor's answer and the controller's name
        # (other fields it may carry are the service's business, not the backend's).
        self.assertEqual(
            {name: outcome.result.get(name) for name in ("vif_type", "vif_details",
                                                         "controller")},
            dict(VIF, controller="SimServer"))
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)
        binds = [r for r in self.vendor.requests if r["callback"] == "bind_port"]
        self.assertEqual(len(binds), 1)
        self.assertEqual(binds[0]["port"]["host_id"], "compute1")
        self.assertEqual(binds[0]["vpn_instance"]["id"], "vpn-1")
        self.assertIn("100:1", binds[0]["afconfigs"])
