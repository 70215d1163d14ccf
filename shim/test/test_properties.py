"""
Property tests of L{shim.service.ShimService}: random sequences of watch events, good
and bad, fed straight into C{service.apply}, with no etcd.

The service is built with an in-memory etcd (L{shim.test.fakeetcd.FakeEtcd}) for its bind
results and a L{Clock} as its reactor, and is never started: each event goes to
C{service.apply(kind, key, value, revision)} with increasing revisions, as the watch would
deliver it.  The backend either answers at once or answers every call with a Deferred that
the test fires later, in a random order across objects; the fake etcd can likewise fail
calls and hold them.  Once everything has settled, the invariants below must hold; each is
a sentence of PROTOCOL.md or of L{shim.portstate}:

  1. the model holds, per key, the last valid value written (a bad key or value is
     skipped and leaves the previous valid value), except that a port Bound by us carries
     the C{vif_type}/C{vif_details} of its bind result, and a port that is not Bound
     carries at most proton's own (or none);
  2. a port that is not a bind request is Unbound, a bind request for another host is
     InUse, and a bind request for one of our hosts is Bound or Unbound; with a backend
     that binds like C{dummy} (it accepts a port whose VPNPort names a known VPN), a bind
     request on our host whose VPNPort names a VPN in the model is Bound, unless the test
     made one of that port's binds fail;
  3. per port, accepted C{bind_port} calls and C{unbind_port}/C{delete_port} calls
     alternate, starting with a bind: a Bound port has had exactly one accepted bind
     since it was last unbound or deleted, any other port none;
  4. C{modify_port} and the service-binding callbacks are only called for a Bound port,
     C{modify_service}/C{delete_service} only for a VPN that a Bound port uses;
  5. etcd holds our bind result for each Bound port, and for every other port either
     nothing or C{{}};
  6. nothing is logged as an error but what the test provoked, and every bad key or
     value is counted.

Each test tries C{SHIM_PROPERTY_EXAMPLES} examples (120 by default; the file then runs in
seconds).  Set it higher in the environment to search longer.
"""

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from shim import keys
from shim.config import ShimConfig
from shim.etcd import ConnectionFailed
from shim.interfaces import IBackend
from shim.model import MAX_VALUE_SIZE
from shim.portstate import BOUND, INUSE, UNBOUND
from shim.results import encode_result
from shim.service import DELETE, PUT, ShimService
from shim.test.fakeetcd import FakeEtcd

CONTROLLER = "PropShim"
OUR_HOSTS = ("compute1", "compute2")
BACKEND_TIMEOUT = 10.0

CONFIG = ShimConfig(
    path="<property test>",
    controller_name=CONTROLLER,
    host_list=OUR_HOSTS,
    etcd_endpoints=("http://127.0.0.1:1",),
    backend_timeout=BACKEND_TIMEOUT,
    resync_interval=0,
)

VIF_DETAILS = {"port_filter": False, "bridge_name": "br-gluon"}
VIF = {"vif_type": "ovs", "vif_details": VIF_DETAILS}
OUR_RESULT = encode_result(VIF, CONTROLLER)

PORTS = ("p1", "p2", "p3")
VPN_PORT_NAMES = PORTS + ("p4",)
VPNS = ("v1", "v2")
ROUTE_TARGETS = ("100:1", "100:10", "200 1")
HOSTS = ("compute1", "compute1", "compute2", "compute9", "", None)
DEVICES = ("vm1", "vm1", "vm2", "", None)

NAMES = {
    keys.PORT: PORTS,
    keys.VPN_PORT: VPN_PORT_NAMES,
    keys.VPN_INSTANCE: VPNS,
    keys.VPN_AFCONFIG: tuple(keys.afconfig_name(rt) for rt in ROUTE_TARGETS),
}

HUGE = b'{"name": "' + b"x" * MAX_VALUE_SIZE + b'"}'

