"""
The shim service end to end against a real etcd, with proton's side played by
L{shim.proton.ProtonClient}.
"""

from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.trial.unittest import TestCase

from shim import keys
from shim.portstate import BOUND, INUSE, UNBOUND
from shim.test.etcdserver import start_etcd
from shim.test.proxy import FaultProxy
from shim.test.support import (
    VIF,
    RecordingBackend,
    ShimRunner,
    port_attrs,
    proton_side,
    read_result,
    sleep,
    wait_for,
)

VPN = "vpn-1"
RT = "100:1"


class ServiceTestCase(TestCase):
    """
    A fresh etcd, a client, proton's side and a way to start shims, per test.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self)
        self.client, self.proton = proton_side(self, self.etcd)
        self.shims = ShimRunner(self, [self.etcd.client_url])
        yield self.client.status()

    @inlineCallbacks
    def make_vpn(self, vpn=VPN, rts=(RT,)):
        for rt in rts:
            yield self.proton.put_object(
                keys.VPN_AFCONFIG, keys.afconfig_name(rt),
                {"vrf_rt_value": rt, "vrf_rt_type": "both",
                 "import_route_policy": None, "export_route_policy": None},
            )
        yield self.proton.put_object(
            keys.VPN_INSTANCE, vpn,
            {"id": vpn, "vpn_instance_name": vpn, "description": None,
             "ipv4_family": ",".join(rts), "ipv6_family": None,
             "route_distinguishers": "100:100"},
        )

    @inlineCallbacks
    def make_port(self, uuid, vpn=VPN, host="", device=""):
        yield self.proton.put_object(keys.PORT, uuid, port_attrs(uuid, host, device))
        if vpn is not None:
            yield self.proton.put_object(
                keys.VPN_PORT, uuid, {"id": uuid, "vpn_instance": vpn}
            )

    def settled(self, shim):
        """
        Wait until the shim has applied everything written so far and is idle.
        """
        return wait_for(
            lambda: self._settled(shim), what="the shim to apply every event"
        )

    @inlineCallbacks
    def _settled(self, shim):
        status = yield self.client.status()
        return (
            shim.revision >= status.revision
            and len(shim.queue) == 0
            and not shim.results.pending
        )


class BindTests(ServiceTestCase):
    @inlineCallbacks
    def test_bind_on_our_host(self):
        """
        A bind request on one of our hosts is answered within proton's 8 seconds with
        the backend's result and our controller name.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(
            outcome.result,
            {"vif_type": "ovs", "vif_details": VIF["vif_details"],
             "controller": "SimServer", "host_id": "compute1", "device_id": "vm1"},
        )
        self.assertEqual(backend.called("bind_port", "p1"), 1)
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)
        self.assertEqual(shim.model.ports["p1"].vif_type, "ovs")

    @inlineCallbacks
    def test_bind_on_another_host(self):
        """
        A bind request on a host that is not ours writes nothing: the port is InUse.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute9", "vm1", timeout=0.5)
        self.assertIsNone(outcome.result)
        yield self.settled(shim)
        self.assertEqual(shim.model.ports["p1"].binding, INUSE)
        self.assertEqual(backend.calls, [])
        result = yield read_result(self.client, "p1")
        self.assertEqual(result, {})

    @inlineCallbacks
    def test_unbind(self):
        """
        Unbinding a port bound by us calls unbind_port and writes {}.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.proton.bind("p1", "compute1", "vm1")
        yield self.proton.unbind("p1")
        yield self.settled(shim)
        self.assertEqual(backend.called("unbind_port", "p1"), 1)
        self.assertEqual(shim.model.ports["p1"].binding, UNBOUND)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result, {})

    @inlineCallbacks
    def test_migration_to_another_host(self):
        """
        A bound port whose host changes to one that is not ours is unbound and InUse.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        shim.release_delay = 0.5
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.proton.bind("p1", "compute1", "vm1")
        outcome = yield self.proton.bind("p1", "compute9", "vm1", timeout=0.2)
        # Nobody serves compute9: proton's wait ends without an answer, and in
        # particular without our "{}" ...
        self.assertIsNone(outcome.result)
        yield self.settled(shim)
        self.assertEqual(backend.called("unbind_port", "p1"), 1)
        self.assertEqual(shim.model.ports["p1"].binding, INUSE)
        # ... which is written once the wait is over.
        yield wait_for(
            lambda: read_result(self.client, "p1").addCallback(lambda r: r == {}),
            what="the released bind result",
        )

    @inlineCallbacks
    def test_delete_bound_port(self):
        """
        Deleting a bound port calls delete_port with the deleted port and removes the
        bind result key.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.proton.bind("p1", "compute1", "vm1")
        yield self.proton.delete_object(keys.PORT, "p1")
        yield self.settled(shim)
        self.assertEqual(backend.called("delete_port", "p1"), 1)
        deleted = [a for c, a in backend.arguments if c == "delete_port"][0][2]
        self.assertEqual(deleted["id"], "p1")
        self.assertNotIn("p1", shim.model.ports)
        result = yield read_result(self.client, "p1")
        self.assertIsNone(result)

    @inlineCallbacks
    def test_attribute_change_of_bound_port(self):
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.proton.bind("p1", "compute1", "vm1")
        yield self.proton.put_object(
            keys.PORT, "p1", port_attrs("p1", "compute1", "vm1", name="renamed")
        )
        yield self.settled(shim)
        self.assertEqual(backend.called("modify_port", "p1"), 1)
        changes = [a for c, a in backend.arguments if c == "modify_port"][0][2]
        self.assertEqual(changes.new["name"], "renamed")
        self.assertEqual(changes.prev["name"], "port p1")


