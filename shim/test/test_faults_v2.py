"""
The shim over etcd's v2 API (C{[etcd] api = v2}, the API every real proton-server
writes through) against etcd failing for real, the same faults as the v3 tests of
L{shim.test.test_faults} and L{shim.test.test_cluster}: etcd killed with SIGKILL and
restarted mid-stream, v2's 1000-event window running out while the shim is cut off,
and a three-member cluster losing the member the shim talks to.  Each runs in both
model generations (the seed's and Gluon 1.x's) or names the one it uses.

Proton's side is L{shim.proton.ProtonClient} over v2 (the real proton-server stops
writing for good after a failed etcd write: docs/real-proton.md).  The shim runs in
this process (L{shim.test.support.ShimRunner}); the network faults go through
L{shim.test.proxy.FaultProxy}.  Waits are liveness bounds, never speed targets.
"""

import json

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from shim import follower
from shim.etcd import EtcdV2Client
from shim.etcd.errors import EtcdError
from shim.etcd.v2watch import V2Watch
from shim.portstate import BOUND, UNBOUND
from shim.proton import ProtonClient
from shim.schema import GLUON_1, PROTON_PREFIX, SEED
from shim.test.etcdserver import start_cluster, start_etcd
from shim.test.proxy import FaultProxy
from shim.test.support import RecordingBackend, ShimRunner, port_attrs, sleep, wait_for
from shim.test.test_faults import RetryingWriter

V2_ARGS = ["--enable-v2=true"]
VPN = "vpn-1"
RT = "100:1"
VIF_TYPE = "ovs"
STAMP = "2026-11-25 10:00:00.000000"

#: The seed's port attributes that Gluon 1.x moved to the VpnBinding or dropped.
NOT_IN_1X_PORT = ("ipaddress", "subnet_prefix", "gateway", "network_id", "zone")


def shim_options(schema, more=""):
    """
    The lines of a shim.conf after C{[shim]}'s own: the model, v2, and election off
    (these tests are about one shim; its election's v3 lease would only add noise).
    """
    return ("api_model = %s\n[etcd]\napi = v2\ntimeout = 2\n%s"
            "[election]\nenabled = false\n" % (schema.name, more))


def port_row(schema, uuid, host="", device="", **more):
    """A port's row as proton of C{schema}'s generation writes it."""
    row = port_attrs(uuid, host, device, **more)
    if schema.interface is not None:
        for name in NOT_IN_1X_PORT:
            row.pop(name, None)
        row.update(created_at=STAMP, updated_at=STAMP)
    return row


def binding_rows(schema, uuid, vpn=VPN):
    """
    The (table, name, row) that put port C{uuid} in C{vpn}: a VPNPort; in 1.x the
    port's default Interface and its VpnBinding.
    """
    if schema.interface is None:
        return [(schema.binding, uuid, {"id": uuid, "vpn_instance": vpn})]
    return [
        (schema.interface, uuid, {"id": uuid, "port_id": uuid, "name": uuid + "_default",
                                  "segmentation_type": "none", "segmentation_id": "0",
                                  "created_at": STAMP, "updated_at": STAMP}),
        (schema.binding, uuid, {"interface_id": uuid, "service_id": vpn,
                                "ipaddress": "10.0.0.5", "subnet_prefix": "24",
                                "gateway": "10.0.0.1", "created_at": STAMP,
                                "updated_at": STAMP}),
    ]


def vpn_rows(schema, vpn=VPN, rt=RT):
    """The (table, name, row) of a VPN and its one route target."""
    service = {"id": vpn, "description": None, "ipv4_family": rt, "ipv6_family": None,
               "route_distinguishers": "100:100"}
    if schema.interface is None:
        service["vpn_instance_name"] = vpn
    else:
        service["name"] = vpn
    return [
        (schema.route_target, rt, {"vrf_rt_value": rt, "vrf_rt_type": "both",
                                   "import_route_policy": None,
                                   "export_route_policy": None}),
        (schema.service, vpn, service),
    ]