#: Values that no table accepts.
BAD_VALUES = (
    b"", b"{", b"not json", b"[1, 2]", b"null", b'"a string"', b"42",
    b"\xff\xfe{}", b'{"name": "\xff"}', HUGE,
)

#: Keys that are not /proton/net-l3vpn/<table>/<name>: malformed, or another API's.
BAD_KEYS = (
    "/proton/net-l3vpn/ProtonBasePort",
    "/proton/net-l3vpn/ProtonBasePort/p1/extra",
    "/proton/net-l3vpn/ProtonBasePort/",
    "/proton//ProtonBasePort/p1",
    "/proton",
    "/other/net-l3vpn/ProtonBasePort/p1",
)
OTHER_API_KEYS = (
    "/proton/net-l2vpn/ProtonBasePort/p1",
    "/proton/net-l3vpn/UnknownTable/p1",
    "/proton/net-l3vpn/vpnport/p1",
)


class InjectedFault(Exception):
    """
    A backend failure that the test asked for.
    """


# -- strategies ------------------------------------------------------------------

def _json(obj):
    return json.dumps(obj).encode("utf-8")


extra_values = st.one_of(
    st.none(), st.text(max_size=6), st.integers(-5, 5), st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
)


@st.composite
def port_rows(draw, uuid):
    row = {
        "id": uuid,
        "name": draw(st.sampled_from(("a", "b"))),
        "host_id": draw(st.sampled_from(HOSTS)),
        "device_id": draw(st.sampled_from(DEVICES)),
        "status": draw(st.sampled_from(("ACTIVE", "DOWN"))),
        "vif_type": draw(st.sampled_from((None, "ovs", "vhostuser"))),
        "vif_details": draw(st.sampled_from((None, '{"x": "1"}'))),
    }
    row.update(draw(st.dictionaries(st.sampled_from(("mtu", "zone", "profile")),
                                    extra_values, max_size=2)))
    return row


def vpn_port_rows(uuid):
    return st.fixed_dictionaries({
        "id": st.just(uuid),
        "vpn_instance": st.sampled_from(VPNS + VPNS + ("v9", "", None)),
    })


def _families():
    return st.one_of(
        st.none(),
        st.lists(st.sampled_from(ROUTE_TARGETS), max_size=3).map(
            lambda rts: " , ".join(keys.afconfig_name(rt) for rt in rts)),
    )


def vpn_rows(vpn):
    return st.fixed_dictionaries({
        "id": st.just(vpn),
        "ipv4_family": _families(),
        "ipv6_family": _families(),
        "description": st.text(max_size=4),
    })


def afconfig_rows(name):
    return st.fixed_dictionaries({
        "vrf_rt_value": st.just(name.replace("_", " ")),
        "vrf_rt_type": st.sampled_from(
            ("export_extcommunity", "import_extcommunity", "both")),
        "import_route_policy": st.none() | st.text(max_size=3),
    })


ROWS = {
    keys.PORT: port_rows,
    keys.VPN_PORT: vpn_port_rows,
    keys.VPN_INSTANCE: vpn_rows,
    keys.VPN_AFCONFIG: afconfig_rows,
}

#: Per table, attributes the shim needs as strings, and values of the wrong type.
WRONG_TYPES = {
    keys.PORT: ("host_id", "device_id"),
    keys.VPN_PORT: ("vpn_instance",),
    keys.VPN_INSTANCE: ("ipv4_family", "ipv6_family"),
}


@st.composite
def bad_values(draw, table, name):
    """
    A value the shim must skip for an object of C{table}.
    """
    if table in WRONG_TYPES and draw(st.booleans()):
        row = draw(ROWS[table](name))
        row[draw(st.sampled_from(WRONG_TYPES[table]))] = draw(
            st.sampled_from((5, True, ["compute1"], {"a": "b"}, 1.5)))
        return _json(row)
    return draw(st.sampled_from(BAD_VALUES))


