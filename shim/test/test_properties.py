"""
Property tests of L{shim.service.ShimService}: random sequences of proton's writes, good
and bad, with restarts, resyncs, compaction, a cluster change, failing, slow and
malformed backends, etcd faults and two controllers, on the in-memory etcd.

Each service is built with a L{shim.test.fakeetcd.FakeEtcd} as its client and a
L{Clock} as its reactor, and is never started (no watch, no election): each of proton's
writes goes into the fake etcd and, as the watch would deliver it, to every service's
C{apply(kind, key, value, revision)}.  A restart builds a new service on the same etcd
and runs its start-up snapshot; a periodic resync runs beside the (imagined) watch,
and etcd may answer its read late, after more of proton's writes;
compaction and a cluster change are full resynchronisations, the latter after etcd
came back under a new cluster id with its revisions numbered anew.

After quiescence (every slow call answered, the backend answering well again, the
clock run past every retry and delayed release) the invariant is, per port and per
controller, what the current model asks for:

  - a bind request on one of the controller's hosts whose binding names a VPN in the
    model (the backend binds like C{dummy}), or that the backend holds bound (a port
    stays bound when its binding goes): the backend's last port-level call for it is
    an accepted C{bind_port} or a C{modify_port} for the current placement, and etcd
    holds that controller's result naming that placement;
  - any other port (not ours, not a bind request, refused, deleted): the backend's
    last port-level call is C{unbind_port} or C{delete_port} (or it never had one), and
    etcd holds no result naming that controller;

and, all along, no two calls about one port overlap, and every bad key or value fed is
counted.

Each test tries C{SHIM_PROPERTY_EXAMPLES} examples (40 by default, derandomised: CI
runs the same small set every time).  Set it higher to search longer.
"""

import json
import os
import random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from shim import bindresult, keys
from shim.config import ShimConfig
from shim.controller import RELEASE_DELAY
from shim.etcd import ConnectionFailed
from shim.interfaces import IBackend
from shim.portstate import is_bind_request, placement
from shim.service import ShimService
from shim.follower import DELETE, PUT
from shim.test.fakeetcd import FakeEtcd

EXAMPLES = int(os.environ.get("SHIM_PROPERTY_EXAMPLES", "40"))

#: The two controllers, with their hosts.  C{compute9} is nobody's.
CONTROLLERS = {
    "ShimA": ("compute1", "compute2"),
    "ShimB": ("compute3",),
}

PORTS = ("p1", "p2", "p3")
VPNS = ("v1", "v2")
ROUTE_TARGETS = ("100:1", "100:10")
HOSTS = ("compute1", "compute1", "compute2", "compute3", "compute3", "compute9", "", None)
DEVICES = ("vm1", "vm1", "vm2", "", None)

#: Backend modes: how a backend answers its calls until told otherwise.
MODES = ("ok", "ok", "raise", "malformed", "set_details", "reject", "slow")


def _config(name):
    return ShimConfig(
        path="<property test>",
        controller_name=name,
        host_list=CONTROLLERS[name],
        etcd_endpoints=("http://127.0.0.1:1",),
        backend_timeout=5.0,
        bind_timeout=2.5,
        resync_interval=0,
        election_enabled=False,
    )


class InjectedFault(Exception):
    """
    A backend failure that the test asked for.
    """


# -- strategies ------------------------------------------------------------------

def _json(obj):
    return json.dumps(obj).encode("utf-8")


def port_rows(uuid):
    return st.fixed_dictionaries({
        "id": st.just(uuid),
        "name": st.sampled_from(("a", "b")),
        "host_id": st.sampled_from(HOSTS),
        "device_id": st.sampled_from(DEVICES),
        "mtu": st.sampled_from((1400, 1500)),
    })


def binding_rows(uuid):
    return st.fixed_dictionaries({
        "id": st.just(uuid),
        "vpn_instance": st.sampled_from(VPNS + VPNS + VPNS + ("v9", "", None)),
    })