class V2FaultTestCase(TestCase):
    """
    A v2 client for the test's own reads and writes, proton's side over v2, and
    helpers to compare the shim with etcd.
    """

    timeout = 180
    schema = SEED

    def connect(self, endpoints):
        self.client = EtcdV2Client(endpoints, timeout=2.0)
        self.addCleanup(self.client.close)
        self.proton = ProtonClient(self.client, self.schema)
        #: the index of the test's last delete under /proton/ (not visible in a read).
        self.deleted_at = 0

    def start_shim(self, endpoints, backend, more="", wait=True):
        return ShimRunner(self, endpoints).start(
            backend, extra=shim_options(self.schema, more), wait=wait)

    @inlineCallbacks
    def make_vpn(self):
        for table, name, row in vpn_rows(self.schema):
            yield self.proton.put_object(table, name, row)

    @inlineCallbacks
    def make_port(self, uuid, host="", device=""):
        yield self.proton.put_object(self.schema.port, uuid,
                                     port_row(self.schema, uuid, host, device))
        for table, name, row in binding_rows(self.schema, uuid):
            yield self.proton.put_object(table, name, row)

    @inlineCallbacks
    def delete(self, table, name):
        result = yield self.proton.delete_object(table, name)
        self.deleted_at = max(self.deleted_at, result.revision)

    def result_key(self, uuid):
        return self.schema.result_key(uuid)

    @inlineCallbacks
    def read_result(self, uuid):
        found = yield self.client.get(self.result_key(uuid))
        if not found.kvs:
            return None
        return json.loads(found.kvs[0].value)

    def settled(self, shim):
        """
        Wait until the shim has applied every write under C{/proton/} and is idle.
        (v2 sends no progress notifications: the shim's revision is the last change
        of C{/proton/} it saw, not etcd's index, which the result writes move too.)
        """
        return wait_for(lambda: self._settled(shim), timeout=60,
                        what="the shim to apply every event")

    @inlineCallbacks
    def _settled(self, shim):
        try:
            found = yield self.client.get_all(PROTON_PREFIX)
        except EtcdError:
            return False
        last = max([kv.mod_revision for kv in found.kvs] + [self.deleted_at])
        return (shim.ready and shim.revision >= last and len(shim.queue) == 0
                and not shim.results.pending)

    @inlineCallbacks
    def assert_model_is_etcd(self, shim):
        """
        The shim's model holds exactly what etcd's v2 store holds under C{/proton/}:
        the same objects, each with etcd's value and modifiedIndex (a Bound port also
        carries the vif attributes of its bind result).
        """
        schema = self.schema
        found = yield self.client.get_all(PROTON_PREFIX)
        in_etcd = {table: {} for table in schema.tables}
        for kv in found.kvs:
            table, name = schema.parse_key(kv.key)
            in_etcd[table][name] = kv
        for table in schema.tables:
            objects = shim.model.table(table)
            self.assertEqual(sorted(objects), sorted(in_etcd[table]), table)
            for name, kv in in_etcd[table].items():
                obj = objects[name]
                self.assertEqual(obj.revision, kv.mod_revision, (table, name))
                expected = json.loads(kv.value)
                actual = dict(obj)
                if table == schema.port and obj.binding == BOUND:
                    self.assertEqual(actual.pop("vif_type"), VIF_TYPE)
                    actual.pop("vif_details")
                    expected.pop("vif_type")
                    expected.pop("vif_details")
                elif table == schema.port and expected.get("vif_details") == "{}":
                    # Gluon 1.x's unbind writes vif_details "{}"; the shim's
                    # unbind clears the model's copy to null when it saw that row
                    # before it called unbind_port (a resync): reported, tolerated.
                    self.assertIn(actual.get("vif_details"), (None, "{}"))
                    actual["vif_details"] = "{}"
                self.assertEqual(actual, expected, (table, name))

    def resyncs(self, shim, cause):
        return shim.metrics.registry.get_sample_value(
            "shim_resyncs_total", {"cause": cause})