@st.composite
def events(draw):
    """
    One watch event: C{("event", kind, key, value, verdict)}, where C{verdict} is
    C{"ok"}, C{"bad_key"}, C{"bad_value"} or C{"other_api"}.
    """
    choice = draw(st.integers(0, 24))
    if choice == 0:
        kind = draw(st.sampled_from((PUT, DELETE)))
        value = _json({"id": "p1"}) if kind == PUT else None
        return ("event", kind, draw(st.sampled_from(BAD_KEYS)), value, "bad_key")
    if choice == 1:
        kind = draw(st.sampled_from((PUT, DELETE)))
        value = _json({"id": "p1"}) if kind == PUT else None
        return ("event", kind, draw(st.sampled_from(OTHER_API_KEYS)), value, "other_api")
    table = draw(st.sampled_from(
        (keys.PORT, keys.PORT, keys.PORT, keys.VPN_PORT, keys.VPN_PORT,
         keys.VPN_INSTANCE, keys.VPN_AFCONFIG)))
    name = draw(st.sampled_from(NAMES[table]))
    key = keys.proton_key(table, name)
    if choice <= 3:
        return ("event", DELETE, key, None, "ok")
    if choice <= 5:
        return ("event", PUT, key, draw(bad_values(table, name)), "bad_value")
    return ("event", PUT, key, _json(draw(ROWS[table](name))), "ok")


faults = st.tuples(
    st.just("fault"), st.sampled_from(PORTS),
    st.sampled_from(("raise", "fail", "timeout", "not_a_dict")),
)
etcd_faults = st.tuples(st.just("etcd_fault"), st.integers(1, 3))
ticks = st.tuples(st.just("tick"), st.sampled_from((0.5, 3.0, BACKEND_TIMEOUT + 1)))


def _setup():
    """
    The events that create route targets, VPNs and VPN bindings for every port, so
    that binds can succeed and the callbacks of bound ports are reached.
    """
    created = []
    for rt, name in zip(ROUTE_TARGETS, NAMES[keys.VPN_AFCONFIG]):
        created.append((keys.VPN_AFCONFIG, name, {
            "vrf_rt_value": rt, "vrf_rt_type": "both", "import_route_policy": None}))
    for vpn, family in zip(VPNS, ("100:1", "100:10,200_1")):
        created.append((keys.VPN_INSTANCE, vpn, {
            "id": vpn, "ipv4_family": family, "ipv6_family": None,
            "description": ""}))
    for i, uuid in enumerate(PORTS):
        created.append((keys.VPN_PORT, uuid, {
            "id": uuid, "vpn_instance": VPNS[i % len(VPNS)]}))
    return [
        ("event", PUT, keys.proton_key(table, name), _json(row), "ok")
        for table, name, row in created
    ]


SETUP = _setup()


@st.composite
def one_operation(draw, with_faults, asynchronous):
    """
    A watch event mostly; sometimes (as asked) a fault, a clock tick or a settle.
    """
    n = draw(st.sampled_from(range(24)))
    if asynchronous and n == 0:
        return draw(ticks)
    if asynchronous and n == 1:
        return ("settle",)
    if with_faults and n in (2, 3):
        return draw(faults)
    if with_faults and n == 4:
        return draw(etcd_faults)
    return draw(events())


def operations(with_faults, asynchronous):
    """
    A list of operations: watch events, and (as asked) backend faults, etcd faults,
    clock ticks and points where everything settles and the invariants are checked.
    Most lists start from VPNs and VPN bindings that let binds succeed.
    """
    prefix = st.sampled_from(([], SETUP, SETUP, SETUP))
    body = st.lists(one_operation(with_faults, asynchronous), min_size=10, max_size=60)
    return st.tuples(prefix, body).map(lambda parts: parts[0] + parts[1])


# -- the backend -------------------------------------------------------------------