def vpn_rows(vpn):
    rts = st.lists(st.sampled_from(ROUTE_TARGETS), max_size=2).map(
        lambda names: ",".join(keys.afconfig_name(rt) for rt in names))
    return st.fixed_dictionaries({
        "id": st.just(vpn),
        "ipv4_family": st.none() | rts,
        "ipv6_family": st.none(),
        "description": st.sampled_from(("", "x")),
    })


def route_target_rows(name):
    return st.fixed_dictionaries({
        "vrf_rt_value": st.just(name.replace("_", " ")),
        "vrf_rt_type": st.sampled_from(("export_extcommunity", "both")),
    })


TABLES = {
    keys.PORT: (PORTS, port_rows),
    keys.VPN_PORT: (PORTS, binding_rows),
    keys.VPN_INSTANCE: (VPNS, vpn_rows),
    keys.VPN_AFCONFIG: (tuple(keys.afconfig_name(rt) for rt in ROUTE_TARGETS),
                        route_target_rows),
}

BAD_VALUES = (b"", b"{", b"[1, 2]", b"null", b"42")
BAD_KEYS = (
    "/proton/net-l3vpn/ProtonBasePort/p1/extra",
    "/proton/net-l3vpn/ProtonBasePort/",
)


@st.composite
def writes(draw):
    """
    One of proton's writes: C{("write", kind, key, value, verdict)}.
    """
    choice = draw(st.integers(0, 19))
    if choice == 0:
        return ("write", PUT, draw(st.sampled_from(BAD_KEYS)), b"{}", "bad_key")
    table = draw(st.sampled_from(
        (keys.PORT, keys.PORT, keys.PORT, keys.VPN_PORT, keys.VPN_PORT,
         keys.VPN_INSTANCE, keys.VPN_AFCONFIG)))
    names, rows = TABLES[table]
    name = draw(st.sampled_from(names))
    key = keys.proton_key(table, name)
    if choice <= 2:
        return ("write", DELETE, key, None, "ok")
    if choice == 4 and table == keys.PORT:
        # A port whose host is not a string.
        return ("write", PUT, key, _json({"id": name, "host_id": 5}), "bad_value")
    if choice <= 4:
        return ("write", PUT, key, draw(st.sampled_from(BAD_VALUES)), "bad_value")
    return ("write", PUT, key, _json(draw(rows(name))), "ok")


def operation():
    return st.one_of(
        writes(), writes(), writes(), writes(), writes(), writes(),
        st.tuples(st.just("mode"), st.sampled_from(sorted(CONTROLLERS)),
                  st.sampled_from(MODES)),
        st.tuples(st.just("answer"), st.integers(0, 3)),
        st.tuples(st.just("tick"), st.sampled_from((0.5, 3.0, 11.0))),
        st.tuples(st.just("etcd_fault"), st.integers(1, 3)),
        st.tuples(st.sampled_from(("restart", "stop", "start", "fall_behind")),
                  st.sampled_from(sorted(CONTROLLERS))),
        st.tuples(st.just("resync"), st.sampled_from(
            ("periodic", "periodic_slow", "compacted", "cluster_changed"))),
        st.tuples(st.just("etcd_answer"), st.integers(0, 3)),
        st.just(("settle",)),
    )


def _setup():
    """
    Route targets, VPNs, bindings for every port and bind requests on both
    controllers' hosts, so that binds succeed.
    """
    created = []
    for rt in ROUTE_TARGETS:
        name = keys.afconfig_name(rt)
        created.append((keys.VPN_AFCONFIG, name, {
            "vrf_rt_value": rt, "vrf_rt_type": "both"}))
    for vpn, rt in zip(VPNS, ROUTE_TARGETS):
        created.append((keys.VPN_INSTANCE, vpn, {
            "id": vpn, "ipv4_family": keys.afconfig_name(rt), "ipv6_family": None,
            "description": ""}))
    for i, uuid in enumerate(PORTS):
        created.append((keys.VPN_PORT, uuid, {"id": uuid, "vpn_instance": VPNS[i % 2]}))
    for uuid, host in zip(PORTS, ("compute1", "compute3", "compute2")):
        created.append((keys.PORT, uuid, {
            "id": uuid, "name": "a", "host_id": host, "device_id": "vm1", "mtu": 1500}))
    return [
        ("write", PUT, keys.proton_key(table, name), _json(row), "ok")
        for table, name, row in created
    ]