class StartTests(V2FaultTestCase):

    @inlineCallbacks
    def etcd_with_ports(self, count):
        """
        A v2 etcd holding C{count} ports without a result key (none bound), the
        test's client connected to it: C{(etcd, port uuids)}.
        """
        etcd = start_etcd(self, extra_args=V2_ARGS)
        self.connect([etcd.client_url])
        ports = ["p%04d" % (i,) for i in range(count)]
        for first in range(0, len(ports), 200):
            yield gatherResults([
                self.proton.put_object(self.schema.port, uuid,
                                       port_row(self.schema, uuid))
                for uuid in ports[first:first + 200]])
        return etcd, ports

    @inlineCallbacks
    def ports_without_results(self):
        """
        A v2 etcd holding 1200 ports without a result key, and a proxy to it
        that holds each watch request 1.5 s: C{(ports, proxy)}.
        """
        etcd, ports = yield self.etcd_with_ports(1200)
        proxy = FaultProxy(("127.0.0.1", etcd.client_port)).start()
        self.addCleanup(proxy.stop)
        proxy.hold_requests(b"wait=true", 1.5)
        return ports, proxy

    @inlineCallbacks
    def all_created(self, ports, timeout=60):
        @inlineCallbacks
        def created():
            found = yield self.client.get_all(self.schema.result_prefix)
            return len(found.kvs) == len(ports)
        yield wait_for(created, timeout=timeout, what="every port's result key")

    @inlineCallbacks
    def test_own_writes_wait_for_the_watch(self):
        """
        Over v2 the shim creates the result key of each port it found without one
        (as C{{}}), and etcd keeps only the last 1000 events of its whole store.  A
        watch that starts after more of them than that since the snapshot's index
        is answered "event index cleared", and the shim reads everything again.
        So the shim writes nothing after a full read until its watch is open:
        here the watch's request is held 1.5 s on its way to etcd, and 1200 result
        keys wait for it, without pushing the watch's start out of the window.
        """
        ports, proxy = yield self.ports_without_results()
        shim = yield self.start_shim([proxy.url], RecordingBackend())
        proxy.hold_requests(None, 0)
        yield self.all_created(ports)
        yield self.settled(shim)
        found = yield self.client.get_all(self.schema.result_prefix)
        self.assertEqual({kv.value for kv in found.kvs}, {b"{}"})
        self.assertEqual(self.resyncs(shim, "compacted"), 0)
        self.assertEqual(self.resyncs(shim, "start"), 1)

    @inlineCallbacks
    def test_own_writes_wait_for_the_watch_to_catch_up(self):
        """
        Proton wrote while the shim read: its watch opens behind, and catches up
        one long-poll per event (each held 0.2 s on its way to etcd here).  The
        1200 result keys, and those of an operator's resync asked for meanwhile
        (which itself starts when the watch opens), wait until etcd holds the
        watch past its history, not only until the watch is open: written sooner,
        the keys would push the next long-poll's index out of etcd's 1000 events.
        """
        self.patch(V2Watch, "live_after", 1.0)
        self.patch(follower, "LIVE_WAIT", 60.0)
        ports, proxy = yield self.ports_without_results()
        shim = yield self.start_shim([proxy.url], RecordingBackend(), wait=False)
        yield wait_for(lambda: shim.follower.synchronised, what="the shim's read")
        proxy.hold_requests(b"wait=true", 0.2)
        for uuid in ports[:20]:
            yield self.proton.put_object(self.schema.port, uuid,
                                         port_row(self.schema, uuid, name="renamed"))
        yield shim.when_ready()
        # A resync asked for meanwhile starts now; its missing keys wait too.
        shim.request_resync("admin")
        yield self.all_created(ports)
        proxy.hold_requests(None, 0)
        yield self.settled(shim)
        self.assertEqual(self.resyncs(shim, "compacted"), 0)
        self.assertEqual(self.resyncs(shim, "start"), 1)
        self.assertEqual(shim.model.ports["p0000"].get("name"), "renamed")

    @inlineCallbacks
    def test_read_beside_a_caught_up_watch_creates_keys_at_once(self):
        """
        A resync beside a watch that has caught up (etcd holds it past its
        history) finds result keys missing (deleted behind the shim's back): it
        creates them at once, as no watch is left to catch up, not after
        LIVE_WAIT (a minute here) nor never.
        """
        self.patch(follower, "LIVE_WAIT", 60.0)
        etcd, ports = yield self.etcd_with_ports(40)
        shim = yield self.start_shim([etcd.client_url], RecordingBackend())
        yield self.all_created(ports)
        yield wait_for(lambda: shim.follower.caught_up, what="the watch to catch up")
        for uuid in ports[:10]:
            yield self.client.delete(self.result_key(uuid))
        shim.request_resync("admin")
        yield self.all_created(ports, timeout=20)
        yield self.settled(shim)
        self.assertEqual(self.resyncs(shim, "admin"), 1)
        self.assertEqual(self.resyncs(shim, "start"), 1)

    @inlineCallbacks
    def test_binds_go_before_the_missing_keys(self):
        """
        Over v2 every write is a request of its own, and the result keys a read
        found missing number thousands at a large site: they go a few at a time,
        so that a bind asked for meanwhile has its result written before them, not
        behind them in the client's 32 calls (proton waits 8 s).
        """
        etcd, ports = yield self.etcd_with_ports(4000)
        shim = yield self.start_shim([etcd.client_url], RecordingBackend(), wait=False)
        yield wait_for(lambda: shim.follower.caught_up, interval=0.005,
                       what="the watch to catch up")
        yield self.make_port("bound", host="compute1", device="vm1")

        @inlineCallbacks
        def bound():
            result = yield self.read_result("bound")
            return bool(result and result.get("vif_type"))
        yield wait_for(bound, interval=0.005, what="the bind's result")
        found = yield self.client.get_all(self.schema.result_prefix)
        self.assertLess(len(found.kvs), len(ports) // 2)
        yield self.all_created(ports + ["bound"])
        yield self.settled(shim)


class StartGluon1Tests(StartTests):
    schema = GLUON_1


class KillTests(V2FaultTestCase):
    @inlineCallbacks
    def test_kill_9_mid_stream(self):
        """
        etcd killed with SIGKILL while a writer keeps writing over v2, and restarted
        on the same data: the shim applies every change exactly once and in order,
        its model ends equal to etcd's v2 store, every port is bound once and every
        attribute change reaches modify_port once.
        """
        schema = self.schema
        etcd = start_etcd(self, extra_args=V2_ARGS)
        self.connect([etcd.client_url])
        writer_client = EtcdV2Client([etcd.client_url], timeout=1.0)
        self.addCleanup(writer_client.close)
        writer = RetryingWriter(writer_client)
        backend = RecordingBackend()
        shim = yield self.start_shim([etcd.client_url], backend)

        ports = ["p%d" % (i,) for i in range(6)]
        renames = 5
        unbound = ports[:2]
        plan = list(vpn_rows(schema))
        for uuid in ports:
            plan.append((schema.port, uuid, port_row(schema, uuid)))
            plan.extend(binding_rows(schema, uuid))
        for uuid in ports:
            plan.append((schema.port, uuid, port_row(schema, uuid, "compute1",
                                                     "vm-" + uuid)))
        for r in range(renames):
            for uuid in ports:
                plan.append((schema.port, uuid, port_row(
                    schema, uuid, "compute1", "vm-" + uuid, name="%s-%d" % (uuid, r))))
        for uuid in unbound:
            plan.append((schema.port, uuid, port_row(
                schema, uuid, name="%s-%d" % (uuid, renames - 1))))

        @inlineCallbacks
        def write_all():
            for table, name, row in plan:
                key = schema.proton_key(table, name)
                yield writer._until_written(
                    key, _encoded(row), lambda k=key, r=row: writer_client.put(
                        k, _encoded(r)))
                yield sleep(0.01)

        resumes = []

        def observe(event):
            if "the watch ended" in (event.get("log_format") or ""):
                resumes.append(event["delay"])
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        writing = write_all()
        yield wait_for(lambda: writer.done >= len(plan) // 3 or writing.called,
                       what="the writer to get going")
        self.assertFalse(writing.called, "the writer finished before etcd was killed")
        etcd.kill()
        yield wait_for(lambda: writer.failures > 0 and len(resumes) >= 4,
                       what="writes to fail and the shim to try the watch again")
        etcd.start()
        yield writing
        yield self.settled(shim)

        self.assertGreater(resumes[3], 2 * resumes[0], resumes)
        yield self.assert_model_is_etcd(shim)
        for uuid in ports:
            self.assertEqual(backend.called("bind_port", uuid), 1, uuid)
            renamed = [
                args[2].new.get("name") for c, args in backend.arguments
                if c == "modify_port" and args[0] == uuid
            ]
            names = ["%s-%d" % (uuid, r) for r in range(renames)]
            self.assertEqual(renamed, sorted(set(renamed), key=names.index))
            if uuid not in unbound:
                self.assertEqual(renamed[-1], names[-1])
            result = yield self.read_result(uuid)
            if uuid in unbound:
                self.assertEqual(shim.model.ports[uuid].binding, UNBOUND)
                self.assertEqual(backend.called("unbind_port", uuid), 1)
                self.assertEqual(result, {})
            else:
                self.assertEqual(shim.model.ports[uuid].binding, BOUND)
                self.assertEqual(result["controller"], "SimServer")
                self.assertEqual(result["vif_type"], VIF_TYPE)
        # modify_service_binding may come with the bind (the binding seen first);
        # nothing else.
        self.assertLessEqual({c for c, _ in backend.calls},
                             {"bind_port", "modify_port", "unbind_port",
                              "modify_service_binding"})
        self.assertEqual(
            len([c for c, _ in backend.calls if c in ("bind_port", "unbind_port")]),
            len(ports) + len(unbound))


class KillGluon1Tests(KillTests):
    schema = GLUON_1


class WindowTests(V2FaultTestCase):
    @inlineCallbacks
    def test_window_runs_out_while_cut(self):
        """
        The shim's traffic is cut while ports are deleted, bound and unbound and more
        than 1000 other v2 writes go by: when the network is back, etcd answers its
        watch "event index cleared", the shim reads everything again (cause
        "compacted"), and exactly the missed callbacks are made.
        """
        etcd = start_etcd(self, extra_args=V2_ARGS)
        self.connect([etcd.client_url])
        proxy = FaultProxy(("127.0.0.1", etcd.client_port)).start()
        self.addCleanup(proxy.stop)
        backend = RecordingBackend()
        shim = yield self.start_shim([proxy.url], backend)
        yield self.make_vpn()
        for uuid in ("gone", "unbound", "kept", "new"):
            yield self.make_port(uuid)
        for uuid in ("gone", "unbound", "kept"):
            outcome = yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
            self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        before = list(backend.calls)
        self.assertEqual(self.resyncs(shim, "compacted"), 0)

        yield proxy.cut()
        yield wait_for(lambda: not shim.ready, what="the shim to notice the cut")
        yield self.delete(self.schema.port, "gone")
        yield self.proton.unbind("unbound")
        yield self.proton.put_object(self.schema.port, "new", port_row(
            self.schema, "new", "compute2", "vm-new"))
        for i in range(1010):
            yield self.client.put("/elsewhere/k%d" % (i % 10,), str(i))
        proxy.restore()

        yield wait_for(lambda: shim.model.ports["new"].binding == BOUND,
                       what="the bind requested during the cut")
        yield self.settled(shim)
        self.assertEqual(
            sorted(backend.calls[len(before):]),
            [("bind_port", "new"), ("delete_port", "gone"),
             ("unbind_port", "unbound")],
        )
        self.assertEqual(self.resyncs(shim, "compacted"), 1)
        result = yield self.read_result("gone")
        self.assertIsNone(result)
        result = yield self.read_result("unbound")
        self.assertEqual(result, {})
        result = yield self.read_result("new")
        self.assertEqual(result["controller"], "SimServer")
        result = yield self.read_result("kept")
        self.assertEqual(result["controller"], "SimServer")
        self.assertNotIn("gone", shim.model.ports)
        self.assertEqual(shim.model.ports["unbound"].binding, UNBOUND)
        self.assertEqual(shim.model.ports["kept"].binding, BOUND)
        yield self.assert_model_is_etcd(shim)


class WindowGluon1Tests(WindowTests):
    schema = GLUON_1


class ClusterTests(V2FaultTestCase):
    """
    A three-member cluster with v2 on, the shim given all three endpoints: binds work
    after the member the shim talks to is killed, after it returns, after the leader
    is killed, and after that one returns.
    """

    schema = GLUON_1

    @inlineCallbacks
    def setUp(self):
        self.cluster = start_cluster(self, extra_args=V2_ARGS)
        urls = self.cluster.client_urls
        self.connect(urls)
        self.backend = RecordingBackend()
        self.shim = yield self.start_shim(urls, self.backend)
        yield self.make_vpn()

    def member_index(self, endpoint):
        return self.cluster.client_urls.index(endpoint)

    @inlineCallbacks
    def bind(self, uuid):
        yield wait_for(lambda: self.cluster.leader() is not None, timeout=30,
                       what="a leader")
        yield self.make_port(uuid)
        outcome = yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
        self.assertEqual(outcome.result["controller"], "SimServer", uuid)
        # Proton 1.x rewrites the port with the answer: the new row is Bound once the
        # shim has reconciled it.
        yield wait_for(lambda: self.shim.model.ports[uuid].binding == BOUND,
                       what="port %s Bound in the model" % (uuid,))
        self.assertEqual(self.backend.called("bind_port", uuid), 1)

    @inlineCallbacks
    def test_members_lost_and_back(self):
        yield self.bind("p0")
        connected = self.member_index(self.shim.client.endpoint)
        self.assertEqual(self.shim.follower._watch.endpoint, self.shim.client.endpoint)
        self.cluster.kill(connected)
        yield self.bind("p1")
        self.assertNotEqual(self.shim.client.endpoint,
                            self.cluster.client_urls[connected])
        self.cluster.restart(connected)
        yield self.bind("p2")

        leader = self.cluster.wait_for_leader()
        self.cluster.kill(leader)
        yield self.bind("p3")
        self.cluster.restart(leader)
        yield self.bind("p4")

        yield wait_for(lambda: self.shim.ready, what="the shim to be ready")
        self.assertEqual(
            sorted(c for c in self.backend.calls if c[0] == "bind_port"),
            [("bind_port", "p%d" % (i,)) for i in range(5)],
        )
        yield self.settled(self.shim)
        yield self.assert_model_is_etcd(self.shim)


def _encoded(row):
    from shim.proton import encode_object
    return encode_object(row)