class Call:
    """
    One backend call: what it was, about which object, and how it ended from the
    shim's point of view (C{"pending"}, C{"accepted"}, C{"rejected"}, C{"failed"}).
    """

    def __init__(self, callback, about):
        self.callback = callback
        self.about = about
        self.outcome = "pending"

    def __repr__(self):
        return "%s(%s):%s" % (self.callback, self.about, self.outcome)


@implementer(IBackend)
class PropertyBackend:
    """
    A backend that binds like C{dummy} (it accepts a port whose VPNPort names a VPN in
    the model), checks at each call that the shim had a reason to make it, and either
    answers at once or holds every answer in a Deferred that the test fires.

    @ivar calls: every L{Call}, in the order made.
    @ivar held: C{(Call, Deferred, answer)} of the calls not answered yet.
    @ivar faults: port uuid to the fault modes that its next calls get, in order.
    @ivar faulted_binds: ports one of whose binds the test made fail.
    @ivar violations: calls the shim had no reason to make, described.
    """

    def __init__(self, asynchronous):
        self.asynchronous = asynchronous
        self.calls = []
        self.held = []
        self.faults = {}
        self.faulted_binds = set()
        self.violations = []

    # The eight callbacks.

    def bind_port(self, uuid, model, changes):
        binding = model.vpn_ports.get(uuid)
        vpn = binding.get("vpn_instance") if binding is not None else None
        if vpn and vpn in model.vpn_instances:
            answer = {"vif_type": VIF["vif_type"], "vif_details": dict(VIF_DETAILS)}
        else:
            answer = {}
        return self._answer("bind_port", uuid, answer)

    def unbind_port(self, uuid, model, changes):
        return self._answer("unbind_port", uuid, None)

    def modify_port(self, uuid, model, changes):
        self._require_bound("modify_port", uuid, model)
        return self._answer("modify_port", uuid, None)

    def delete_port(self, uuid, model, port):
        if port is None or port.get("id", uuid) != uuid:
            self.violations.append("delete_port(%s) given %r" % (uuid, port))
        return self._answer("delete_port", uuid, None)

    def modify_service(self, uuid, model, changes):
        self._require_used("modify_service", uuid, model)
        return self._answer("modify_service", uuid, None)

    def delete_service(self, uuid, model, service):
        self._require_used("delete_service", uuid, model)
        return self._answer("delete_service", uuid, None)

    def modify_service_binding(self, uuid, model, prev_binding):
        self._require_bound("modify_service_binding", uuid, model)
        return self._answer("modify_service_binding", uuid, None)

    def delete_service_binding(self, model, prev_binding):
        uuid = prev_binding.get("id") if prev_binding else None
        self._require_bound("delete_service_binding", uuid, model)
        return self._answer("delete_service_binding", uuid, None)

    # Checks made at call time.

    def _require_bound(self, callback, uuid, model):
        port = model.ports.get(uuid)
        if port is None or port.binding != BOUND:
            self.violations.append(
                "%s(%s) called for a port that is %s" % (
                    callback, uuid, "absent" if port is None else port.binding))

    def _require_used(self, callback, vpn, model):
        for uuid in model.ports_using_vpn(vpn):
            port = model.ports.get(uuid)
            if port is not None and port.binding == BOUND:
                return
        self.violations.append(
            "%s(%s) called though no Bound port uses that VPN" % (callback, vpn))

    # Answering.

    def _answer(self, callback, about, answer):
        call = Call(callback, about)
        self.calls.append(call)
        modes = self.faults.get(about)
        mode = modes.pop(0) if modes else None
        if mode is not None and callback == "bind_port":
            self.faulted_binds.add(about)
        if mode == "raise":
            call.outcome = "failed"
            raise InjectedFault("%s(%s) raised, as the test asked" % (callback, about))
        if mode == "timeout":
            d = Deferred(lambda _: self._cancelled(call))
            self.held.append((call, d, "hang"))
            return d
        if mode == "not_a_dict":
            answer = ["not", "a", "dict"] if callback == "bind_port" else answer
        if mode == "fail":
            failure = InjectedFault("%s(%s) failed, as the test asked" % (callback, about))
            if not self.asynchronous:
                call.outcome = "failed"
                return fail(failure)
            d = Deferred(lambda _: self._cancelled(call))
            self.held.append((call, d, failure))
            return d
        if not self.asynchronous:
            call.outcome = self._judge(callback, answer)
            return answer
        d = Deferred(lambda _: self._cancelled(call))
        self.held.append((call, d, answer))
        return d

    @staticmethod
    def _judge(callback, answer):
        if callback == "bind_port":
            return "accepted" if answer and isinstance(answer, dict) else "rejected"
        return "accepted"

    def _cancelled(self, call):
        # The shim's time limit ran out: the call counts as failed.
        call.outcome = "failed"
        if call.callback == "bind_port":
            self.faulted_binds.add(call.about)
        self.held = [h for h in self.held if h[0] is not call]

    def answerable(self):
        """
        The indexes of the held calls that the test may answer (not the hanging ones).
        """
        return [i for i, h in enumerate(self.held) if h[2] != "hang"]

    def release(self, index):
        call, d, answer = self.held.pop(index)
        if isinstance(answer, Exception):
            call.outcome = "failed"
            d.errback(answer)
        else:
            call.outcome = self._judge(call.callback, answer)
            d.callback(answer)