SETUP = _setup()


def scenarios():
    return st.tuples(
        st.sampled_from(([], SETUP, SETUP, SETUP)),
        st.lists(operation(), min_size=5, max_size=40),
        st.randoms(use_true_random=False),
    )


# -- the backend -------------------------------------------------------------------

#: The callbacks about one port: no two of them may overlap.
PORT_CALLS = ("bind_port", "unbind_port", "modify_port", "delete_port",
              "modify_service_binding", "delete_service_binding")


@implementer(IBackend)
class PropertyBackend:
    """
    One controller's backend: binds like C{dummy} (it accepts a port whose binding
    names a VPN in the model), in the mode the test chose, and remembers what it
    holds.

    @ivar mode: how the next calls are answered (see L{MODES}).
    @ivar bound: port uuid to the placement the backend holds it bound for.
    @ivar last: port uuid to the last port-level call that ended well, with the
        placement the model had for the port then.
    @ivar busy: port uuids with a call in progress.
    @ivar held: C{(Deferred, thunk)} of slow calls not answered yet.
    @ivar violations: what the shim did wrong, described.
    """

    def __init__(self, name):
        self.name = name
        self.mode = "ok"
        self.bound = {}
        self.last = {}
        self.busy = set()
        self.held = []
        self.violations = []
        self.rejected_by_mode = False

    def bind_port(self, uuid, model, changes):
        port = model.ports.get(uuid)
        where = placement(port) if port is not None else None
        binding = model.vpn_ports.get(uuid)
        vpn = binding.get("vpn_instance") if binding is not None else None
        accepted = bool(vpn) and vpn in model.vpn_instances
        answer = {"vif_type": "ovs", "vif_details": {"port_filter": False}}

        def done():
            if accepted:
                self.bound[uuid] = where
                self.last[uuid] = ("bind_port", where)
            return answer if accepted else {}
        return self._call("bind_port", uuid, done)

    def unbind_port(self, uuid, model, changes):
        return self._call("unbind_port", uuid, lambda: self._unbound("unbind_port", uuid))

    def delete_port(self, uuid, model, port):
        return self._call("delete_port", uuid, lambda: self._unbound("delete_port", uuid))

    def modify_port(self, uuid, model, changes):
        port = model.ports.get(uuid)
        where = placement(port) if port is not None else None

        def done():
            if self.bound.get(uuid) != where:
                self.violations.append(
                    "%s: modify_port(%s) for %r, bound for %r"
                    % (self.name, uuid, where, self.bound.get(uuid)))
            self.last[uuid] = ("modify_port", where)
        return self._call("modify_port", uuid, done)

    def modify_service_binding(self, uuid, model, prev_binding):
        return self._call("modify_service_binding", uuid, self._require_bound(uuid))

    def delete_service_binding(self, model, prev_binding):
        uuid = prev_binding.get("id") if prev_binding else None
        return self._call("delete_service_binding", uuid, self._require_bound(uuid))

    def modify_service(self, uuid, model, changes):
        return self._call("modify_service", None, lambda: None)

    def delete_service(self, uuid, model, service):
        return self._call("delete_service", None, lambda: None)

    def _unbound(self, callback, uuid):
        self.bound.pop(uuid, None)
        self.last[uuid] = (callback, None)

    def _require_bound(self, uuid):
        def check():
            if uuid not in self.bound:
                self.violations.append(
                    "%s: a service-binding callback for port %s, not bound"
                    % (self.name, uuid))
        return check

    def _call(self, callback, uuid, done):
        """
        Answer a call in the current mode; C{done()} takes effect when the backend
        really did the call, and gives the answer.
        """
        if uuid is not None:
            if uuid in self.busy:
                self.violations.append(
                    "%s: %s(%s) while another call about it is in progress"
                    % (self.name, callback, uuid))
            self.busy.add(uuid)
        mode = self.mode
        finish = lambda: self.busy.discard(uuid)  # noqa: E731
        if mode == "raise":
            finish()
            raise InjectedFault("%s(%s) raised, as the test asked" % (callback, uuid))
        if callback == "bind_port" and mode in ("malformed", "set_details", "reject"):
            # The backend answers badly or refuses: it holds nothing new.
            finish()
            if mode == "malformed":
                return {"vif_type": None, "vif_details": {}}
            if mode == "set_details":
                return {"vif_type": "ovs", "vif_details": {"x": {1, 2}}}
            self.rejected_by_mode = True
            return {}
        if mode == "slow":
            d = Deferred(lambda _: finish())

            def answer():
                finish()
                return done()
            self.held.append((d, answer))
            return d
        finish()
        return done()

    def answer(self, index):
        """
        Answer the held call at C{index}, unless the shim gave up on it already.
        """
        d, answer = self.held.pop(index)
        if d.called:
            return
        d.callback(answer())