class ServiceEventTests(ServiceTestCase):
    @inlineCallbacks
    def test_afconfig_change_reaches_vpns_listing_it(self):
        """
        A route target change reaches modify_service for the VPN that lists it as an
        element, not for the one that lists a longer target with the same prefix.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn("vpn-a", ("100:1",))
        yield self.make_vpn("vpn-b", ("100:10",))
        yield self.make_port("pa", vpn="vpn-a")
        yield self.make_port("pb", vpn="vpn-b")
        yield self.proton.bind("pa", "compute1", "vm1")
        yield self.proton.bind("pb", "compute1", "vm2")
        yield self.proton.put_object(
            keys.VPN_AFCONFIG, "100:1",
            {"vrf_rt_value": "100:1", "vrf_rt_type": "export_extcommunity"},
        )
        yield self.settled(shim)
        self.assertEqual(backend.called("modify_service", "vpn-a"), 1)
        self.assertEqual(backend.called("modify_service", "vpn-b"), 0)
        yield self.proton.delete_object(keys.VPN_AFCONFIG, "100:10")
        yield self.settled(shim)
        self.assertEqual(backend.called("modify_service", "vpn-b"), 1)
        self.assertEqual(backend.called("modify_service", "vpn-a"), 1)

    @inlineCallbacks
    def test_vpn_change_and_delete(self):
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_vpn("unused")
        yield self.make_port("p1")
        yield self.proton.bind("p1", "compute1", "vm1")
        yield self.proton.put_object(
            keys.VPN_INSTANCE, VPN,
            {"id": VPN, "ipv4_family": RT, "description": "changed"},
        )
        yield self.proton.put_object(
            keys.VPN_INSTANCE, "unused", {"id": "unused", "description": "x"}
        )
        yield self.settled(shim)
        self.assertEqual(backend.called("modify_service", VPN), 1)
        self.assertEqual(backend.called("modify_service", "unused"), 0)
        yield self.proton.delete_object(keys.VPN_INSTANCE, VPN)
        yield self.proton.delete_object(keys.VPN_INSTANCE, "unused")
        yield self.settled(shim)
        self.assertEqual(backend.called("delete_service", VPN), 1)
        self.assertEqual(backend.called("delete_service", "unused"), 0)

    @inlineCallbacks
    def test_service_binding_changes(self):
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_vpn("vpn-2")
        yield self.make_port("p1")
        yield self.proton.bind("p1", "compute1", "vm1")
        yield self.proton.put_object(
            keys.VPN_PORT, "p1", {"id": "p1", "vpn_instance": "vpn-2"}
        )
        yield self.proton.delete_object(keys.VPN_PORT, "p1")
        yield self.settled(shim)
        self.assertEqual(backend.called("modify_service_binding", "p1"), 1)
        prev = [a for c, a in backend.arguments if c == "modify_service_binding"][0][2]
        self.assertEqual(prev["vpn_instance"], VPN)
        self.assertEqual(backend.called("delete_service_binding", "p1"), 1)

    @inlineCallbacks
    def test_vpn_port_before_its_port(self):
        """
        A VPNPort that arrives before its port is kept, and the port binds with it.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.proton.put_object(
            keys.VPN_PORT, "p1", {"id": "p1", "vpn_instance": VPN}
        )
        yield self.make_port("p1", vpn=None)
        yield self.settled(shim)
        self.assertEqual(shim.model.vpn_of_port("p1"), VPN)
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")

    @inlineCallbacks
    def test_rejected_bind_retried_when_vpn_port_arrives(self):
        """
        The dummy backend rejects a port without a VPNPort; the bind is done when the
        VPNPort arrives.
        """
        from shim.plugins.dummy import DummyBackend

        shim = yield self.shims.start(DummyBackend({}))
        yield self.make_vpn()
        yield self.make_port("p1", vpn=None)
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=0.5)
        self.assertIsNone(outcome.result)
        yield self.settled(shim)
        self.assertEqual(shim.model.ports["p1"].binding, UNBOUND)
        yield self.proton.put_object(
            keys.VPN_PORT, "p1", {"id": "p1", "vpn_instance": VPN}
        )
        yield wait_for(
            lambda: shim.model.ports["p1"].binding == BOUND, what="the retried bind"
        )
        # The state changes when bind_port answers; the result is written after.
        yield self.settled(shim)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result["controller"], "SimServer")

    @inlineCallbacks
    def test_bad_values_are_skipped(self):
        """
        Values that are not JSON, not objects or under malformed keys are skipped and
        counted; the next good event is applied.
        """
        shim = yield self.shims.start(RecordingBackend())
        yield self.client.put("/proton/net-l3vpn/ProtonBasePort/bad1", b"{not json")
        yield self.client.put("/proton/net-l3vpn/ProtonBasePort/bad2", b"[1, 2]")
        yield self.client.put("/proton/net-l3vpn/ProtonBasePort/bad3", b"\xff\xfe")
        yield self.client.put("/proton/net-l3vpn/ProtonBasePort", b"{}")
        yield self.client.put("/proton/net-l3vpn/ProtonBasePort/a/b", b"{}")
        yield self.client.put("/proton/net-l2/Port/x", b"{}")
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.settled(shim)
        self.assertEqual(set(shim.model.ports), {"p1"})
        bad = shim.metrics.registry.get_sample_value(
            "shim_bad_input_total", {"reason": "bad_value"}
        )
        self.assertEqual(bad, 3)
        bad_keys = shim.metrics.registry.get_sample_value(
            "shim_bad_input_total", {"reason": "bad_key"}
        )
        self.assertEqual(bad_keys, 2)