# -- the harness -----------------------------------------------------------------

class Run:
    """
    One example: a service fed events, with what the test expects of it.
    """

    def __init__(self, testcase, asynchronous, hold_etcd, rnd):
        self.testcase = testcase
        self.rnd = rnd
        self.clock = Clock()
        self.etcd_failures = 0
        self.etcd = FakeEtcd(fail=self._etcd_fault, hold=hold_etcd)
        self.backend = PropertyBackend(asynchronous)
        self.service = ShimService(
            CONFIG, self.backend, reactor=self.clock, client=self.etcd
        )
        self.revision = 1
        self.expected = {table: {} for table in keys.TABLES}
        self.counts = {"bad_key": 0, "bad_value": 0, "other_api": 0}
        self.errors = []
        self.unexpected = []
        globalLogPublisher.addObserver(self._observe)

    def close(self):
        globalLogPublisher.removeObserver(self._observe)
        self.testcase.flushLoggedErrors(InjectedFault)

    def _etcd_fault(self, method, key):
        if self.etcd_failures > 0:
            self.etcd_failures -= 1
            return ConnectionFailed(None, "connection refused (injected)")
        return None

    def _observe(self, event):
        level = event.get("log_level")
        if level is None or level < LogLevel.error:
            return
        failure = event.get("log_failure")
        text = event.get("log_format", "")
        if failure is not None and failure.check(InjectedFault):
            self.errors.append(text)
        elif failure is None and "did not answer within" in text:
            self.errors.append(text)
        elif failure is None and "not a dict" in text:
            self.errors.append(text)
        else:
            self.unexpected.append((text, failure and failure.getTraceback()))

    # Operations.

    def do(self, operation):
        kind = operation[0]
        if kind == "event":
            self.event(*operation[1:])
        elif kind == "fault":
            self.backend.faults.setdefault(operation[1], []).append(operation[2])
        elif kind == "etcd_fault":
            self.etcd_failures += operation[1]
        elif kind == "tick":
            self.clock.advance(operation[1])
        elif kind == "settle":
            self.settle()
            self.check()

    def event(self, kind, key, value, verdict):
        self.revision += 1
        if verdict == "ok":
            table, name = keys.parse_proton_key(key)
            if kind == PUT:
                self.expected[table][name] = json.loads(value)
            else:
                self.expected[table].pop(name, None)
        else:
            self.counts[verdict] += 1
        self.service.apply(kind, key, value, self.revision)

    def busy(self):
        return bool(
            self.backend.held or self.etcd.held or len(self.service.queue)
            or self.service.results.pending or self.service.results.delayed
        )

    def settle(self):
        """
        Answer every held backend call and etcd request, in a random order, and let
        the clock run until nothing is left to do.
        """
        for _ in range(100000):
            answerable = self.backend.answerable()
            choices = [("backend", i) for i in answerable]
            choices += [("etcd", i) for i in range(len(self.etcd.held))]
            if choices:
                where, index = self.rnd.choice(choices)
                if where == "backend":
                    self.backend.release(index)
                else:
                    self.etcd.release(index)
                continue
            if not self.busy():
                return
            if not self.clock.getDelayedCalls():
                raise AssertionError(
                    "stuck: %d queues busy, writes pending for %r, nothing to wait for"
                    % (len(self.service.queue), sorted(self.service.results.pending)))
            self.clock.advance(1.0)
        raise AssertionError("the service did not settle")

    # Invariants.

    def check(self):
        t = self.testcase
        model = self.service.model
        t.assertEqual(self.unexpected, [], "errors logged that the test did not cause")
        t.assertEqual(self.backend.violations, [])
        for table in (keys.VPN_PORT, keys.VPN_INSTANCE, keys.VPN_AFCONFIG):
            t.assertEqual(
                {name: dict(obj) for name, obj in model.table(table).items()},
                self.expected[table], "model.%s" % (table,))
        t.assertEqual(sorted(model.ports), sorted(self.expected[keys.PORT]))
        for uuid, row in self.expected[keys.PORT].items():
            self.check_port(uuid, row, model.ports[uuid])
        for uuid in PORTS:
            self.check_calls(uuid)
            self.check_result(uuid)
        bad = self.service.metrics.registry.get_sample_value
        for reason, n in self.counts.items():
            t.assertEqual(
                bad("shim_bad_input_total", {"reason": reason}) or 0, n,
                "bad input counted as %s" % (reason,))

    def check_port(self, uuid, row, port):
        t = self.testcase
        attrs = dict(port)
        vif = {name: attrs.pop(name, None) for name in ("vif_type", "vif_details")}
        wanted = dict(row)
        for name in ("vif_type", "vif_details"):
            wanted.pop(name, None)
        t.assertEqual(attrs, wanted, "model.ports[%r]" % (uuid,))
        merged = {"vif_type": VIF["vif_type"], "vif_details": json.dumps(VIF_DETAILS)}
        for name in ("vif_type", "vif_details"):
            own = row.get(name)
            if port.binding == BOUND:
                allowed = (merged[name], own) if own else (merged[name],)
            else:
                allowed = (own, None)
            t.assertIn(
                vif[name], allowed,
                "%s of port %s (%s)" % (name, uuid, port.binding))
        host, device = row.get("host_id"), row.get("device_id")
        if not (host and device):
            t.assertEqual(port.binding, UNBOUND, "port %s without a bind request" % uuid)
        elif host not in OUR_HOSTS:
            t.assertEqual(port.binding, INUSE, "port %s bound on %s" % (uuid, host))
        else:
            t.assertIn(port.binding, (BOUND, UNBOUND))
            binding = self.expected[keys.VPN_PORT].get(uuid)
            vpn = binding.get("vpn_instance") if binding else None
            if (vpn and vpn in self.expected[keys.VPN_INSTANCE]
                    and uuid not in self.backend.faulted_binds):
                t.assertEqual(
                    port.binding, BOUND,
                    "port %s asks for %s and its VPN %s is known" % (uuid, host, vpn))

    def check_calls(self, uuid):
        t = self.testcase
        bound = 0
        history = []
        for call in self.backend.calls:
            if call.about != uuid:
                continue
            history.append(call)
            if call.callback == "bind_port" and call.outcome == "accepted":
                t.assertEqual(bound, 0, "port %s bound twice: %r" % (uuid, history))
                bound = 1
            elif call.callback in ("unbind_port", "delete_port"):
                t.assertEqual(
                    bound, 1, "port %s released while not bound: %r" % (uuid, history))
                bound = 0
        port = self.service.model.ports.get(uuid)
        t.assertEqual(
            bound, 1 if port is not None and port.binding == BOUND else 0,
            "accepted binds of port %s (%s): %r" % (
                uuid, port.binding if port is not None else "absent", history))

    def check_result(self, uuid):
        port = self.service.model.ports.get(uuid)
        value = self.etcd.value(keys.result_key(uuid))
        if port is not None and port.binding == BOUND:
            self.testcase.assertEqual(value, OUR_RESULT, "bind result of %s" % (uuid,))
        else:
            self.testcase.assertIn(value, (None, b"{}"), "bind result of %s" % (uuid,))


