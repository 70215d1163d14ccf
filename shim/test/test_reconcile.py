"""
Level-triggered reconciliation against a real etcd: each of the ten cases of issue 9,
where reacting to events alone left a VM without network or the vendor's controller
wrong, and proton asking again.

  1. a port moved or given a new device while the shim was down;
  2. a bind that raised, failed or timed out;
  3. a bind the backend rejected, with nothing else changing;
  4. a VPN or route target changed or deleted while its port's bind was in flight;
  5. malformed bind answers;
  6. values nested too deeply for the JSON parser;
  7. an expired authentication token;
  8. result writes: a retried publish across a migration, the resync's repair
     against another shim's result, a delayed release against a new bind;
  9. a replaced etcd cluster with lower revisions;
 10. bounded buffers: one queue entry per key, the watch's message cap.

Every test runs the shim service in this process (L{shim.test.support.ShimRunner})
against a real etcd (L{shim.test.etcdserver}); proton's side is
L{shim.proton.ProtonClient}.  Waits are liveness bounds, never speed targets.
"""

import json
import os

from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from shim import keys
from shim.config import load_config
from shim.etcd import EtcdClient
from shim.etcd import watch as watch_module
from shim.portstate import BOUND, INUSE, UNBOUND
from shim.proton import ProtonClient, encode_object
from shim.service import LEADER, STANDBY, ShimService
from shim.etcd.wire import prefix_end
from shim.test.etcdserver import b64, start_etcd
from shim.test.proxy import FaultProxy
from shim.test.support import (
    VIF,
    RecordingBackend,
    ShimRunner,
    key_history,
    port_attrs,
    read_result,
    replace_cluster,
    sleep,
    wait_for,
    write_config,
)
from shim.test.test_faults import WatchingThroughAnother
from shim.test.test_service import RT, VPN, ServiceTestCase


def vpn_attrs(vpn=VPN, rts=(RT,), **more):
    attrs = {"id": vpn, "vpn_instance_name": vpn, "description": None,
             "ipv4_family": ",".join(rts), "ipv6_family": None,
             "route_distinguishers": "100:100"}
    attrs.update(more)
    return attrs


class ReconcileCase(ServiceTestCase):
    """
    L{ServiceTestCase} with a few readings of the shim and of etcd's history.
    """

    def metric(self, shim, name, **labels):
        """
        The value of a sample of C{shim}'s metrics (0 when it was never set).
        """
        return shim.metrics.registry.get_sample_value(name, labels) or 0

    def calls_about(self, backend, uuid):
        return [c for c, k in backend.calls if k == uuid]

    def arguments_of(self, backend, callback):
        return [a for c, a in backend.arguments if c == callback]

    def history(self, key, client=None):
        """
        Every change of C{key} etcd remembers, as C{(type, decoded value or None)}.
        """
        return key_history(client or self.client, key,
                           decode=lambda value: json.loads(value) if value else None)

    def writer_settled(self, shim):
        """
        Wait until C{shim} has no result write pending, not even a delayed release.
        """
        return wait_for(lambda: not shim.writer.pending and not shim.writer.delayed,
                        what="the result writes to be done")

    def result_is(self, uuid, predicate):
        return read_result(self.client, uuid).addCallback(
            lambda r: r is not None and predicate(r))

    def start_service(self, client, backend, **kwargs):
        """
        Start a shim (controller SimServer on compute1) on C{client}, with
        L{ShimService}'s other C{kwargs}; it is stopped at the test's end.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = load_config(write_config(directory, [self.etcd.client_url],
                                          controller="SimServer", hosts="compute1"))
        shim = ShimService(config, backend, client=client, **kwargs)
        shim.startService()
        self.addCleanup(lambda: shim.running and shim.stopService())
        return shim


class RestartTests(ReconcileCase):
    @inlineCallbacks
    def test_moved_while_down(self):
        """
        Case 1 (restart): a Bound port moved to another of our hosts, or given a new
        device (a new VM), while the shim was down is unbound then bound at start,
        C{changes.prev} being the placement recorded in the result, and the result
        names the new placement; a port with the same placement gets no call.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        for uuid in ("moved", "new-vm", "same"):
            yield self.make_port(uuid)
            outcome = yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
            self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        yield shim.stopService()

        yield self.proton.put_object(
            keys.PORT, "moved", port_attrs("moved", "compute2", "vm-moved"))
        yield self.proton.put_object(
            keys.PORT, "new-vm", port_attrs("new-vm", "compute1", "vm-other"))
        again = RecordingBackend()
        shim2 = yield self.shims.start(again)
        yield self.settled(shim2)

        self.assertEqual(self.calls_about(again, "moved"), ["unbind_port", "bind_port"])
        self.assertEqual(self.calls_about(again, "new-vm"), ["unbind_port", "bind_port"])
        self.assertEqual(self.calls_about(again, "same"), [])
        unbinds = {args[0]: args[2] for args in self.arguments_of(again, "unbind_port")}
        self.assertEqual(unbinds["moved"].prev["host_id"], "compute1")
        self.assertEqual(unbinds["moved"].new["host_id"], "compute2")
        self.assertEqual(unbinds["new-vm"].prev["device_id"], "vm-new-vm")
        self.assertEqual(unbinds["new-vm"].new["device_id"], "vm-other")
        for uuid, placement in (("moved", ("compute2", "vm-moved")),
                                ("new-vm", ("compute1", "vm-other")),
                                ("same", ("compute1", "vm-same"))):
            result = yield read_result(self.client, uuid)
            self.assertEqual((result["host_id"], result["device_id"]), placement, uuid)
            self.assertEqual(result["controller"], "SimServer")
            self.assertEqual(shim2.model.ports[uuid].binding, BOUND)

    @inlineCallbacks
    def test_result_without_placement(self):
        """
        Case 1, upgrade: a result written by an earlier version (no placement) is
        taken as bound for the port's current placement: no call at start, and a
        later move is an unbind and a bind.
        """
        yield self.make_vpn()
        yield self.make_port("p1", host="compute1", device="vm1")
        yield self.client.put(keys.result_key("p1"), json.dumps(
            {"vif_type": "ovs", "vif_details": VIF["vif_details"],
             "controller": "SimServer"}).encode())
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.settled(shim)
        self.assertEqual(backend.calls, [])
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)
        outcome = yield self.proton.bind("p1", "compute2", "vm1")
        self.assertEqual(outcome.result["host_id"], "compute2")
        self.assertEqual(self.calls_about(backend, "p1"), ["unbind_port", "bind_port"])