class RestartTests(ServiceTestCase):
    @inlineCallbacks
    def test_restart_keeps_bound_ports(self):
        """
        A shim restarted with ports it bound takes them back as Bound without calling
        bind_port again.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        for uuid in ("p1", "p2"):
            yield self.make_port(uuid)
            yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
        yield self.make_port("p3")
        yield self.proton.bind("p3", "compute9", "vm-p3", timeout=0.2)
        yield self.settled(shim)
        yield shim.stopService()

        again = RecordingBackend()
        shim2 = yield self.shims.start(again)
        yield self.settled(shim2)
        self.assertEqual(again.calls, [])
        self.assertEqual(shim2.model.ports["p1"].binding, BOUND)
        self.assertEqual(shim2.model.ports["p2"].binding, BOUND)
        self.assertEqual(shim2.model.ports["p3"].binding, INUSE)
        yield self.proton.unbind("p1")
        yield self.settled(shim2)
        self.assertEqual(again.calls, [("unbind_port", "p1")])

    @inlineCallbacks
    def test_bind_requested_while_down(self):
        """
        A bind requested while the shim was not running is done at start; a port bound
        by the shim and unbound meanwhile is unbound at start.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("gone-while-down")
        yield self.make_port("unbound-while-down")
        yield self.proton.bind("gone-while-down", "compute1", "vm1")
        yield self.proton.bind("unbound-while-down", "compute1", "vm2")
        yield self.settled(shim)
        yield shim.stopService()

        yield self.make_port("p1", host="compute2", device="vm3")
        yield self.proton.unbind("unbound-while-down")
        yield self.proton.delete_object(keys.PORT, "gone-while-down")
        again = RecordingBackend()
        shim2 = yield self.shims.start(again)
        yield self.settled(shim2)
        self.assertEqual(shim2.model.ports["p1"].binding, BOUND)
        self.assertEqual(
            sorted(again.calls),
            [("bind_port", "p1"), ("delete_port", "gone-while-down"),
             ("unbind_port", "unbound-while-down")],
        )
        result = yield read_result(self.client, "p1")
        self.assertEqual(result["controller"], "SimServer")
        result = yield read_result(self.client, "unbound-while-down")
        self.assertEqual(result, {})
        result = yield read_result(self.client, "gone-while-down")
        self.assertIsNone(result)

    @inlineCallbacks
    def test_work_after_a_read_waits_for_the_watch(self):
        """
        The work a start-up read calls for (here, a bind asked while no shim ran)
        begins once the watch that follows the read is open, not before: the
        watch's request is held 1 s on its way to etcd.
        """
        yield self.make_vpn()
        yield self.make_port("p1", host="compute1", device="vm1")
        proxy = FaultProxy(("127.0.0.1", self.etcd.client_port)).start()
        self.addCleanup(proxy.stop)
        proxy.hold_requests(b"/v3/watch", 1.0)
        backend = RecordingBackend()
        ready_when_called = []

        def bind_port(*args):
            ready_when_called.append(shim.ready)
            return dict(VIF)
        backend.answers["bind_port"] = bind_port
        shim = yield ShimRunner(self, [proxy.url]).start(backend, wait=False)
        yield wait_for(lambda: backend.calls, what="the bind asked while down")
        proxy.hold_requests(None, 0)
        self.assertEqual(ready_when_called, [True])
        yield self.settled(shim)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result["controller"], "SimServer")