# -- the tests -------------------------------------------------------------------

#: Examples per test; set C{SHIM_PROPERTY_EXAMPLES} to search longer.
EXAMPLES = int(os.environ.get("SHIM_PROPERTY_EXAMPLES", "120"))

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ServicePropertyTests(SynchronousTestCase):
    """
    The service's invariants hold after any sequence of events.
    """

    def run_operations(self, operations, asynchronous, hold_etcd, rnd, check_each):
        run = Run(self, asynchronous, hold_etcd, rnd)
        try:
            for operation in operations:
                run.do(operation)
                if check_each:
                    run.settle()
                    run.check()
            run.settle()
            run.check()
        finally:
            run.close()
        return run

    @SETTINGS
    @given(operations(with_faults=False, asynchronous=False), st.randoms())
    def test_synchronous(self, operations, rnd):
        """
        A backend that answers at once and an etcd that never fails: the invariants
        hold after every event.
        """
        self.run_operations(operations, False, False, rnd, check_each=True)

    @SETTINGS
    @given(operations(with_faults=True, asynchronous=False), st.randoms())
    def test_synchronous_with_faults(self, operations, rnd):
        """
        Backend calls that raise, fail, hang past the time limit or answer nonsense,
        and etcd writes that fail, do not break the invariants.
        """
        self.run_operations(operations, False, False, rnd, check_each=True)

    @SETTINGS
    @given(operations(with_faults=False, asynchronous=True), st.randoms())
    def test_deferred_answers(self, operations, rnd):
        """
        Backend answers and etcd writes that come later, in any order across objects,
        leave the same invariants once everything has settled.
        """
        self.run_operations(operations, True, True, rnd, check_each=False)

    @SETTINGS
    @given(operations(with_faults=True, asynchronous=True), st.randoms())
    def test_deferred_answers_with_faults(self, operations, rnd):
        """
        Late answers, time-outs, failures and etcd errors together.
        """
        self.run_operations(operations, True, True, rnd, check_each=False)