class FailedBindTests(ReconcileCase):
    @inlineCallbacks
    def test_failed_bind_retried_within_protons_wait(self):
        """
        Case 2 (failed bind): a bind_port that raises, fails its Deferred, or does not
        answer within C{bind_timeout} is tried again, and proton gets the answer
        within its wait when the second call succeeds.
        """
        backend = RecordingBackend()
        failing = {"raises": 1, "fails": 1, "hangs": 1}

        def bind(uuid, *args):
            if failing.get(uuid):
                failing[uuid] -= 1
                if uuid == "raises":
                    raise RuntimeError("controller unreachable")
                if uuid == "fails":
                    return fail(ValueError("bad gateway"))
                return Deferred()
            return dict(VIF)

        backend.answers["bind_port"] = bind
        shim = yield self.shims.start(backend, extra="bind_timeout = 0.5")
        yield self.make_vpn()
        for uuid in sorted(failing):
            yield self.make_port(uuid)
            outcome = yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
            self.assertEqual(outcome.result, {
                "vif_type": "ovs", "vif_details": VIF["vif_details"],
                "controller": "SimServer", "host_id": "compute1",
                "device_id": "vm-" + uuid}, uuid)
            self.assertEqual(backend.called("bind_port", uuid), 2, uuid)
            self.assertEqual(shim.model.ports[uuid].binding, BOUND)
        yield self.settled(shim)
        self.assertEqual(self.metric(shim, "shim_backend_calls_total",
                                     callback="bind_port", outcome="timeout"), 1)
        self.assertEqual(self.metric(shim, "shim_backend_calls_total",
                                     callback="bind_port", outcome="error"), 2)
        self.assertGreaterEqual(
            self.metric(shim, "shim_retries_total", callback="bind_port"), 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, ValueError)), 2)

    @inlineCallbacks
    def test_rejected_bind_retried_at_periodic_resync(self):
        """
        Case 3 (rejected bind): a bind the backend rejects with C{{}}, nothing else
        changing, is not retried in a loop but is tried again at the periodic resync,
        and binds once the backend accepts.
        """
        backend = RecordingBackend()
        answers = [{}]
        backend.answers["bind_port"] = lambda uuid, *a: (
            answers.pop(0) if answers else dict(VIF))
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=0.5)
        self.assertIsNone(outcome.result)
        yield self.settled(shim)
        self.assertEqual(shim.model.ports["p1"].binding, UNBOUND)
        self.assertEqual(backend.called("bind_port", "p1"), 1)
        self.assertEqual(self.metric(shim, "shim_backend_calls_total",
                                     callback="bind_port", outcome="rejected"), 1)
        shim.request_resync("periodic")
        yield wait_for(lambda: self.result_is("p1", lambda r: r.get("controller")),
                       what="the bind retried by the periodic resync")
        self.assertEqual(backend.called("bind_port", "p1"), 2)
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)
        self.assertTrue(shim.ready)
        self.assertEqual(self.metric(shim, "shim_resyncs_total", cause="periodic"), 1)

    @inlineCallbacks
    def test_rejected_bind_retried_by_resync_interval(self):
        """
        Case 3 with the timer: C{resync_interval} retries the rejected bind.
        """
        backend = RecordingBackend()
        answers = [{}]
        backend.answers["bind_port"] = lambda uuid, *a: (
            answers.pop(0) if answers else dict(VIF))
        shim = yield self.shims.start(backend, extra="resync_interval = 1")
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.proton.bind("p1", "compute1", "vm1", timeout=0.3)
        yield wait_for(lambda: self.result_is("p1", lambda r: r.get("controller")),
                       what="the bind retried by the periodic resync")
        self.assertEqual(backend.called("bind_port", "p1"), 2)
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)


