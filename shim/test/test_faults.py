"""
The shim against etcd failing for real: a process killed with SIGKILL and restarted,
a network cut between the shim and etcd while etcd compacts its history, etcd not
there yet at start, bind-result writes failing, drift behind the shim's back, and a
different etcd cluster appearing on the same address.

Every test runs real etcd processes (L{shim.test.etcdserver}); the network faults go
through L{shim.test.proxy.FaultProxy}.  Waits are liveness bounds, never speed targets.
"""

import json
import os

from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from shim import keys
from shim.config import load_config
from shim.etcd import EtcdClient
from shim.etcd.errors import EtcdError
from shim.portstate import BOUND, UNBOUND
from shim.proton import ProtonClient, encode_object
from shim.service import ShimService
from shim.test.etcdserver import EtcdServer, free_port, start_etcd
from shim.test.proxy import FaultProxy
from shim.test.support import (
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

VPN = "vpn-1"
RT = "100:1"
VIF_TYPE = "ovs"




def vpn_objects(vpn=VPN, rt=RT):
    """
    The (table, name, attributes) of a VPN and its one route target.
    """
    return [
        (keys.VPN_AFCONFIG, keys.afconfig_name(rt),
         {"vrf_rt_value": rt, "vrf_rt_type": "both", "import_route_policy": None,
          "export_route_policy": None}),
        (keys.VPN_INSTANCE, vpn,
         {"id": vpn, "vpn_instance_name": vpn, "description": None, "ipv4_family": rt,
          "ipv6_family": None, "route_distinguishers": "100:100"}),
    ]


class RetryingWriter:
    """
    Writes objects into etcd the way proton would, retrying each write until etcd has
    it: a write whose answer was lost is not repeated when etcd already holds its value,
    so each change reaches etcd exactly once even across an etcd crash.

    @ivar done: how many writes are in etcd.
    @ivar failures: how many attempts failed.
    """

    def __init__(self, client):
        self.client = client
        self.done = 0
        self.failures = 0

    @inlineCallbacks
    def put(self, table, name, attrs):
        key = keys.proton_key(table, name)
        value = encode_object(attrs)
        yield self._until_written(key, value, lambda: self.client.put(key, value))

    @inlineCallbacks
    def delete(self, table, name):
        key = keys.proton_key(table, name)
        yield self._until_written(key, None, lambda: self.client.delete(key))

    @inlineCallbacks
    def _until_written(self, key, value, write):
        while True:
            try:
                yield write()
                break
            except EtcdError:
                self.failures += 1
            yield sleep(0.1)
            try:
                found = yield self.client.get(key)
            except EtcdError:
                continue
            current = found.kvs[0].value if found.kvs else None
            if current == value:
                break
        self.done += 1


class FaultTestCase(TestCase):
    """
    A client for the test's own reads and writes, proton's side, and helpers to compare
    the shim with etcd.
    """

    timeout = 120

    def connect(self, endpoints):
        """
        The test's own client and proton's side, on C{endpoints}.
        """
        self.client = EtcdClient(endpoints, timeout=2.0)
        self.addCleanup(self.client.close)
        self.proton = ProtonClient(self.client)

    @inlineCallbacks
    def make_vpn(self):
        for table, name, attrs in vpn_objects():
            yield self.proton.put_object(table, name, attrs)

    @inlineCallbacks
    def make_port(self, uuid, host="", device=""):
        yield self.proton.put_object(keys.PORT, uuid, port_attrs(uuid, host, device))
        yield self.proton.put_object(keys.VPN_PORT, uuid, {"id": uuid, "vpn_instance": VPN})

    def settled(self, shim):
        """
        Wait until the shim has seen every revision etcd has and is idle.
        """
        return wait_for(lambda: self._settled(shim), timeout=30,
                        what="the shim to apply every event")

    @inlineCallbacks
    def _settled(self, shim):
        try:
            status = yield self.client.status()
        except EtcdError:
            return False
        return (
            shim.ready
            and shim.revision >= status.revision
            and len(shim.queue) == 0
            and not shim.results.pending
        )

    @inlineCallbacks
    def assert_model_is_etcd(self, shim):
        """
        The shim's model holds exactly what etcd holds under C{/proton/}: the same
        objects, each with etcd's value and revision (a Bound port also carries the
        vif attributes of its bind result).
        """
        found = yield self.client.get_all(keys.PROTON_PREFIX)
        in_etcd = {table: {} for table in keys.TABLES}
        for kv in found.kvs:
            table, name = keys.parse_proton_key(kv.key)
            in_etcd[table][name] = kv
        for table in keys.TABLES:
            objects = shim.model.table(table)
            self.assertEqual(sorted(objects), sorted(in_etcd[table]), table)
            for name, kv in in_etcd[table].items():
                obj = objects[name]
                self.assertEqual(obj.revision, kv.mod_revision, (table, name))
                expected = json.loads(kv.value)
                actual = dict(obj)
                if table == keys.PORT and obj.binding == BOUND:
                    self.assertEqual(actual.pop("vif_type"), VIF_TYPE)
                    actual.pop("vif_details")
                    expected.pop("vif_type")
                    expected.pop("vif_details")
                self.assertEqual(actual, expected, (table, name))


    def history(self, key):
        """
        Every change of C{key} that etcd still remembers, as C{(type, value)}.
        """
        return key_history(self.client, key)


class KillTests(FaultTestCase):
    @inlineCallbacks
    def test_kill_9_mid_stream(self):
        """
        etcd killed with SIGKILL while a writer keeps writing, and restarted on the same
        data: the shim applies every change exactly once and in order, its model ends
        equal to etcd's contents, every port is bound once and every attribute change
        reaches modify_port once.
        """
        etcd = start_etcd(self)
        self.connect([etcd.client_url])
        writer_client = EtcdClient([etcd.client_url], timeout=1.0)
        self.addCleanup(writer_client.close)
        writer = RetryingWriter(writer_client)
        backend = RecordingBackend()
        shim = yield ShimRunner(self, [etcd.client_url]).start(
            backend, extra="[etcd]\ntimeout = 2")

        ports = ["p%d" % (i,) for i in range(6)]
        renames = 5
        unbound = ports[:2]
        plan = []
        for table, name, attrs in vpn_objects():
            plan.append((table, name, attrs))
        for uuid in ports:
            plan.append((keys.PORT, uuid, port_attrs(uuid)))
            plan.append((keys.VPN_PORT, uuid, {"id": uuid, "vpn_instance": VPN}))
        for uuid in ports:
            plan.append((keys.PORT, uuid, port_attrs(uuid, "compute1", "vm-" + uuid)))
        for r in range(renames):
            for uuid in ports:
                plan.append((keys.PORT, uuid, port_attrs(
                    uuid, "compute1", "vm-" + uuid, name="%s-%d" % (uuid, r))))
        for uuid in unbound:
            plan.append((keys.PORT, uuid, port_attrs(
                uuid, name="%s-%d" % (uuid, renames - 1))))

        @inlineCallbacks
        def write_all():
            for table, name, attrs in plan:
                yield writer.put(table, name, attrs)
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

        # While etcd was away the shim backed off: the fourth delay is more than twice
        # the first, jitter or not (it would be at most twice without a backoff).
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
                # The backend holds the latest name: told by modify_port, or by a bind
                # that came after the renames.
                self.assertEqual(shim.controller.told[uuid].port["name"], names[-1])
            result = yield read_result(self.client, uuid)
            if uuid in unbound:
                self.assertEqual(shim.model.ports[uuid].binding, UNBOUND)
                self.assertEqual(backend.called("unbind_port", uuid), 1)
                self.assertEqual(result, {})
            else:
                self.assertEqual(shim.model.ports[uuid].binding, BOUND)
                self.assertEqual(result["controller"], "SimServer")
                self.assertEqual(result["vif_type"], VIF_TYPE)
        expected = {"bind_port", "modify_port", "unbind_port"}
        self.assertEqual({c for c, _ in backend.calls}, expected)
        self.assertEqual(
            len([c for c, _ in backend.calls if c != "modify_port"]),
            len(ports) + len(unbound))


class CutTests(FaultTestCase):
    @inlineCallbacks
    def test_cut_while_etcd_compacts(self):
        """
        The shim's traffic is cut while ports are deleted, bound and unbound and etcd
        compacts its history: when the network is back, the watch cannot resume below
        the compaction, the shim reads everything again, and exactly the missed
        callbacks are made.
        """
        etcd = start_etcd(self)
        self.connect([etcd.client_url])
        proxy = FaultProxy(("127.0.0.1", etcd.client_port)).start()
        self.addCleanup(proxy.stop)
        backend = RecordingBackend()
        shim = yield ShimRunner(self, [proxy.url]).start(backend)
        yield self.make_vpn()
        for uuid in ("gone", "unbound", "kept", "new"):
            yield self.make_port(uuid)
        for uuid in ("gone", "unbound", "kept"):
            outcome = yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
            self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        before = list(backend.calls)

        yield proxy.cut()
        yield wait_for(lambda: not shim.ready, what="the shim to notice the cut")
        yield self.proton.delete_object(keys.PORT, "gone")
        yield self.proton.unbind("unbound")
        yield self.proton.put_object(
            keys.PORT, "new", port_attrs("new", "compute2", "vm-new"))
        yield etcd.compact()
        proxy.restore()

        yield wait_for(lambda: shim.model.ports["new"].binding == BOUND,
                       what="the bind requested during the cut")
        yield self.settled(shim)
        self.assertEqual(
            sorted(backend.calls[len(before):]),
            [("bind_port", "new"), ("delete_port", "gone"),
             ("unbind_port", "unbound")],
        )
        compacted = shim.metrics.registry.get_sample_value(
            "shim_resyncs_total", {"cause": "compacted"})
        self.assertEqual(compacted, 1)
        result = yield read_result(self.client, "gone")
        self.assertIsNone(result)
        result = yield read_result(self.client, "unbound")
        self.assertEqual(result, {})
        result = yield read_result(self.client, "new")
        self.assertEqual(result["controller"], "SimServer")
        result = yield read_result(self.client, "kept")
        self.assertEqual(result["controller"], "SimServer")
        self.assertNotIn("gone", shim.model.ports)
        self.assertEqual(shim.model.ports["unbound"].binding, UNBOUND)
        self.assertEqual(shim.model.ports["kept"].binding, BOUND)
        yield self.assert_model_is_etcd(shim)

    @inlineCallbacks
    def test_stalled_network(self):
        """
        The network between the shim and etcd stalls (connections stay open, nothing
        gets through): the shim's idle watchdog ends the silent watch, and once the
        network moves again the bind requested meanwhile is done.
        """
        etcd = start_etcd(self)
        self.connect([etcd.client_url])
        proxy = FaultProxy(("127.0.0.1", etcd.client_port)).start()
        self.addCleanup(proxy.stop)
        backend = RecordingBackend()
        shim = yield ShimRunner(self, [proxy.url]).start(
            backend, extra="[etcd]\ntimeout = 2\nwatch_idle_timeout = 2")
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.settled(shim)

        proxy.pause()
        yield self.proton.put_object(keys.PORT, "p1", port_attrs("p1", "compute1", "vm1"))
        idle = lambda: shim.metrics.registry.get_sample_value(
            "shim_watch_restarts_total", {"reason": "idle"})
        yield wait_for(lambda: idle(), what="the watchdog to end the silent watch")
        self.assertEqual(backend.calls, [])
        proxy.resume()

        result = yield wait_for(lambda: read_result(self.client, "p1"),
                                what="the bind result")
        self.assertEqual(result["controller"], "SimServer")
        yield self.settled(shim)
        self.assertEqual(backend.calls, [("bind_port", "p1")])
        yield self.assert_model_is_etcd(shim)


    @inlineCallbacks
    def test_quiet_watch_after_an_idle_restart(self):
        """
        After sending a watch events, etcd skips its next progress notification, so
        a quiet watch may hear nothing for two of etcd's intervals (1 s here, plus
        a tenth of jitter).  A watch ended once (here by a stall past its 1.8 s
        idle timeout) resumes after the last revision it had whole, not from it:
        sent nothing again, it gets the next notification within 1.1 s and lives
        on.  Resumed from it, it was sent that revision again, heard nothing for
        2 s or more, and was ended again, every time.
        """
        etcd = start_etcd(self)
        self.connect([etcd.client_url])
        proxy = FaultProxy(("127.0.0.1", etcd.client_port)).start()
        self.addCleanup(proxy.stop)
        shim = yield ShimRunner(self, [proxy.url]).start(
            RecordingBackend(), extra="[etcd]\ntimeout = 2\nwatch_idle_timeout = 1.8")
        yield self.make_vpn()
        yield self.make_port("p1")
        yield self.settled(shim)
        idle = lambda: shim.metrics.registry.get_sample_value(
            "shim_watch_restarts_total", {"reason": "idle"}) or 0
        restarts = idle()
        proxy.pause()
        yield wait_for(lambda: idle() > restarts, what="the watchdog to end the watch")
        # etcd moves on outside /proton/: only a progress notification tells the shim
        elsewhere = yield self.client.put("/elsewhere", b"x")
        proxy.resume()
        yield wait_for(lambda: shim.revision >= elsewhere.revision, timeout=20,
                       what="a progress notification past the last event")
        restarts = idle()
        yield sleep(5.0)
        self.assertEqual(idle(), restarts)
        self.assertTrue(shim.ready)


class StartTests(FaultTestCase):
    @inlineCallbacks
    def test_etcd_not_there_yet(self):
        """
        A shim started before etcd retries with backoff, logging each attempt, and
        becomes ready when etcd comes; a bind then works.
        """
        port = free_port()
        url = "http://127.0.0.1:%d" % (port,)
        attempts = []

        def observe(event):
            if "etcd unavailable" in (event.get("log_format") or ""):
                attempts.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        backend = RecordingBackend()
        shim = yield ShimRunner(self, [url]).start(backend, wait=False)
        yield wait_for(lambda: len(attempts) >= 3, what="retried attempts")
        self.assertFalse(shim.ready)
        self.assertIn("etcd unavailable", shim.not_ready_reason)
        delays = [event["delay"] for event in attempts]
        # Backing off: the third delay is more than twice the first, jitter or not.
        self.assertGreater(delays[2], 2 * delays[0], delays)

        etcd = EtcdServer(client_port=port)
        self.addCleanup(etcd.cleanup)
        etcd.start()
        self.connect([url])
        yield wait_for(lambda: shim.ready, timeout=30, what="the shim to become ready")
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(backend.calls, [("bind_port", "p1")])


class WatchingThroughAnother(EtcdClient):
    """
    A client whose watches go through another client: the shim's watch stays up while
    its unary calls (the bind-result writes) are cut.
    """

    def __init__(self, endpoints, watcher, **kwargs):
        EtcdClient.__init__(self, endpoints, **kwargs)
        self.watcher = watcher

    def watch(self, *args, **kwargs):
        return self.watcher.watch(*args, **kwargs)


class ResultWriteTests(FaultTestCase):
    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self)
        self.connect([self.etcd.client_url])
        self.proxy = FaultProxy(("127.0.0.1", self.etcd.client_port)).start()
        self.addCleanup(self.proxy.stop)
        yield self.make_vpn()

    def cutting_backend(self):
        """
        A backend whose bind_port cuts the shim's network before it answers.
        """
        backend = RecordingBackend()

        def bind_port(uuid, *args):
            d = self.proxy.cut()
            d.addCallback(lambda _: {"vif_type": VIF_TYPE, "vif_details": {}})
            return d
        backend.answers["bind_port"] = bind_port
        return backend

    @inlineCallbacks
    def test_failed_write_retried(self):
        """
        A bind-result write that fails is retried until it succeeds once the network
        is back.
        """
        backend = self.cutting_backend()
        shim = yield ShimRunner(self, [self.proxy.url]).start(backend)
        yield self.make_port("p1")
        yield self.proton.put_object(keys.PORT, "p1", port_attrs("p1", "compute1", "vm1"))
        failed = lambda: shim.metrics.registry.get_sample_value(
            "shim_result_writes_total", {"operation": "publish", "outcome": "error"})
        yield wait_for(lambda: (failed() or 0) >= 2, what="failed result writes")
        self.assertEqual(shim.results.pending["p1"][0], "publish")
        self.proxy.restore()
        result = yield wait_for(lambda: read_result(self.client, "p1"),
                                what="the bind result")
        self.assertEqual(result["controller"], "SimServer")
        yield self.settled(shim)
        self.assertEqual(backend.calls, [("bind_port", "p1")])

    @inlineCallbacks
    def test_unbind_overtakes_failing_write(self):
        """
        A port unbound while its bind result cannot be written: the stale result is
        never written, C{{}} stays.
        """
        watcher = EtcdClient([self.etcd.client_url])
        self.addCleanup(watcher.close)
        client = WatchingThroughAnother([self.proxy.url], watcher, timeout=2.0)
        directory = self.mktemp()
        config = load_config(write_config(
            _mkdir(directory), [self.proxy.url], hosts="compute1"))
        backend = self.cutting_backend()
        shim = ShimService(config, backend, client=client)
        shim.startService()
        self.addCleanup(shim.stopService)
        yield shim.when_ready()

        yield self.make_port("p1")
        # Proton's first step of a bind: the controller key, created as {}.
        created = yield self.client.put(keys.result_key("p1"), b"{}")
        yield self.proton.put_object(keys.PORT, "p1", port_attrs("p1", "compute1", "vm1"))
        yield wait_for(lambda: backend.called("bind_port", "p1") == 1, what="bind_port")
        failed = lambda: shim.metrics.registry.get_sample_value(
            "shim_result_writes_total", {"operation": "publish", "outcome": "error"})
        yield wait_for(lambda: (failed() or 0) >= 1, what="a failed result write")
        yield self.proton.unbind("p1")
        yield wait_for(lambda: backend.called("unbind_port", "p1") == 1,
                       what="unbind_port")
        self.assertEqual(shim.results.pending["p1"][0], "clear")
        self.proxy.restore()
        yield self.settled(shim)
        found = yield self.client.get(keys.result_key("p1"))
        kv = found.kvs[0]
        self.assertEqual(kv.value, b"{}")
        # Nothing was ever written over proton's {}: no stale result came and went.
        # (The shim may have created the key as {} itself when the port appeared.)
        self.assertEqual(kv.mod_revision, created.revision)
        self.assertEqual(backend.calls, [("bind_port", "p1"), ("unbind_port", "p1")])