class TwoShimTests(ServiceTestCase):
    @inlineCallbacks
    def test_two_shims_different_hosts(self):
        """
        Two shims with different host lists on one etcd: each binds its own hosts' ports,
        and a migration from one to the other leaves the gaining shim's result.
        """
        east = RecordingBackend()
        west = RecordingBackend()
        shim_e = yield self.shims.start(east, controller="East", hosts="e1, e2")
        shim_w = yield self.shims.start(west, controller="West", hosts="w1")
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.make_port("p2")
        out1 = yield self.proton.bind("p1", "e1", "vm1")
        out2 = yield self.proton.bind("p2", "w1", "vm2")
        self.assertEqual(out1.result["controller"], "East")
        self.assertEqual(out2.result["controller"], "West")
        self.assertEqual(shim_e.model.ports["p2"].binding, INUSE)
        self.assertEqual(shim_w.model.ports["p1"].binding, INUSE)
        out = yield self.proton.bind("p1", "w1", "vm1")
        self.assertEqual(out.result["controller"], "West")
        yield self.settled(shim_e)
        yield self.settled(shim_w)
        self.assertEqual(east.called("unbind_port", "p1"), 1)
        self.assertEqual(shim_e.model.ports["p1"].binding, INUSE)
        self.assertEqual(shim_w.model.ports["p1"].binding, BOUND)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result["controller"], "West")