class InFlightTests(ReconcileCase):
    """
    Case 4 (in-flight changes): a VpnInstance or VpnAfConfig that changes, or is
    deleted, while its port's bind_port is in flight reaches the backend once the
    bind completes.
    """

    @inlineCallbacks
    def bind_held(self, change):
        """
        Start a bind of p1 whose bind_port answers when the test says, make
        C{change} (a callable returning a Deferred) meanwhile, then let the bind
        answer.  The backend, once the shim is idle.
        """
        backend = RecordingBackend()
        held = {}
        backend.answers["bind_port"] = lambda uuid, *a: held.setdefault(uuid, Deferred())
        shim = yield self.shims.start(backend, extra="bind_timeout = 60")
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.proton.put_object(keys.PORT, "p1", port_attrs("p1", "compute1", "vm1"))
        yield wait_for(lambda: "p1" in held, what="bind_port")
        status = yield change()
        yield wait_for(lambda: shim.revision >= status.revision,
                       what="the change to be applied")
        yield sleep(0.1)
        self.assertEqual(backend.calls, [("bind_port", "p1")])
        held["p1"].callback(dict(VIF))
        yield self.settled(shim)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result["controller"], "SimServer")
        return backend

    def change(self, table, name, attrs=None):
        @inlineCallbacks
        def write():
            if attrs is None:
                yield self.proton.delete_object(table, name)
            else:
                yield self.proton.put_object(table, name, attrs)
            status = yield self.client.status()
            return status
        return write

    @inlineCallbacks
    def test_vpn_changed(self):
        backend = yield self.bind_held(self.change(
            keys.VPN_INSTANCE, VPN, vpn_attrs(description="changed")))
        self.assertEqual(backend.called("modify_service", VPN), 1)
        changes = self.arguments_of(backend, "modify_service")[0][2]
        self.assertEqual(changes.new, {"description": "changed"})

    @inlineCallbacks
    def test_afconfig_changed(self):
        backend = yield self.bind_held(self.change(
            keys.VPN_AFCONFIG, keys.afconfig_name(RT),
            {"vrf_rt_value": RT, "vrf_rt_type": "export_extcommunity",
             "import_route_policy": None, "export_route_policy": None}))
        self.assertEqual(backend.called("modify_service", VPN), 1)
        changes = self.arguments_of(backend, "modify_service")[0][2]
        self.assertEqual(changes.new["vrf_rt_type"], "export_extcommunity")

    @inlineCallbacks
    def test_vpn_deleted(self):
        backend = yield self.bind_held(self.change(keys.VPN_INSTANCE, VPN))
        self.assertEqual(backend.called("delete_service", VPN), 1)
        self.assertEqual(backend.called("modify_service", VPN), 0)


class MalformedAnswerTests(ReconcileCase):
    @inlineCallbacks
    def test_malformed_answers(self):
        """
        Case 5 (malformed answers): answers that are not a dict, have no vif_type, or
        hold a set leave the port not Bound, write no result, count as errors and
        are retried; once the backend answers well the port binds, and the first
        result proton sees has a vif_type.
        """
        backend = RecordingBackend()
        malformed = [["ovs"], {"vif_details": {}},
                     {"vif_type": "ovs", "vif_details": {"tags": {1, 2}}}]
        broken = [True]
        seen = []

        def bind(uuid, *args):
            seen.append(uuid)
            if broken[0]:
                return malformed[(len(seen) - 1) % len(malformed)]
            return dict(VIF)

        backend.answers["bind_port"] = bind
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        asked = self.proton.bind("p1", "compute1", "vm1", timeout=30)
        yield wait_for(lambda: len(seen) >= 4, what="bind_port retried")
        self.assertNotEqual(shim.model.ports["p1"].binding, BOUND)
        self.assertNotIn("p1", shim.controller.told)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result, {})
        self.assertGreaterEqual(self.metric(shim, "shim_backend_calls_total",
                                            callback="bind_port", outcome="error"), 3)
        broken[0] = False
        outcome = yield asked
        self.assertEqual(outcome.result["vif_type"], "ovs")
        self.assertEqual(outcome.result["vif_details"], VIF["vif_details"])
        yield self.settled(shim)
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)
        history = yield self.history(keys.result_key("p1"))
        self.assertEqual([v for _, v in history],
                         [{}, outcome.result])