# -- the harness -----------------------------------------------------------------

class Run:
    """
    One example: proton's writes into a fake etcd, fed to two controllers' services.
    """

    def __init__(self, testcase, rnd):
        self.testcase = testcase
        self.rnd = rnd
        self.clock = Clock()
        self.etcd_failures = 0
        self.cluster = 0
        self.etcd = FakeEtcd(fail=self._etcd_fault, history=True)
        self.backends = {name: PropertyBackend(name) for name in CONTROLLERS}
        self.services = {}
        self.unsynchronised = set()
        #: Controllers that are stopped, and whose watch missed the writes (it fell
        #: behind etcd's compaction): neither hears proton's writes.
        self.down = set()
        self.behind = set()
        self.fed = {"bad_key": 0, "bad_value": 0}
        self.counted = {"bad_key": 0, "bad_value": 0}
        for name in CONTROLLERS:
            self.services[name] = self._start(name)

    def close(self):
        for name in CONTROLLERS:
            self._stop(name)
        self.testcase.flushLoggedErrors(InjectedFault)

    def _etcd_fault(self, method, key):
        if self.etcd_failures > 0:
            self.etcd_failures -= 1
            return ConnectionFailed(None, "connection refused (injected)")
        return None

    # Services.

    def _start(self, name):
        """
        A service for controller C{name} on the shared etcd, as if started: its
        start-up snapshot runs (and is tried again while etcd fails).
        """
        service = ShimService(
            _config(name), self.backends[name], reactor=self.clock, client=self.etcd)
        service.release_delay = RELEASE_DELAY
        # Started, without the follower's watch loop: the test is the watch.
        service.running = True
        service.follower.running = True
        self.services[name] = service
        self._synchronise(name, "start")
        return service

    def _stop(self, name):
        service = self.services[name]
        for reason, count in self.counted_by(service).items():
            self.counted[reason] += count
        service.running = False
        service.follower.running = False
        service.queue.stop()
        service.writer.stop()

    def _synchronise(self, name, cause):
        service = self.services[name]
        d = service.follower._synchronise(cause)
        # The watch that follows the read is open (the test is the watch).
        d.addCallback(lambda _: service.watching())
        failures = []
        d.addErrback(failures.append)
        if failures:
            failures[0].trap(ConnectionFailed)
            self.unsynchronised.add((name, cause))
        else:
            self.unsynchronised.discard((name, cause))

    @staticmethod
    def counted_by(service):
        metrics = service.metrics
        return {
            reason: metrics.child(metrics.bad_values, reason)._value.get()
            for reason in ("bad_key", "bad_value")
        }

    # Operations.

    def do(self, operation):
        kind = operation[0]
        if kind == "write":
            self.write(*operation[1:])
        elif kind == "mode":
            self.backends[operation[1]].mode = operation[2]
        elif kind == "answer":
            for backend in self.backends.values():
                if backend.held:
                    backend.answer(operation[1] % len(backend.held))
        elif kind == "tick":
            self.clock.advance(operation[1])
        elif kind == "etcd_answer":
            if self.etcd.held:
                self.etcd.release(operation[1] % len(self.etcd.held))
        elif kind == "etcd_fault":
            self.etcd_failures += operation[1]
        elif kind == "restart":
            self.restart(operation[1])
        elif kind == "stop":
            self.stop(operation[1])
        elif kind == "start":
            self.start(operation[1])
        elif kind == "fall_behind":
            self.behind.add(operation[1])
        elif kind == "resync":
            self.resync(operation[1])
        elif kind == "settle":
            self.settle()
            self.check()

    def write(self, kind, key, value, verdict):
        """
        Proton writes C{key}; the watch delivers it to every service.
        """
        if kind == PUT:
            self.etcd._put(key, value)
        else:
            self.etcd._delete(key, False)
        revision = self.etcd.revision
        stalled = {n for n, _ in self.unsynchronised}
        for name, service in self.services.items():
            # A follower whose full resync failed has no watch until one succeeds.
            if name not in self.down and name not in self.behind \
                    and name not in stalled:
                if verdict != "ok":
                    self.fed[verdict] += 1
                service.apply(kind, key, value, revision)

    def restart(self, name):
        """
        Controller C{name} stops (letting its calls in progress finish) and a new one
        starts on the same etcd; its backend keeps what it holds.
        """
        self.stop(name)
        self.start(name)

    def stop(self, name):
        if name in self.down:
            return
        backend = self.backends[name]
        while backend.held:
            backend.answer(0)
        self._stop(name)
        self.unsynchronised = {u for u in self.unsynchronised if u[0] != name}
        self.down.add(name)

    def start(self, name):
        if name in self.down:
            self.down.discard(name)
            self.behind.discard(name)
            self._start(name)

    def resync(self, cause):
        for name, service in self.services.items():
            if name in self.down:
                continue
            self.behind.discard(name)
            if cause == "periodic":
                self._resync_beside(service)
            elif cause == "periodic_slow":
                # etcd answers later: proton's writes meanwhile reach the model
                # before the snapshot does.
                self.etcd.hold = True
                try:
                    self._resync_beside(service)
                    # The status answers at once; the read at its revision waits.
                    index = len(self.etcd.held) - 1
                    if index >= 0 and self.etcd.held[index][0][0] == "status":
                        self.etcd.release(index)
                finally:
                    self.etcd.hold = False
            else:
                if cause == "cluster_changed":
                    self._new_cluster()
                self._synchronise(name, cause)

    @staticmethod
    def _resync_beside(service):
        """
        A periodic resync beside the watch, unless one is running (as
        C{Follower.request_resync} does).
        """
        follower = service.follower
        if follower._background is None:
            d = follower._resync_beside("periodic")
            if not d.called:
                follower._background = d

    def _new_cluster(self):
        """
        etcd comes back as a new cluster restored from a backup: same keys, revisions
        numbered anew.
        """
        if self.etcd.cluster_id == "fake-%d" % (self.cluster,):
            return
        self.cluster += 1
        self.etcd.renumber("fake-%d" % (self.cluster,))

    def busy(self):
        return any(
            backend.held for backend in self.backends.values()
        ) or self.etcd.held or self.unsynchronised or any(
            len(s.queue) or s.writer.pending or s.writer.delayed
            for s in self.services.values()
        )

    def settle(self):
        """
        The backends answer well again, every slow call is answered, and the clock
        runs until nothing is left to do.
        """
        self.etcd_failures = 0
        for backend in self.backends.values():
            backend.mode = "ok"
        for name in sorted(self.down):
            self.start(name)
        for name in sorted(self.behind):
            # The watch fell behind etcd's compaction: everything is read again.
            self.behind.discard(name)
            self._synchronise(name, "compacted")
        for name, cause in sorted(self.unsynchronised):
            self._synchronise(name, cause)
        if any(b.rejected_by_mode for b in self.backends.values()):
            # A refused bind is tried again at the next resync.
            for service in self.services.values():
                self._resync_beside(service)
            for b in self.backends.values():
                b.rejected_by_mode = False
        for _ in range(400):
            while self.etcd.held:
                self.etcd.release(self.rnd.randrange(len(self.etcd.held)))
            for backend in self.backends.values():
                while backend.held:
                    backend.answer(self.rnd.randrange(len(backend.held)))
            if not self.busy():
                break
            self.clock.advance(1.0)
        else:
            raise AssertionError("the services did not settle: %s" % (self.describe(),))
        # Past any delayed release, then once more to be sure nothing moves.
        self.clock.advance(RELEASE_DELAY + 1)
        if self.busy():
            raise AssertionError("busy after settling: %s" % (self.describe(),))

    def describe(self):
        return "; ".join(
            "%s: queue %d, writes pending %r, delayed %r, held %d" % (
                name, len(s.queue), sorted(s.writer.pending), sorted(s.writer.delayed),
                len(self.backends[name].held))
            for name, s in sorted(self.services.items()))

    # The invariant.

    def wanted(self, name, uuid):
        """
        What controller C{name}'s current model asks of port C{uuid}: C{(placement,
        must)} for a bind request on its hosts (C{must}: its binding names a VPN in
        the model, so that a backend like C{dummy} binds it; else the port may stay
        bound from before, or unbound), or C{None} when it must not be bound.
        """
        model = self.services[name].model
        port = model.ports.get(uuid)
        if not is_bind_request(port):
            return None
        if port.get("host_id") not in CONTROLLERS[name]:
            return None
        binding = model.vpn_ports.get(uuid)
        vpn = binding.get("vpn_instance") if binding is not None else None
        return placement(port), bool(vpn) and vpn in model.vpn_instances

    def model_problems(self):
        """
        Each service's model holds what etcd holds: nothing for a key that is gone,
        and the value of a key whose value is valid.
        """
        problems = []
        for name, service in sorted(self.services.items()):
            model = service.model
            for table, (names, _) in sorted(TABLES.items()):
                objects = model.table(table)
                for n in names:
                    value = self.etcd.value(keys.proton_key(table, n))
                    obj = objects.get(n)
                    try:
                        row = json.loads(value) if value is not None else None
                    except ValueError:
                        continue
                    if value is None and obj is not None:
                        problems.append("%s: the model has %s %s, etcd has not"
                                        % (name, table, n))
                    elif isinstance(row, dict) and row.get("host_id") != 5 and (
                            obj is None or any(obj.get(k) != v for k, v in row.items())):
                        problems.append("%s: the model has %s %s as %r, etcd as %r"
                                        % (name, table, n, obj, row))
        return problems

    def check(self):
        problems = []
        for name in sorted(CONTROLLERS):
            backend = self.backends[name]
            problems.extend(backend.violations)
            for uuid in PORTS:
                wanted = self.wanted(name, uuid)
                last = backend.last.get(uuid)
                value = self.etcd.value(keys.result_key(uuid))
                result = bindresult.decode(value) if value else None
                if wanted is not None and (wanted[1] or uuid in backend.bound):
                    where = wanted[0]
                    if last is None or last[0] not in ("bind_port", "modify_port") \
                            or last[1] != where or backend.bound.get(uuid) != where:
                        problems.append(
                            "%s: port %s wants a bind for %r; the backend's last "
                            "call was %r" % (name, uuid, where, last))
                    if result is None or result.controller != name \
                            or result.placement != where:
                        problems.append(
                            "%s: port %s wants a result for %r; etcd holds %r"
                            % (name, uuid, where, value))
                else:
                    if last is not None and last[0] not in ("unbind_port", "delete_port"):
                        problems.append(
                            "%s: port %s wants no bind; the backend's last call was "
                            "%r" % (name, uuid, last))
                    if uuid in backend.bound:
                        problems.append(
                            "%s: port %s wants no bind; the backend holds it bound "
                            "for %r" % (name, uuid, backend.bound[uuid]))
                    if value and bindresult.controller_of(value) == name:
                        problems.append(
                            "%s: port %s wants no bind; etcd holds our result %r"
                            % (name, uuid, value))
        problems.extend(self.model_problems())
        counted = dict(self.counted)
        for service in self.services.values():
            for reason, count in self.counted_by(service).items():
                counted[reason] += count
        for reason, fed in self.fed.items():
            # Counted at least once per service that heard it (a snapshot may count
            # it again).
            if counted[reason] < fed:
                problems.append("%d %s fed, %d counted" % (fed, reason, counted[reason]))
        if problems:
            raise AssertionError("\n".join(problems))