class FailingBackendTests(ServiceTestCase):
    @inlineCallbacks
    def test_deferred_backend(self):
        """
        A backend answering with Deferreds that fire later: results are written after
        bind_port's Deferred fires, calls for one port never overlap.
        """
        backend = RecordingBackend()
        active = set()
        overlaps = []

        def slow(uuid, *args):
            if uuid in active:
                overlaps.append(uuid)
            active.add(uuid)
            d = sleep(0.05)
            d.addCallback(lambda _: active.discard(uuid))
            return d

        def slow_bind(uuid, *args):
            d = slow(uuid)
            d.addCallback(lambda _: dict(VIF))
            return d

        backend.answers["bind_port"] = slow_bind
        backend.answers["modify_port"] = slow
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        for i in range(5):
            yield self.proton.put_object(
                keys.PORT, "p1", port_attrs("p1", "compute1", "vm1", name="n%d" % i)
            )
        yield self.settled(shim)
        self.assertEqual(overlaps, [])
        # Changes that arrive while a call runs are coalesced: the backend hears the
        # latest port, at most once per change.
        self.assertIn(backend.called("modify_port", "p1"), range(1, 6))
        self.assertEqual(shim.controller.told["p1"].port["name"], "n4")

    @inlineCallbacks
    def test_raising_and_failing_backends(self):
        """
        A bind_port that raises or fails its Deferred leaves the port Unbound, counts
        as an error and is retried with backoff; other ports and later events go on,
        and once the backend recovers the port binds with nothing else changing.
        """
        backend = RecordingBackend()
        broken = {"raises", "fails"}

        def bad_bind(uuid, *args):
            if uuid == "raises" and uuid in broken:
                raise RuntimeError("controller unreachable")
            if uuid == "fails" and uuid in broken:
                return fail(ValueError("bad answer"))
            return dict(VIF)

        backend.answers["bind_port"] = bad_bind
        shim = yield self.shims.start(backend)
        yield self.make_vpn()
        for uuid in ("raises", "fails", "fine"):
            yield self.make_port(uuid)
        yield self.proton.bind("raises", "compute1", "vm1", timeout=0.3)
        yield self.proton.bind("fails", "compute1", "vm2", timeout=0.3)
        outcome = yield self.proton.bind("fine", "compute1", "vm3")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(shim.model.ports["raises"].binding, UNBOUND)
        self.assertEqual(shim.model.ports["fails"].binding, UNBOUND)
        errors = shim.metrics.registry.get_sample_value(
            "shim_backend_calls_total", {"callback": "bind_port", "outcome": "error"}
        )
        self.assertGreaterEqual(errors, 2)
        # The backend recovers: the ports bind on their next retry.
        broken.clear()
        yield wait_for(
            lambda: shim.model.ports["raises"].binding == BOUND
            and shim.model.ports["fails"].binding == BOUND, what="the retried binds"
        )
        yield self.settled(shim)
        self.assertGreaterEqual(len(self.flushLoggedErrors(RuntimeError, ValueError)), 2)
        for uuid, device in (("raises", "vm1"), ("fails", "vm2")):
            result = yield read_result(self.client, uuid)
            self.assertEqual(result["device_id"], device)

    @inlineCallbacks
    def test_hanging_backend_times_out(self):
        """
        A callback whose Deferred never fires is timed out and does not block other
        ports.
        """
        backend = RecordingBackend()
        backend.answers["bind_port"] = lambda uuid, *a: (
            Deferred() if uuid == "hangs" else dict(VIF)
        )
        shim = yield self.shims.start(backend, extra="backend_timeout = 0.5")
        yield self.make_vpn()
        yield self.make_port("hangs")
        yield self.make_port("fine")
        yield self.proton.bind("hangs", "compute1", "vm1", timeout=0.1)
        outcome = yield self.proton.bind("fine", "compute1", "vm2")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        timeouts = shim.metrics.registry.get_sample_value(
            "shim_backend_calls_total", {"callback": "bind_port", "outcome": "timeout"}
        )
        self.assertEqual(timeouts, 1)
        self.assertEqual(shim.model.ports["hangs"].binding, UNBOUND)