class FakeEtcdTests(SynchronousTestCase):
    """
    The fake etcd keeps revisions and honours compare-and-set like etcd.
    """

    def test_compare_and_set(self):
        from shim.etcd import Compare, Op

        etcd = FakeEtcd()
        put = self.successResultOf(etcd.put("/k", b"v1"))
        found = self.successResultOf(etcd.get("/k"))
        self.assertEqual(found.kvs[0].mod_revision, put.revision)
        stale = self.successResultOf(etcd.txn(
            compare=[Compare.mod_revision("/k", "==", put.revision - 1)],
            success=[Op.delete("/k")]))
        self.assertFalse(stale.succeeded)
        self.assertEqual(etcd.value("/k"), b"v1")
        fresh = self.successResultOf(etcd.txn(
            compare=[Compare.mod_revision("/k", "==", put.revision)],
            success=[Op.put("/k", b"{}")]))
        self.assertTrue(fresh.succeeded)
        self.assertEqual(etcd.value("/k"), b"{}")
        self.successResultOf(etcd.delete("/k"))
        self.assertIsNone(etcd.value("/k"))
        self.assertEqual(self.successResultOf(etcd.get("/k")).kvs, [])

    def test_hold_and_fail(self):
        failures = [ConnectionFailed(None, "down")]
        etcd = FakeEtcd(fail=lambda method, key: failures.pop() if failures else None,
                        hold=True)
        first = etcd.put("/k", b"a")
        second = etcd.put("/k", b"b")
        self.assertNoResult(first)
        etcd.release(1)
        self.assertIsNone(etcd.value("/k"))
        self.failureResultOf(second, ConnectionFailed)
        etcd.release(0)
        self.successResultOf(first)
        self.assertEqual(etcd.value("/k"), b"a")