def _port(uuid, host, device="vm1"):
    return ("write", PUT, keys.proton_key(keys.PORT, uuid), _json(
        {"id": uuid, "name": "a", "host_id": host, "device_id": device}), "ok")


def _deleted(table, name):
    return ("write", DELETE, keys.proton_key(table, name), None, "ok")


#: A port deleted and another moved while its controller is down.
WHILE_DOWN = (SETUP, [
    ("settle",), ("stop", "ShimA"), _deleted(keys.PORT, "p1"),
    _port("p3", "compute3"), ("start", "ShimA"),
], random.Random(0))

#: Writes missed by a watch fallen behind compaction, then a cluster change.
BEHIND = (SETUP, [
    ("settle",), ("fall_behind", "ShimA"), _port("p1", "compute9"),
    _deleted(keys.VPN_PORT, "p3"), _port("p3", "compute2", "vm2"),
    ("resync", "cluster_changed"), _port("p2", "compute1"),
], random.Random(0))

#: A port moving between the controllers while binds are slow, refused and malformed.
MOVED = (SETUP, [
    ("mode", "ShimA", "slow"), ("mode", "ShimB", "reject"), _port("p1", "compute3"),
    ("tick", 3.0), _port("p1", "compute1", "vm2"), ("mode", "ShimA", "malformed"),
    ("answer", 0), ("tick", 11.0), ("restart", "ShimB"), ("resync", "periodic"),
    _port("p2", "compute2"), ("etcd_fault", 3), ("tick", 3.0),
], random.Random(0))