class DeepJSONTests(ReconcileCase):
    @inlineCallbacks
    def test_deep_json_skipped(self):
        """
        Case 6 (deep JSON): values nested too deeply for the parser, at start-up,
        during a resync beside the watch, a full resync and from the watch, are
        logged, counted as bad values and skipped; start-up and the resyncs complete
        and binds go on.
        """
        skipped = []

        def observe(event):
            if event.get("log_format", "").startswith("skipping {key}"):
                skipped.append((event["key"], event["revision"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        deep = b"[" * 5000
        put = yield self.client.put(keys.proton_key(keys.PORT, "deep"), deep)
        yield self.client.put(keys.proton_key(keys.VPN_INSTANCE, "deep-vpn"), deep)
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        bad = lambda: self.metric(shim, "shim_bad_input_total", reason="bad_value")
        self.assertEqual(bad(), 2)
        self.assertIn((keys.proton_key(keys.PORT, "deep"), put.revision), skipped)
        self.assertNotIn("deep", shim.model.ports)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")

        shim.request_resync("periodic")
        yield wait_for(lambda: shim.last_resync and shim.last_resync[1] == "periodic",
                       what="the periodic resync")
        self.assertEqual(bad(), 4)
        shim.request_resync("requested", full=True)
        yield wait_for(
            lambda: shim.ready and shim.last_resync[1] == "requested",
            what="the full resync")
        self.assertEqual(bad(), 6)
        yield self.client.put(keys.proton_key(keys.PORT, "deep2"), deep)
        yield self.make_port("p2")
        outcome = yield self.proton.bind("p2", "compute1", "vm2")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(bad(), 7)
        self.assertEqual(set(shim.model.ports), {"p1", "p2"})


def enable_auth(etcd, root_password, shim_password):
    """
    Through etcd's gateway (no etcdctl needed): the users and roles of
    docs/security.md (C{shim} reads /proton/, reads and writes /controller/), then
    authentication on.
    """
    def call(path, body):
        answer = etcd.call(path, body)
        if "error" in answer or "code" in answer:
            raise RuntimeError("etcd %s %r: %r" % (path, body, answer))

    call("auth/user/add", {"name": "root", "password": root_password})
    call("auth/role/add", {"name": "root"})
    call("auth/user/grant", {"user": "root", "role": "root"})
    call("auth/role/add", {"name": "shim"})
    for prefix, perm in (("/proton/", "READ"), ("/controller/", "READWRITE")):
        call("auth/role/grant", {"name": "shim", "perm": {
            "permType": perm, "key": b64(prefix),
            "range_end": b64(prefix_end(prefix.encode()))}})
    call("auth/user/add", {"name": "shim", "password": shim_password})
    call("auth/user/grant", {"user": "shim", "role": "shim"})
    call("auth/enable", {})


class ExpiredTokenTests(ReconcileCase):
    """
    Case 7 (expired authentication token), on an etcd with authentication on and
    simple tokens that live 2 seconds.
    """

    @inlineCallbacks
    def setUp(self):
        from shim.test.test_security import (
            ROOT_PASSWORD, SHIM_PASSWORD, etcd_section, write_password)
        self.etcd = start_etcd(self, extra_args=["--auth-token-ttl", "2"])
        enable_auth(self.etcd, ROOT_PASSWORD, SHIM_PASSWORD)
        self.client = EtcdClient([self.etcd.client_url], timeout=5, username="root",
                                 password=ROOT_PASSWORD)
        self.addCleanup(self.client.close)
        self.proton = ProtonClient(self.client)
        self.shims = ShimRunner(self, [self.etcd.client_url])
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.extra = etcd_section(
            username="shim", password_file=write_password(directory, SHIM_PASSWORD))
        yield self.client.status()

    @inlineCallbacks
    def test_watch_after_token_expired(self):
        """
        The token expires while the shim is idle, then etcd restarts (which kills
        every token): the watch resumes without restarting about ten times a
        second, and binds still work.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend, extra=self.extra)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")

        restarts = lambda: sum(
            s.value for m in shim.metrics.registry.collect()
            if m.name == "shim_watch_restarts" for s in m.samples
            if s.name == "shim_watch_restarts_total")
        # Idle past the token's life.
        yield sleep(3)
        # A loaded machine can see one ordinary restart; the old loop made about 40.
        self.assertLessEqual(restarts(), 1)
        yield self.make_port("p2")
        outcome = yield self.proton.bind("p2", "compute1", "vm2")
        self.assertEqual(outcome.result["controller"], "SimServer")

        before = restarts()
        self.etcd.restart()
        yield sleep(4)
        # Without backoff and a new token this is about 40.
        self.assertLess(restarts() - before, 12)
        yield wait_for(lambda: shim.ready, what="the shim to watch again")
        yield self.make_port("p3")
        outcome = yield self.proton.bind("p3", "compute1", "vm3")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)


class ResultWriteTests(ReconcileCase):
    """
    Case 8 (result writes).
    """

    def start_east(self, endpoints, client, backend):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = load_config(write_config(directory, endpoints, controller="East",
                                          hosts="e1"))
        east = ShimService(config, backend, client=client)
        east.startService()
        self.addCleanup(lambda: east.running and east.stopService())
        east.release_delay = 0.5
        return east.when_ready().addCallback(lambda _: east)

    @inlineCallbacks
    def assert_west_kept(self, east, west):
        """
        Both shims settle; the key holds West's result, and no result of East's was
        written after West's.
        """
        yield self.settled(west)
        yield wait_for(lambda: not east.writer.pending and not east.writer.delayed,
                       what="East's writes")
        yield self.settled(east)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result.get("controller"), "West", result)
        history = yield self.history(keys.result_key("p1"))
        values = [v for _, v in history]
        first_west = min(i for i, v in enumerate(values)
                         if v and v.get("controller") == "West")
        self.assertEqual([v for v in values[first_west:]
                          if not v or v.get("controller") != "West"], [])

    @inlineCallbacks
    def test_retried_publish_dropped_on_migration(self):
        """
        Case 8a: East's result write keeps failing while the port migrates to West's
        host; West answers proton, and East's result, retried once etcd is back, is
        never written over West's (nor is West's wiped by East's release).
        """
        proxy = FaultProxy(("127.0.0.1", self.etcd.client_port)).start()
        self.addCleanup(proxy.stop)
        watcher = EtcdClient([self.etcd.client_url])
        self.addCleanup(watcher.close)
        client = WatchingThroughAnother([proxy.url], watcher, timeout=2.0)
        east_backend = RecordingBackend()

        def cutting_bind(uuid, *args):
            d = proxy.cut()
            d.addCallback(lambda _: dict(VIF))
            return d

        east_backend.answers["bind_port"] = cutting_bind
        east = yield self.start_east([proxy.url], client, east_backend)
        west = yield self.shims.start(RecordingBackend(), controller="West", hosts="w1")
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.client.put(keys.result_key("p1"), b"{}")
        yield self.proton.put_object(keys.PORT, "p1", port_attrs("p1", "e1", "vm1"))
        yield wait_for(
            lambda: self.metric(east, "shim_result_writes_total",
                                operation="publish", outcome="error") >= 1,
            what="East's failing result write")
        outcome = yield self.proton.bind("p1", "w1", "vm1")
        self.assertEqual(outcome.result["controller"], "West")
        yield wait_for(lambda: east_backend.called("unbind_port", "p1") == 1,
                       what="East's unbind")
        proxy.restore()
        yield self.assert_west_kept(east, west)
        self.assertEqual(east.model.ports["p1"].binding, INUSE)

    @inlineCallbacks
    def test_repair_does_not_overwrite_another_shims_result(self):
        """
        Case 8b: the resync's repair of East's missing result is a compare-and-set:
        the port migrates and West writes its result while the repair is on its way,
        and the repair does not overwrite it.
        """
        client = GatedClient([self.etcd.client_url], timeout=2.0)
        self.addCleanup(client.close)
        east_backend = RecordingBackend()
        east = yield self.start_east([self.etcd.client_url], client, east_backend)
        west = yield self.shims.start(RecordingBackend(), controller="West", hosts="w1")
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "e1", "vm1")
        self.assertEqual(outcome.result["controller"], "East")
        yield self.settled(east)
        # East's result goes missing behind its back; the repair is held on its way.
        yield self.client.delete(keys.result_key("p1"))
        client.gate = Deferred()
        east.request_resync("periodic")
        yield wait_for(lambda: client.held, what="the repair's write")
        outcome = yield self.proton.bind("p1", "w1", "vm1")
        self.assertEqual(outcome.result["controller"], "West")
        yield wait_for(lambda: east_backend.called("unbind_port", "p1") == 1,
                       what="East's unbind")
        gate, client.gate = client.gate, None
        gate.callback(None)
        yield self.assert_west_kept(east, west)

    @inlineCallbacks
    def test_release_cancelled_by_new_bind(self):
        """
        Case 8c: a port that migrated away comes back to our host before the delayed
        release is written, and its new bind takes longer than the release delay:
        the release is cancelled, and proton's answer is our new result, never
        C{{}}.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend, extra="bind_timeout = 30")
        shim.release_delay = 0.5
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        outcome = yield self.proton.bind("p1", "compute9", "vm1", timeout=0.2)
        self.assertIsNone(outcome.result)
        yield wait_for(lambda: backend.called("unbind_port", "p1") == 1,
                       what="the unbind")
        self.assertIn("p1", shim.writer.delayed)
        backend.answers["bind_port"] = lambda uuid, *a: deferLater(
            _reactor(), 1.5, lambda: dict(VIF))
        outcome = yield self.proton.bind("p1", "compute2", "vm2")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(outcome.result["host_id"], "compute2")
        yield self.settled(shim)
        yield sleep(1.0)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result["host_id"], "compute2")
        history = yield self.history(keys.result_key("p1"))
        self.assertNotIn({}, [v for _, v in history][1:])


class GatedClient(EtcdClient):
    """
    A client whose compare-and-set puts wait while C{gate} is a Deferred, until it
    fires.

    @ivar held: how many puts waited.
    """

    gate = None
    held = 0

    @inlineCallbacks
    def put_if(self, *args, **kwargs):
        gate = self.gate
        if gate is not None:
            self.held += 1
            waiting = Deferred()
            gate.addCallback(lambda v: (waiting.callback(None), v)[1])
            yield waiting
        result = yield EtcdClient.put_if(self, *args, **kwargs)
        return result


def _reactor():
    from twisted.internet import reactor
    return reactor


class ClusterChangeTests(ReconcileCase):
    """
    Case 9 (cluster change): etcd replaced by a new cluster whose revisions are far
    lower, while old-cluster work is queued behind a hung bind.
    """

    @inlineCallbacks
    def replace_cluster(self):
        """
        Bind p1; hang the bind of port C{slow} and queue old-cluster changes of it
        behind; then replace etcd with a new cluster holding the same objects (C{slow}
        renamed C{new-cluster}) at far lower revisions.

        @return: C{(shim, backend, held binds, the old cluster's last revision)}.
        """
        old = self.etcd
        backend = RecordingBackend()
        held = {}
        # Without election: its lease, lost with the old cluster, would make the
        # shim stand by and take over, which restores from the results instead.
        shim = yield self.shims.start(
            backend, extra="bind_timeout = 60\n[election]\nenabled = false")
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        backend.answers["bind_port"] = lambda uuid, *a: held.setdefault(uuid, Deferred())
        yield self.make_port("slow")
        yield self.proton.put_object(keys.PORT, "slow",
                                     port_attrs("slow", "compute1", "vm-slow"))
        yield wait_for(lambda: "slow" in held, what="the hung bind")
        # Old-cluster work queued behind it, and a high revision.
        for i in range(20):
            yield self.proton.put_object(keys.PORT, "slow", port_attrs(
                "slow", "compute1", "vm-slow", name="old-%d" % (i,)))
        for i in range(150):
            yield self.client.put("/unrelated/%d" % (i,), b"x")
        yield self.settled_except(shim, "slow")
        old_status = yield self.client.status()
        old_cluster = shim.cluster_id

        found = yield self.client.get_all("/proton/")
        # The bind results, as restored from a backup (not the election's key,
        # whose lease the new cluster does not have).
        results = yield self.client.get_all(keys.RESULT_PREFIX)
        yield replace_cluster(
            self, old, [(kv.key, kv.value) for kv in found.kvs + results.kvs
                        if not kv.key.endswith("/slow")]
            + [(keys.proton_key(keys.PORT, "slow"), encode_object(
                port_attrs("slow", "compute1", "vm-slow", name="new-cluster")))])

        yield wait_for(lambda: shim.cluster_id not in (None, old_cluster), timeout=30,
                       what="the shim to see the new cluster")
        yield wait_for(lambda: shim.ready, timeout=30, what="the shim to be ready")
        self.assertEqual(self.metric(shim, "shim_resyncs_total",
                                     cause="cluster_changed"), 1)
        return shim, backend, held, old_status.revision

    @inlineCallbacks
    def test_old_work_discarded_new_revisions_applied(self):
        """
        The old work is discarded, and the new cluster's changes (at lower revisions
        than the old cluster's) are applied and reach the backend.
        """
        shim, backend, held, old_revision = yield self.replace_cluster()
        held["slow"].callback(dict(VIF))
        # New-cluster changes, at revisions far below the old cluster's.
        yield self.proton.put_object(keys.PORT, "p1", port_attrs(
            "p1", "compute1", "vm1", name="renamed-in-new-cluster"))
        status = yield self.client.status()
        self.assertLess(status.revision, old_revision)
        yield self.settled(shim)
        self.assertEqual(shim.model.ports["p1"]["name"], "renamed-in-new-cluster")
        self.assertEqual(shim.model.ports["slow"]["name"], "new-cluster")
        found = yield self.client.get(keys.proton_key(keys.PORT, "p1"))
        self.assertEqual(shim.model.ports["p1"].revision, found.kvs[0].mod_revision)
        modified = {a[0]: a[2].new.get("name")
                    for a in self.arguments_of(backend, "modify_port")}
        self.assertEqual(modified.get("p1"), "renamed-in-new-cluster")
        self.assertEqual(modified.get("slow"), "new-cluster")
        # The old cluster's queued names never reached the backend.
        names = [a[2].new.get("name") for a in self.arguments_of(backend, "modify_port")]
        self.assertEqual([n for n in names if n and n.startswith("old-")], [])
        for uuid in ("p1", "slow"):
            result = yield read_result(self.client, uuid)
            self.assertEqual(result["controller"], "SimServer")

    @inlineCallbacks
    def test_old_bind_failing_after_change(self):
        """
        The old cluster's bind fails after the new cluster's snapshot asked for the
        port: the port is bound by a retry, not left until the next periodic resync.
        """
        shim, backend, held, _ = yield self.replace_cluster()
        backend.answers["bind_port"] = lambda uuid, *a: dict(VIF)
        held["slow"].errback(RuntimeError("controller lost"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        yield wait_for(lambda: self.result_is("slow", lambda r: r.get("controller")),
                       what="the bind of slow retried")
        yield self.settled(shim)
        self.assertEqual(shim.model.ports["slow"].binding, BOUND)
        self.assertEqual(backend.called("bind_port", "slow"), 2)

    def settled_except(self, shim, busy):
        """
        Wait until the shim has applied every revision etcd has (one key's worker
        still running).
        """
        @inlineCallbacks
        def check():
            status = yield self.client.status()
            return shim.revision >= status.revision
        return wait_for(check, what="the shim to apply every event")


class BoundedBufferTests(ReconcileCase):
    @inlineCallbacks
    def test_events_coalesce_behind_a_hung_worker(self):
        """
        Case 10 (bounded buffers): many events for one port while its worker hangs
        in modify_port leave one queue entry for the key; the backend then hears the
        latest port, once.
        """
        backend = RecordingBackend()
        held = []

        def modify(uuid, *args):
            if not held:
                held.append(Deferred())
                return held[0]
            return None

        backend.answers["modify_port"] = modify
        shim = yield self.shims.start(backend, extra="backend_timeout = 60")
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.proton.put_object(keys.PORT, "p1", port_attrs(
            "p1", "compute1", "vm1", name="n0"))
        yield wait_for(lambda: held, what="modify_port")
        for i in range(1, 301):
            yield self.proton.put_object(keys.PORT, "p1", port_attrs(
                "p1", "compute1", "vm1", name="n%d" % (i,)))
        status = yield self.client.status()
        yield wait_for(lambda: shim.revision >= status.revision,
                       what="every event applied")
        self.assertEqual(shim.queue.depth, 1)
        self.assertEqual(len(shim.queue), 1)
        self.assertLessEqual(
            shim.metrics.registry.get_sample_value("shim_workqueue_depth"), 1)
        held[0].callback(None)
        yield self.settled(shim)
        names = [a[2].new["name"] for a in self.arguments_of(backend, "modify_port")]
        self.assertEqual(names, ["n0", "n300"])
        self.assertEqual(shim.controller.told["p1"].port["name"], "n300")
        self.assertEqual(shim.queue.depth, 0)

    @inlineCallbacks
    def test_watch_message_too_large(self):
        """
        Case 10: one watch message over the cap (C{MAX_WATCH_MESSAGE}, lowered here)
        ends the watch with reason C{too_large} and forces a full resync, not a
        resume that would read it again; the large object is read by the snapshot
        and binds go on.
        """
        self.patch(watch_module, "MAX_WATCH_MESSAGE", 64 * 1024)
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.proton.put_object(keys.PORT, "big", port_attrs(
            "big", name="x" * (200 * 1024)))
        yield wait_for(
            lambda: self.metric(shim, "shim_resyncs_total", cause="too_large") == 1,
            what="the full resync")
        yield wait_for(lambda: shim.ready, what="the shim to watch again")
        self.assertEqual(
            self.metric(shim, "shim_watch_restarts_total", reason="too_large"), 1)
        self.assertEqual(len(shim.model.ports["big"]["name"]), 200 * 1024)
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        self.assertEqual(
            self.metric(shim, "shim_resyncs_total", cause="too_large"), 1)


class AskedAgainTests(ReconcileCase):
    @inlineCallbacks
    def test_asked_again_answered_again(self):
        """
        Proton asking again (the port rewritten with the same placement and
        C{vif_type} null, after our result) gets a new revision of the result,
        without a second bind_port; a rewrite carrying our result (proton copied
        it) writes nothing.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        first = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(first.result["controller"], "SimServer")
        yield self.settled(shim)
        before = yield self.client.get(keys.result_key("p1"))
        # Proton never copied the answer (it timed out), and Nova asks again.
        self.proton.objects[(keys.PORT, "p1")].update(vif_type=None, vif_details=None)
        again = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(again.result, first.result)
        after = yield self.client.get(keys.result_key("p1"))
        self.assertGreater(after.kvs[0].mod_revision, before.kvs[0].mod_revision)
        self.assertEqual(backend.calls, [("bind_port", "p1")])
        yield self.settled(shim)
        # Proton copies the answer into the port: nothing more to write.
        yield self.proton.put_object(keys.PORT, "p1", port_attrs(
            "p1", "compute1", "vm1", vif_type="ovs",
            vif_details=json.dumps(VIF["vif_details"])))
        yield self.settled(shim)
        latest = yield self.client.get(keys.result_key("p1"))
        self.assertEqual(latest.kvs[0].mod_revision, after.kvs[0].mod_revision)
        self.assertEqual(backend.calls, [("bind_port", "p1")])


class HeldResultsClient(EtcdClient):
    """
    A client whose read of the bind results waits while C{gate} is a Deferred, until
    it fires: a resync beside the watch held between its read of the tables and
    its read of the results.

    @ivar held: how many reads of the results waited.
    """

    gate = None
    held = 0

    @inlineCallbacks
    def get_all(self, prefix, *args, **kwargs):
        gate = self.gate
        if gate is not None and prefix == keys.result_key(""):
            self.held += 1
            waiting = Deferred()
            gate.addCallback(lambda v: (waiting.callback(None), v)[1])
            yield waiting
        result = yield EtcdClient.get_all(self, prefix, *args, **kwargs)
        return result


class BindDuringResyncTests(ReconcileCase):
    @inlineCallbacks
    def test_result_written_during_a_resync_not_written_again(self):
        """
        A port bound while a periodic resync reads: the resync reads the results at
        a revision from before the bind, so the result is not in what it read.  It
        is newer than the read, not missing: after the resync the shim neither
        reads the key nor writes the result again.
        """
        client = HeldResultsClient([self.etcd.client_url])
        backend = RecordingBackend()
        shim = self.start_service(client, backend)
        yield shim.when_ready()
        yield self.make_vpn()
        yield self.make_port("p1")

        client.gate = gate = Deferred()
        shim.request_resync("periodic")
        yield wait_for(lambda: client.held, what="the resync's read of the results")
        client.gate = None
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        reads = []
        read = client.get

        def counting_get(key, *args, **kwargs):
            reads.append(key)
            return read(key, *args, **kwargs)
        client.get = counting_get
        gate.callback(None)
        yield wait_for(lambda: shim.last_resync and shim.last_resync[1] == "periodic",
                       what="the periodic resync")
        yield self.settled(shim)
        history = yield self.history(keys.result_key("p1"))
        self.assertEqual([v for _, v in history][-1]["controller"], "SimServer")
        self.assertEqual(
            len([v for _, v in history if v and v.get("controller")]), 1, history)
        self.assertNotIn(keys.result_key("p1"), reads)
        self.assertEqual(backend.calls, [("bind_port", "p1")])


class ResyncOrderTests(ReconcileCase):
    """
    Resyncs asked for while another runs: a read beside the watch and a full read
    never hand the sink their snapshots at once, and no resync asked for is lost.
    """

    @inlineCallbacks
    def start_recording(self):
        """
        A shim on a L{HeldResultsClient}, with a bound port, whose sink calls about
        snapshots are recorded in C{self.heard} as C{(call, full)}.
        """
        self.held_client = HeldResultsClient([self.etcd.client_url])
        self.backend = RecordingBackend()
        shim = self.start_service(self.held_client, self.backend)
        self.heard = heard = []
        for call in ("snapshot_started", "snapshot_applied"):
            def recorded(*args, _call=call, _original=getattr(shim, call), **kwargs):
                heard.append((_call, kwargs.get("full", args[-1] if args else True)))
                return _original(*args, **kwargs)
            setattr(shim, call, recorded)
        original_results = shim.snapshot_results

        def results(kvs, restore):
            heard.append(("snapshot_results", None))
            return original_results(kvs, restore)
        shim.snapshot_results = results
        yield shim.when_ready()
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        del heard[:]
        return shim

    @inlineCallbacks
    def during_a_full_read(self, shim, cause, full=False):
        """
        Ask C{shim} for a full resync, and for another (C{cause}, C{full}) while
        the first's read of the results is held; then let that read go on.
        """
        client = self.held_client
        client.gate = gate = Deferred()
        shim.request_resync("requested", full=True)
        yield wait_for(lambda: client.held, what="the full read's results")
        client.gate = None
        shim.request_resync(cause, full=full)
        gate.callback(None)

    def assertNotInterleaved(self, heard):
        """
        Between a snapshot's start and its end the sink hears only that snapshot's
        results: C{heard} is whole C{started, results..., applied} runs, but that a
        read beside the watch may end early when a full one starts.

        @return: the runs, each C{"full"}, C{"beside"} or C{"beside, gave way"}.
        """
        runs, current = [], None
        for call, full in heard:
            if call == "snapshot_started":
                if current is False and full:
                    runs.append("beside, gave way")
                else:
                    self.assertIsNone(current, heard)
                current = full
            elif call == "snapshot_applied":
                self.assertEqual(current, full, heard)
                runs.append("full" if full else "beside")
                current = None
            else:
                self.assertIsNotNone(current, heard)
        self.assertIsNone(current, heard)
        return runs

    @inlineCallbacks
    def test_full_read_waits_for_the_read_beside(self):
        """
        A full resync asked for while a periodic one reads beside the watch: the
        periodic one gives way at its next page, and only then does the full read
        begin.  The port's result is neither missing nor written again, and the
        backend hears nothing more.
        """
        shim = yield self.start_recording()
        client = self.held_client
        client.gate = gate = Deferred()
        shim.request_resync("periodic")
        yield wait_for(lambda: client.held, what="the periodic resync's results read")
        client.gate = None
        shim.request_resync("requested", full=True)
        yield wait_for(
            lambda: shim.follower._give_way or ("snapshot_started", True) in self.heard,
            what="the full resync to begin or to wait")
        gate.callback(None)
        yield wait_for(lambda: shim.ready and shim.last_resync[1] == "requested",
                       what="the full resync")
        yield self.settled(shim)
        self.assertEqual(self.assertNotInterleaved(self.heard),
                         ["beside, gave way", "full"])
        history = yield self.history(keys.result_key("p1"))
        self.assertEqual(
            len([v for _, v in history if v and v.get("controller")]), 1, history)
        self.assertEqual(self.backend.calls, [("bind_port", "p1")])
        outcome = yield self.proton.bind("p1", "compute1", "vm2")
        self.assertEqual(outcome.result["controller"], "SimServer")

    @inlineCallbacks
    def test_resync_asked_during_a_full_read_follows_it(self):
        """
        An operator's resync asked for while a full read runs is not lost, nor
        does it wait for the watch to end: it runs beside the watch once the watch
        is live.  The watch's next end resumes it without reading everything again.
        """
        shim = yield self.start_recording()
        yield self.during_a_full_read(shim, "admin")
        yield wait_for(lambda: shim.last_resync and shim.last_resync[1] == "admin",
                       what="the operator's resync after the full one")
        self.assertEqual(self.assertNotInterleaved(self.heard), ["full", "beside"])
        shim.follower._watch.stop()
        yield wait_for(lambda: not shim.ready, what="the watch to end")
        yield wait_for(lambda: shim.ready, what="the watch to resume")
        yield self.make_port("p2")
        outcome = yield self.proton.bind("p2", "compute1", "vm2")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(self.assertNotInterleaved(self.heard), ["full", "beside"])
        self.assertEqual(self.backend.calls, [("bind_port", "p1"), ("bind_port", "p2")])

    @inlineCallbacks
    def test_full_resync_asked_during_a_full_read_follows_it(self):
        """
        A full resync asked for while a full read runs follows it at once.
        """
        shim = yield self.start_recording()
        yield self.during_a_full_read(shim, "admin", full=True)
        yield wait_for(lambda: shim.ready and shim.last_resync[1] == "admin",
                       what="the second full read")
        self.assertEqual(self.assertNotInterleaved(self.heard), ["full", "full"])


class TakeoverDuringResyncTests(ReconcileCase):
    """
    A standby elected while a resync it began as a standby still reads.
    """

    def start_shim(self, backend, client):
        return self.start_service(
            client, backend, election_client=EtcdClient([self.etcd.client_url]))

    @inlineCallbacks
    def take_over(self, old, new, gate):
        """
        C{old} steps down while C{new}'s read is held at C{gate}; then the read
        goes on.  Wait until C{new} leads, its takeover's resync is done and it is
        idle; port p1, bound by C{old}, is restored in C{new}.
        """
        yield old.step_down()
        yield wait_for(lambda: new.role == LEADER, what="the new shim to take over")
        gate.callback(None)
        yield wait_for(lambda: new.last_resync and new.last_resync[1] == "takeover",
                       what="the takeover's resync")
        yield self.settled(new)
        self.assertIn("p1", new.controller.told)

    @inlineCallbacks
    def test_takeover_waits_for_its_restore(self):
        """
        The standby's periodic resync took no restore: when it ends, the new
        leader still does nothing until its takeover's own read has restored the
        bind results as what the backend holds.  The port the old leader bound
        is not bound again, and the new leader answers a new bind.
        """
        old = self.start_shim(RecordingBackend(), EtcdClient([self.etcd.client_url]))
        yield old.when_ready()
        yield wait_for(lambda: old.role == LEADER, what="the first shim to lead")
        client = HeldResultsClient([self.etcd.client_url])
        backend = RecordingBackend()
        new = self.start_shim(backend, client)
        yield new.when_ready()
        self.assertEqual(new.role, STANDBY)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(old.backend.backend.calls, [("bind_port", "p1")])

        client.gate = gate = Deferred()
        new.request_resync("periodic")
        yield wait_for(lambda: client.held, what="the standby's periodic resync")
        client.gate = None
        yield self.take_over(old, new, gate)
        self.assertEqual(backend.calls, [])
        yield self.make_port("p2")
        outcome = yield self.proton.bind("p2", "compute1", "vm2")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(backend.calls, [("bind_port", "p2")])

    @inlineCallbacks
    def test_first_read_begun_before_the_election_does_not_restore(self):
        """
        A standby elected during its first read: that read's results are from
        before the old leader's last bind.  The work waits for a read begun after
        the election, so the port bound last is restored, not bound again.
        """
        old = self.start_shim(RecordingBackend(), EtcdClient([self.etcd.client_url]))
        yield old.when_ready()
        yield wait_for(lambda: old.role == LEADER, what="the first shim to lead")
        yield self.make_vpn()
        yield self.make_port("p1")
        client = HeldResultsClient([self.etcd.client_url])
        client.gate = gate = Deferred()
        backend = RecordingBackend()
        new = self.start_shim(backend, client)
        yield wait_for(lambda: client.held, what="the new shim's first read")
        client.gate = None
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.take_over(old, new, gate)
        self.assertEqual(backend.calls, [])