class RegressionTests(SynchronousTestCase):
    """
    Sequences the property tests found, kept as plain tests.
    """

    def test_rejected_rebind_clears_vif(self):
        """
        A Bound port moved to another of our hosts is unbound and bound afresh; when the
        backend rejects the new bind, the port is Unbound and its result in etcd is
        C{{}}, so the model must not keep the old bind's C{vif_type}/C{vif_details}
        either (PROTOCOL.md: unbinding clears the vif attributes in the model).
        """
        run = Run(self, False, False, None)
        self.addCleanup(run.close)
        for operation in SETUP:
            run.do(operation)
        port = {"id": "p1", "name": "a", "host_id": "compute2", "device_id": "vm1",
                "vif_type": None, "vif_details": None}
        port_key = keys.proton_key(keys.PORT, "p1")
        run.do(("event", PUT, port_key, _json(port), "ok"))
        self.assertEqual(run.service.model.ports["p1"].binding, BOUND)
        # The port's VPN binding now names a VPN the backend does not know ...
        run.do(("event", PUT, keys.proton_key(keys.VPN_PORT, "p1"),
                _json({"id": "p1", "vpn_instance": "v9"}), "ok"))
        # ... and the port moves to another of our hosts: unbind, then a rejected bind.
        port["host_id"] = "compute1"
        run.do(("event", PUT, port_key, _json(port), "ok"))
        run.settle()
        self.assertEqual(
            [(c.callback, c.outcome) for c in run.backend.calls if c.about == "p1"],
            [("bind_port", "accepted"), ("modify_service_binding", "accepted"),
             ("unbind_port", "accepted"), ("bind_port", "rejected")])
        self.assertEqual(run.service.model.ports["p1"].binding, UNBOUND)
        self.assertEqual(run.etcd.value(keys.result_key("p1")), b"{}")
        self.assertIsNone(run.service.model.ports["p1"].get("vif_type"))
        self.assertIsNone(run.service.model.ports["p1"].get("vif_details"))

    def test_bound_port_keeps_its_bind_result(self):
        """
        A Bound port carries its bind result's C{vif_details} whenever proton's row
        has none; a value proton wrote once and then cleared must not stay in its place
        (C{_keep_result} carries over the previous row's value, not the result's).
        """
        run = Run(self, False, False, None)
        self.addCleanup(run.close)
        for operation in SETUP:
            run.do(operation)
        port = {"id": "p1", "name": "a", "host_id": "compute1", "device_id": "vm1",
                "vif_type": None, "vif_details": None}
        port_key = keys.proton_key(keys.PORT, "p1")
        run.do(("event", PUT, port_key, _json(port), "ok"))
        port["vif_details"] = '{"x": "1"}'
        run.do(("event", PUT, port_key, _json(port), "ok"))
        port["vif_details"] = None
        run.do(("event", PUT, port_key, _json(port), "ok"))
        run.settle()
        bound = run.service.model.ports["p1"]
        self.assertEqual(bound.binding, BOUND)
        self.assertEqual(bound["vif_details"], json.dumps(VIF_DETAILS))