class PropertyTests(SynchronousTestCase):
    """
    The invariant holds after any sequence of operations.
    """

    @settings(
        derandomize=True, max_examples=EXAMPLES, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )
    @given(scenarios())
    @example(WHILE_DOWN)
    @example(BEHIND)
    @example(MOVED)
    def test_quiescence(self, scenario):
        """
        After quiescence, for every port, each controller's backend's last call and
        the bind result in etcd match what that controller's current model asks for.
        """
        prefix, body, rnd = scenario
        run = Run(self, rnd)
        done = []
        try:
            for op in prefix + body:
                done.append(op)
                run.do(op)
            run.settle()
            run.check()
        except AssertionError as e:
            raise AssertionError("%s\nafter:\n  %s" % (
                e, "\n  ".join(repr(op) for op in done)))
        finally:
            run.close()

    def test_release_after_failed_publish(self):
        """
        A port moves from controller A's host to B's while A's publish of its result
        is being retried after an etcd failure: B's result stays in etcd.  (A's retried
        publish must not land over B's, nor its delayed release clear B's.)
        """
        run = Run(self, random.Random(0))
        try:
            for op in SETUP + [("etcd_fault", 2), ("tick", 0.5),
                               _port("p1", "compute3")]:
                run.do(op)
            run.settle()
            run.check()
        finally:
            run.close()