def _mkdir(path):
    os.makedirs(path)
    return path


class ResyncTests(FaultTestCase):
    @inlineCallbacks
    def test_periodic_resync_repairs_drift(self):
        """
        A bind result deleted behind the shim's back is written again by the periodic
        resynchronisation, without calling the backend again.
        """
        etcd = start_etcd(self)
        self.connect([etcd.client_url])
        backend = RecordingBackend()
        shim = yield ShimRunner(self, [etcd.client_url]).start(
            backend, extra="resync_interval = 0.5")
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.client.delete(keys.result_key("p1"))
        result = yield wait_for(lambda: read_result(self.client, "p1"),
                                what="the bind result written again")
        self.assertEqual(result["controller"], "SimServer")
        self.assertEqual(result["vif_type"], VIF_TYPE)
        periodic = shim.metrics.registry.get_sample_value(
            "shim_resyncs_total", {"cause": "periodic"})
        self.assertGreaterEqual(periodic, 1)
        self.assertEqual(backend.calls, [("bind_port", "p1")])

    @inlineCallbacks
    def test_cluster_id_change(self):
        """
        etcd replaced by a new cluster with other contents on the same address: the
        shim notices the new cluster id, reads everything again and turns the
        differences into callbacks (and only those).
        """
        old = start_etcd(self)
        self.connect([old.client_url])
        backend = RecordingBackend()
        shim = yield ShimRunner(self, [old.client_url]).start(backend)
        yield self.make_vpn()
        for uuid in ("same", "gone", "later"):
            yield self.make_port(uuid)
        for uuid in ("same", "gone"):
            outcome = yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
            self.assertEqual(outcome.result["controller"], "SimServer")
        yield self.settled(shim)
        before = list(backend.calls)
        old_cluster = shim.cluster_id
        # The new cluster holds the same VPN and port "same" with its bind result (as
        # restored from a backup), no port "gone", and a bind request for "later".
        found = yield self.client.get_all("/")
        kept = [kv for kv in found.kvs if not kv.key.endswith("/gone")]

        yield replace_cluster(
            self, old, [("/unrelated/padding", b"x")]
            + [(kv.key, kv.value) for kv in kept]
            + [(keys.proton_key(keys.PORT, "later"),
                encode_object(port_attrs("later", "compute2", "vm-later")))])

        yield wait_for(lambda: shim.cluster_id not in (None, old_cluster),
                       timeout=30, what="the shim to see the new cluster")
        yield wait_for(lambda: "later" in shim.model.ports
                       and shim.model.ports["later"].binding == BOUND,
                       what="the bind request of the new cluster")
        yield self.settled(shim)
        self.assertEqual(
            sorted(backend.calls[len(before):]),
            [("bind_port", "later"), ("delete_port", "gone")],
        )
        changed = shim.metrics.registry.get_sample_value(
            "shim_resyncs_total", {"cause": "cluster_changed"})
        self.assertEqual(changed, 1)
        # The result of the port gone with the old cluster was not written again.
        history = yield self.history(keys.result_key("gone"))
        self.assertEqual(history, [])
        result = yield read_result(self.client, "later")
        self.assertEqual(result["controller"], "SimServer")
        result = yield read_result(self.client, "same")
        self.assertEqual(result["controller"], "SimServer")
        self.assertEqual(shim.model.ports["same"].binding, BOUND)
        yield self.assert_model_is_etcd(shim)
