"""
Tests for L{shim.proton}: proton's side of the protocol, against a real etcd.
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from shim import keys
from shim.etcd import EtcdClient, EtcdV2Client
from shim.etcd.errors import EtcdError
from shim.proton import (
    PORT_ATTRIBUTES, PORT_ATTRIBUTES_V1, BindInterrupted, ProtonClient, ProtonError,
    encode_object)
from shim.schema import GLUON_1, SEED
from shim.test.etcdserver import start_etcd
from shim.test.support import RecordingBackend, ShimRunner, proton_side, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULT = {"vif_type": "ovs",
          "vif_details": {"port_filter": False, "bridge_name": "br-gluon"},
          "controller": "FakeShim"}


class EtcdTestCase(TestCase):
    """
    A fresh etcd, a client and a L{ProtonClient} per test.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self)
        self.client, self.proton = proton_side(self, self.etcd)
        yield self.client.status()

    @inlineCallbacks
    def stored(self, table, name):
        """
        The decoded value proton's key of C{table}/C{name} holds, or C{None}.
        """
        found = yield self.client.get(keys.proton_key(table, name))
        if not found.kvs:
            return None
        return json.loads(found.kvs[0].value)

    @inlineCallbacks
    def responder(self, answers):
        """
        A fake shim: watch proton's ports and, for each bind request, write the next
        of C{answers} to the port's controller key.  Returns the list of bind-request
        revisions it saw.
        """
        status = yield self.client.status()
        seen = []
        answers = list(answers)
        writing = []
        # proton may see an answer before etcd has acknowledged its put: wait for
        # the writes before the client closes.
        self.addCleanup(lambda: DeferredList(writing))

        def on_event(event):
            if event.type != "PUT":
                return
            port = json.loads(event.value)
            if port.get("host_id") and port.get("device_id") and answers:
                seen.append(event.mod_revision)
                uuid = event.key.rsplit("/", 1)[1]
                writing.append(write(keys.result_key(uuid), answers.pop(0)))

        @inlineCallbacks
        def write(key, values):
            for value in values:
                yield self.client.put(key, json.dumps(value))

        watch = self.client.watch(keys.proton_key(keys.PORT, ""), status.revision + 1,
                                  on_event, prefix=True)
        self.addCleanup(watch.stop)
        yield watch.started
        return seen


class ObjectTests(EtcdTestCase):
    @inlineCallbacks
    def test_port_value_format(self):
        """
        A port is written with proton's full attribute set, every non-null value as a
        string and null as JSON null.
        """
        yield self.proton.create_port("p1", mtu=9000, admin_state_up=True,
                                      profile={"a": 1}, subnet_prefix=24)
        port = yield self.stored(keys.PORT, "p1")
        self.assertEqual(sorted(port), sorted(PORT_ATTRIBUTES))
        self.assertEqual(port["id"], "p1")
        self.assertEqual(port["mtu"], "9000")
        self.assertEqual(port["admin_state_up"], "True")
        self.assertEqual(port["vlan_transparency"], "False")
        self.assertEqual(port["subnet_prefix"], "24")
        self.assertEqual(json.loads(port["profile"]), {"a": 1})
        self.assertIsNone(port["vif_type"])
        self.assertEqual(port["host_id"], "")
        for name, value in port.items():
            self.assertTrue(value is None or isinstance(value, str),
                            "%s is %r" % (name, value))

    @inlineCallbacks
    def test_update_rewrites_whole_object(self):
        """
        An update by a client that did not create the port (as the CLI is) reads it
        and rewrites all of it.
        """
        yield self.proton.create_port("p1", name="first")
        other = ProtonClient(self.client)
        yield other.update_port("p1", mtu=1400)
        port = yield self.stored(keys.PORT, "p1")
        self.assertEqual(sorted(port), sorted(PORT_ATTRIBUTES))
        self.assertEqual((port["name"], port["mtu"]), ("first", "1400"))

    @inlineCallbacks
    def test_vpn_route_target_and_binding(self):
        """
        A VpnInstance holds comma-separated lists, a VpnAfConfig's key is its value
        with spaces replaced, and a VPNPort is keyed by its port.
        """
        yield self.proton.create_route_target("100:1 x", rt_type="export_extcommunity")
        yield self.proton.create_vpn("v1", name="blue", route_distinguishers="100:100",
                                     ipv4_family=["100:1_x", "200:2"])
        yield self.proton.create_vpn_port("p1", "v1")
        rt = yield self.stored(keys.VPN_AFCONFIG, "100:1_x")
        self.assertEqual(rt, {"vrf_rt_value": "100:1 x",
                              "vrf_rt_type": "export_extcommunity",
                              "import_route_policy": None,
                              "export_route_policy": None})
        vpn = yield self.stored(keys.VPN_INSTANCE, "v1")
        self.assertEqual(vpn["ipv4_family"], "100:1_x,200:2")
        self.assertEqual(vpn["ipv6_family"], "")
        self.assertEqual(vpn["vpn_instance_name"], "blue")
        binding = yield self.stored(keys.VPN_PORT, "p1")
        self.assertEqual(binding, {"id": "p1", "vpn_instance": "v1"})

    @inlineCallbacks
    def test_delete(self):
        """
        Deleting an object deletes its key; deleting a missing one deletes nothing.
        """
        yield self.proton.create_vpn("v1")
        result = yield self.proton.delete_vpn("v1")
        self.assertEqual(result.deleted, 1)
        vpn = yield self.stored(keys.VPN_INSTANCE, "v1")
        self.assertIsNone(vpn)
        result = yield self.proton.delete_vpn("v1")
        self.assertEqual(result.deleted, 0)

    @inlineCallbacks
    def test_show(self):
        """
        show() returns every proton and controller key, decoded.
        """
        yield self.proton.create_vpn_port("p1", "v1")
        yield self.client.put(keys.result_key("p1"), b"{}")
        yield self.client.put("/elsewhere/x", b"1")
        shown = yield self.proton.show()
        self.assertEqual(shown, {keys.proton_key(keys.VPN_PORT, "p1"):
                                 {"id": "p1", "vpn_instance": "v1"},
                                 keys.result_key("p1"): {}})

    def test_encode_object(self):
        """
        Values become proton's strings; dicts their JSON text.
        """
        self.assertEqual(
            json.loads(encode_object({"a": True, "b": 1500, "c": None, "d": {"x": False},
                                      "e": "s"})),
            {"a": "True", "b": "1500", "c": None, "d": '{"x": false}', "e": "s"})


class BindTests(EtcdTestCase):
    @inlineCallbacks
    def test_bind_answered(self):
        """
        bind() creates the controller key as {} before the port write, writes the
        port with host_id/device_id, and returns the answer that follows; the port it
        keeps gets the vif attributes.
        """
        yield self.proton.create_port("p1")
        seen = yield self.responder([[RESULT]])
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        self.assertEqual(outcome.result, RESULT)
        self.assertFalse(outcome.timed_out)
        self.assertGreaterEqual(outcome.elapsed, 0.0)
        self.assertEqual(outcome.port["vif_type"], "ovs")
        self.assertEqual(json.loads(outcome.port["vif_details"]), RESULT["vif_details"])
        port = yield self.stored(keys.PORT, "p1")
        self.assertEqual((port["host_id"], port["device_id"]), ("compute1", "vm1"))
        found = yield self.client.get(keys.result_key("p1"))
        # The key was created ({} at its first version) before the port write.
        self.assertEqual(found.kvs[0].version, 2)
        self.assertLess(found.kvs[0].create_revision, seen[0])

    @inlineCallbacks
    def test_before_write_holds_the_port_write(self):
        """
        before_write is called once the controller key exists and its watch is
        open, and the port is written only when the Deferred it returned fires: a
        benchmark lines up many binds so and writes their ports at once.  The
        answer still comes, and the clock runs from the port write.
        """
        yield self.proton.create_port("p1")
        yield self.responder([[RESULT]])
        gate = Deferred()
        calls = []

        def before_write():
            calls.append(True)
            return gate
        asked = reactor.seconds()
        binding = self.proton.bind("p1", "compute1", "vm1", timeout=30.0,
                                   before_write=before_write)
        while not calls:
            yield deferLater(reactor, 0.01, lambda: None)
        found = yield self.client.get(keys.result_key("p1"))
        self.assertEqual(json.loads(found.kvs[0].value), {})
        yield deferLater(reactor, 0.2, lambda: None)
        port = yield self.stored(keys.PORT, "p1")
        self.assertEqual((port["host_id"], port["device_id"]), ("", ""))
        self.assertFalse(binding.called)
        gate.callback(None)
        outcome = yield binding
        self.assertEqual(outcome.result, RESULT)
        # the 0.2 s held before the write are not counted
        self.assertLessEqual(outcome.elapsed, reactor.seconds() - asked - 0.2)
        # etcd answered the port write before the answer came, on the same clock
        self.assertGreater(outcome.written, 0)
        self.assertLessEqual(outcome.written, outcome.elapsed)
        self.assertEqual(calls, [True])

    @inlineCallbacks
    def test_first_change_is_the_answer(self):
        """
        An existing bind result is not taken as the answer; the first change after the
        request is, even an empty {} (proton would copy it as an empty vif_type).
        """
        yield self.proton.create_port("p1")
        yield self.client.put(keys.result_key("p1"), json.dumps({"vif_type": "old"}))
        yield self.responder([[{}, RESULT]])
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        self.assertEqual(outcome.result, {})

    @inlineCallbacks
    def test_bind_times_out(self):
        """
        With nobody answering, bind() gives up after its timeout with no result, and
        leaves the controller key it created as {}.  When etcd answered the port
        write is still told.
        """
        yield self.proton.create_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=0.2)
        self.assertIsNone(outcome.result)
        self.assertTrue(outcome.timed_out)
        self.assertGreater(outcome.written, 0)
        self.assertLess(outcome.written, outcome.elapsed)
        self.assertIsNone(outcome.port["vif_type"])
        found = yield self.client.get(keys.result_key("p1"))
        self.assertEqual(json.loads(found.kvs[0].value), {})

    @inlineCallbacks
    def test_bind_unknown_port(self):
        """
        Binding a port that is nowhere fails with a message naming it.
        """
        from shim.proton import ProtonError

        error = yield self.assertFailure(self.proton.bind("nope", "h", "d"), ProtonError)
        self.assertIn("nope", str(error))

    @inlineCallbacks
    def test_unbind_clears(self):
        """
        unbind() clears host_id, device_id and the vif attributes and rewrites the
        port whole.
        """
        yield self.proton.create_port("p1", name="kept")
        yield self.responder([[RESULT]])
        yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        yield self.proton.unbind("p1")
        port = yield self.stored(keys.PORT, "p1")
        self.assertEqual(sorted(port), sorted(PORT_ATTRIBUTES))
        self.assertEqual((port["host_id"], port["device_id"]), ("", ""))
        self.assertEqual((port["vif_type"], port["vif_details"]), (None, None))
        self.assertEqual(port["name"], "kept")


class CommandLineTests(EtcdTestCase):
    """
    C{shim-proton} run as a real process.
    """

    timeout = 120

    def cli(self, *args, etcd=None):
        """
        Run C{python -m shim.proton --etcd URL ARGS}; fire with (out, err, code).
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        argv = ["-m", "shim.proton", "--etcd", etcd or self.etcd.client_url] + list(args)
        d = getProcessOutputAndValue(sys.executable, argv, env=env, path=REPO,
                                     reactor=reactor)
        return d.addCallback(
            lambda r: (r[0].decode("utf-8"), r[1].decode("utf-8"), r[2]))

    @inlineCallbacks
    def test_create_show_delete(self):
        """
        Objects created on the command line are in etcd in proton's format, show
        prints them, delete removes them.
        """
        out, err, code = yield self.cli("rt", "create", "100:1", "--type", "both")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.cli("vpn", "create", "v1", "--name", "blue",
                                        "--rd", "100:1", "--ipv4-family", "100:1")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.cli("port", "create", "p1", "--mtu", "9000",
                                        "--mac", "fa:16:3e:00:00:09")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.cli("vpnport", "create", "p1", "v1")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.cli("port", "update", "p1", "--status", "ACTIVE")
        self.assertEqual(code, 0, err)

        out, err, code = yield self.cli("show")
        self.assertEqual(code, 0, err)
        shown = json.loads(out)
        port = shown[keys.proton_key(keys.PORT, "p1")]
        self.assertEqual((port["mtu"], port["mac_address"], port["status"]),
                         ("9000", "fa:16:3e:00:00:09", "ACTIVE"))
        self.assertEqual(shown[keys.proton_key(keys.VPN_INSTANCE, "v1")]["ipv4_family"],
                         "100:1")
        self.assertEqual(shown[keys.proton_key(keys.VPN_AFCONFIG, "100:1")]
                         ["vrf_rt_type"], "both")
        self.assertEqual(shown[keys.proton_key(keys.VPN_PORT, "p1")],
                         {"id": "p1", "vpn_instance": "v1"})

        for args in (("vpnport", "delete", "p1"), ("port", "delete", "p1"),
                     ("vpn", "delete", "v1"), ("rt", "delete", "100:1")):
            out, err, code = yield self.cli(*args)
            self.assertEqual(code, 0, err)
        out, err, code = yield self.cli("show")
        self.assertEqual(json.loads(out), {})

        out, err, code = yield self.cli("port", "delete", "p1")
        self.assertNotEqual(code, 0)
        self.assertIn("no port 'p1'", err)

    @inlineCallbacks
    def test_bind_timeout_and_unbind(self):
        """
        bind with nobody answering says it timed out and exits 1; unbind works.
        """
        yield self.proton.create_port("p1")
        out, err, code = yield self.cli("bind", "p1", "--host", "h1", "--device", "d1",
                                        "--timeout", "0.3")
        self.assertEqual(code, 1)
        self.assertIn("timed out after 0.3 s", out)
        out, err, code = yield self.cli("unbind", "p1")
        self.assertEqual(code, 0, err)
        port = yield self.stored(keys.PORT, "p1")
        self.assertEqual(port["host_id"], "")

    @inlineCallbacks
    def test_bind_answered(self):
        """
        bind prints the result proton received as JSON.
        """
        yield self.proton.create_port("p1")
        yield self.responder([[RESULT]])
        out, err, code = yield self.cli("bind", "p1", "--host", "h1", "--device", "d1",
                                        "--timeout", "60")
        self.assertEqual(code, 0, err)
        shown = json.loads(out)
        self.assertEqual(shown["vif_type"], "ovs")
        self.assertEqual(shown["vif_details"], RESULT["vif_details"])
        self.assertEqual(shown["controller"], "FakeShim")

    @inlineCallbacks
    def test_bind_answered_empty(self):
        """
        An answer without vif_type (a "{}") is what proton would copy into its
        database: bind says Nova would plug nothing and exits 1.
        """
        yield self.proton.create_port("p1")
        yield self.responder([[{}]])
        out, err, code = yield self.cli("bind", "p1", "--host", "h1", "--device", "d1",
                                        "--timeout", "60")
        self.assertEqual(code, 1, err)
        self.assertIn("without a vif_type", out)

    @inlineCallbacks
    def test_etcd_unreachable(self):
        """
        An etcd that cannot be reached gives one clear line and a non-zero exit.
        """
        out, err, code = yield self.cli("--etcd-timeout", "2", "show",
                                        etcd="http://127.0.0.1:9")
        self.assertNotEqual(code, 0)
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertIn("127.0.0.1:9", lines[0])


V2_ARGS = ["--enable-v2=true"]


class GenerationTestCase(TestCase):
    """
    A fresh etcd with v2 on, a client of C{api} and a L{ProtonClient} writing model
    generation C{schema} through it.
    """

    timeout = 60
    api = "v2"
    schema = SEED

    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self, extra_args=V2_ARGS)
        factory = EtcdV2Client if self.api == "v2" else EtcdClient
        self.client = factory([self.etcd.client_url])
        self.addCleanup(self.client.close)
        self.proton = ProtonClient(self.client, self.schema)
        yield self.client.status()

    @inlineCallbacks
    def stored(self, key):
        """The decoded value at C{key}, or C{None}."""
        found = yield self.client.get(key)
        if not found.kvs:
            return None
        return json.loads(found.kvs[0].value)

    def row(self, table, name):
        return self.stored(self.schema.proton_key(table, name))

    @inlineCallbacks
    def responder(self, answers):
        """
        A fake shim over this test's API: for each bind request of a port, write the
        next of C{answers} to its result key.  Returns the list of the bind
        requests' revisions.
        """
        status = yield self.client.status()
        seen = []
        answers = list(answers)
        writing = []
        self.addCleanup(lambda: DeferredList(writing))

        def on_event(event):
            if event.type != "PUT":
                return
            port = json.loads(event.value)
            if port.get("host_id") and port.get("device_id") and answers \
                    and not port.get("vif_type"):
                seen.append(event.mod_revision)
                uuid = event.key.rsplit("/", 1)[1]
                writing.append(write(self.schema.result_key(uuid), answers.pop(0)))

        @inlineCallbacks
        def write(key, values):
            for value in values:
                yield self.client.put(key, json.dumps(value))

        watch = self.client.watch(self.schema.proton_key(self.schema.port, ""),
                                  status.revision + 1, on_event, prefix=True)
        self.addCleanup(watch.stop)
        yield watch.started
        return seen


class SeedOverV2Tests(GenerationTestCase):
    """
    The seed's model written through etcd's v2 API.
    """

    @inlineCallbacks
    def test_objects_in_v2(self):
        """
        Objects land in v2's store with proton's value format, not in v3's.
        """
        yield self.proton.create_route_target("100:1")
        yield self.proton.create_vpn("v1", ipv4_family="100:1")
        yield self.proton.create_port("p1", mtu=9000)
        yield self.proton.create_vpn_port("p1", "v1")
        port = yield self.row(keys.PORT, "p1")
        self.assertEqual(sorted(port), sorted(PORT_ATTRIBUTES))
        self.assertEqual(port["mtu"], "9000")
        binding = yield self.row(keys.VPN_PORT, "p1")
        self.assertEqual(binding, {"id": "p1", "vpn_instance": "v1"})
        v3 = EtcdClient([self.etcd.client_url])
        self.addCleanup(v3.close)
        found = yield v3.get_all("/proton/")
        self.assertEqual(found.kvs, [])
        shown = yield self.proton.show()
        self.assertEqual(len(shown), 4)

    @inlineCallbacks
    def test_bind_answered(self):
        """
        Over v2, bind() creates the result key as {} before the port write, and
        takes the answer that follows.
        """
        yield self.proton.create_port("p1")
        seen = yield self.responder([[RESULT]])
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        self.assertEqual(outcome.result, RESULT)
        self.assertEqual(outcome.port["vif_type"], "ovs")
        # v2 gives a set key a new createdIndex: its first event tells when it came.
        first = []
        watch = self.client.watch(keys.result_key("p1"), 1, first.append, prefix=False)
        yield wait_for(lambda: first, what="the result key's first event")
        yield watch.stop()
        self.assertEqual(first[0].value, b"{}")
        self.assertLess(first[0].mod_revision, seen[0])
        port = yield self.row(keys.PORT, "p1")
        self.assertEqual((port["host_id"], port["device_id"]), ("compute1", "vm1"))
        # The seed's tool does not rewrite the port with the answer.
        self.assertIsNone(port["vif_type"])

    @inlineCallbacks
    def test_existing_key_first_change(self):
        """
        With the result key there already, the first change after its
        modifiedIndex is the answer, even {}: the old value is not.
        """
        yield self.proton.create_port("p1")
        yield self.client.put(keys.result_key("p1"), json.dumps({"vif_type": "old"}))
        yield self.responder([[{}, RESULT]])
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        self.assertEqual(outcome.result, {})

    @inlineCallbacks
    def test_existing_key_past_the_window(self):
        """
        A result key last written more than 1000 v2 events ago: its
        modifiedIndex + 1 has left etcd's history ("event index cleared"), where the
        real proton gives up; this one watches from its read and is answered.
        """
        yield self.proton.create_port("p1")
        yield self.client.put(keys.result_key("p1"), b"{}")
        for i in range(1010):
            yield self.client.put("/other/k%d" % (i % 10,), str(i))
        yield self.responder([[RESULT]])
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        self.assertEqual(outcome.result, RESULT)

    @inlineCallbacks
    def test_bind_times_out_and_unbind(self):
        """
        Nobody answering: no result after the timeout, the key left as {}; unbind
        clears the placement and the vif attributes.
        """
        yield self.proton.create_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=0.3)
        self.assertTrue(outcome.timed_out)
        result = yield self.stored(keys.result_key("p1"))
        self.assertEqual(result, {})
        yield self.proton.unbind("p1")
        port = yield self.row(keys.PORT, "p1")
        self.assertEqual((port["host_id"], port["device_id"], port["vif_type"]),
                         ("", "", None))

    @inlineCallbacks
    def test_etcd_killed_mid_bind(self):
        """
        etcd killed while proton waits: bind() fails with L{BindInterrupted}
        naming why, and leaves no unhandled error behind.
        """
        yield self.proton.create_port("p1")
        d = self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        yield wait_for(lambda: self.proton.objects[(keys.PORT, "p1")].get("host_id"),
                       what="the port write")
        self.etcd.kill()
        error = yield self.assertFailure(d, BindInterrupted, EtcdError)
        if isinstance(error, BindInterrupted):
            self.assertEqual(error.reason, "connection_lost")


class Gluon1Tests(GenerationTestCase):
    """
    Gluon 1.1's model, through v2 as the real proton-server writes it
    (docs/real-proton.md).
    """

    schema = GLUON_1

    def assert_proton_strings(self, row):
        for name, value in row.items():
            self.assertTrue(value is None or isinstance(value, str),
                            "%s is %r" % (name, value))

    @inlineCallbacks
    def test_create_port(self):
        """
        A port is a Port row with timestamps and its placement null, then
        /gluon/port/<id>, then its default Interface keyed by the port's id.
        """
        yield self.proton.create_port("p1", name="web")
        port = yield self.row("Port", "p1")
        self.assertEqual(sorted(port), sorted(PORT_ATTRIBUTES_V1
                                              + ("created_at", "updated_at")))
        self.assert_proton_strings(port)
        for name in ("profile", "device_id", "device_owner", "host_id", "vif_details",
                     "vif_type"):
            self.assertIsNone(port[name], name)
        self.assertEqual((port["mtu"], port["admin_state_up"], port["vlan_transparency"]),
                         ("1500", "True", "False"))
        self.assertRegex(port["created_at"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
        gluon = yield self.stored("/gluon/port/p1")
        self.assertEqual(sorted(gluon), ["service", "tenant_id", "url"])
        self.assertEqual(gluon["service"], "net-l3vpn")
        interface = yield self.row("Interface", "p1")
        self.assert_proton_strings(interface)
        self.assertEqual(
            {k: interface[k] for k in ("id", "port_id", "name", "segmentation_type",
                                       "segmentation_id")},
            {"id": "p1", "port_id": "p1", "name": "web_default",
             "segmentation_type": "none", "segmentation_id": "0"})
        error = yield self.assertFailure(self.proton.create_port("p2", ipaddress="1.2.3.4"),
                                         ProtonError)
        self.assertIn("ipaddress", str(error))

    @inlineCallbacks
    def test_service_binding_route_target(self):
        """
        A VPN is a VpnService, a binding a VpnBinding keyed by the interface (with
        the addresses, no id), a route target carries tenant_id; all are stamped.
        """
        yield self.proton.create_route_target("100:1")
        yield self.proton.create_vpn("v1", name="blue", ipv4_family=["100:1"],
                                     route_distinguishers="100:100")
        yield self.proton.create_port("p1")
        yield self.proton.create_vpn_port("p1", "v1", ipaddress="10.0.0.5",
                                          subnet_prefix=24, gateway="10.0.0.1")
        rt = yield self.row("VpnAfConfig", "100:1")
        self.assertEqual(sorted(rt), sorted([
            "created_at", "updated_at", "tenant_id", "vrf_rt_value", "vrf_rt_type",
            "import_route_policy", "export_route_policy"]))
        vpn = yield self.row("VpnService", "v1")
        self.assertEqual((vpn["name"], vpn["ipv4_family"], vpn["route_distinguishers"]),
                         ("blue", "100:1", "100:100"))
        self.assertNotIn("vpn_instance_name", vpn)
        binding = yield self.row("VpnBinding", "p1")
        self.assertEqual(sorted(binding), sorted([
            "created_at", "updated_at", "tenant_id", "interface_id", "service_id",
            "ipaddress", "subnet_prefix", "gateway"]))
        self.assertEqual((binding["interface_id"], binding["service_id"],
                          binding["subnet_prefix"]), ("p1", "v1", "24"))
        yield self.proton.update_vpn("v1", ipv4_family="100:1,100:2")
        updated = yield self.row("VpnService", "v1")
        self.assertEqual(updated["created_at"], vpn["created_at"])
        self.assertEqual(updated["ipv4_family"], "100:1,100:2")

    @inlineCallbacks
    def test_bind_rewrites_port_and_unbind(self):
        """
        A bind answered: the result key is Port's, the port is written with
        device_owner and profile, then again with vif_type and json.dumps of
        vif_details; unbind writes the placement cleared, then vif_type null and
        vif_details "{}".
        """
        yield self.proton.create_port("p1")
        writes = []
        status = yield self.client.status()
        watch = self.client.watch(self.schema.proton_key("Port", "p1"),
                                  status.revision + 1,
                                  lambda e: writes.append(json.loads(e.value)),
                                  prefix=False)
        self.addCleanup(watch.stop)
        yield watch.started
        yield self.responder([[RESULT]])
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        self.assertEqual(outcome.result, RESULT)
        found = yield self.client.get("/controller/net-l3vpn/Port/p1")
        self.assertEqual(json.loads(found.kvs[0].value), RESULT)
        yield wait_for(lambda: len(writes) >= 2, what="the port rewritten")
        request, answered = writes[:2]
        self.assertEqual((request["host_id"], request["device_id"],
                          request["device_owner"], request["profile"],
                          request["vif_type"]),
                         ("compute1", "vm1", "compute:nova", "{}", None))
        self.assertEqual(answered["vif_type"], "ovs")
        self.assertEqual(answered["vif_details"], json.dumps(RESULT["vif_details"]))

        yield self.proton.unbind("p1")
        yield wait_for(lambda: len(writes) >= 4, what="the unbind's two writes")
        cleared, vif_cleared = writes[2:4]
        self.assertEqual((cleared["host_id"], cleared["device_id"], cleared["vif_type"]),
                         ("", "", "ovs"))
        self.assertEqual((vif_cleared["vif_type"], vif_cleared["vif_details"]),
                         (None, "{}"))

    @inlineCallbacks
    def test_delete_port(self):
        """
        Deleting a port deletes /gluon/port/<id>, the Port and its Interface, not its
        VpnBinding nor its result key.
        """
        yield self.proton.create_port("p1")
        yield self.proton.create_vpn_port("p1", "v1")
        yield self.client.put("/controller/net-l3vpn/Port/p1", b"{}")
        yield self.proton.delete_port("p1")
        shown = yield self.proton.show()
        self.assertEqual(sorted(shown), [
            "/controller/net-l3vpn/Port/p1", "/proton/net-l3vpn/VpnBinding/p1"])


class Gluon1OverV3Tests(GenerationTestCase):
    """
    Gluon 1.x's model written through v3 (what the shim's v3 mode reads).
    """

    api = "v3"
    schema = GLUON_1

    @inlineCallbacks
    def test_bind_answered(self):
        yield self.proton.create_port("p1")
        yield self.responder([[RESULT]])
        outcome = yield self.proton.bind("p1", "compute1", "vm1", timeout=30.0)
        self.assertEqual(outcome.result, RESULT)
        port = yield self.row("Port", "p1")
        self.assertEqual(port["vif_type"], "ovs")


class ShimOverV2Tests(GenerationTestCase):
    """
    The shim itself (in this process, C{[etcd] api = v2}) answering binds that
    L{ProtonClient} makes through v2, in each model generation.
    """

    @inlineCallbacks
    def bind_through_shim(self, schema):
        self.proton = ProtonClient(self.client, schema)
        backend = RecordingBackend()
        extra = "api_model = %s\n[etcd]\napi = v2\n[election]\nenabled = false" % (
            schema.name,)
        shim = yield ShimRunner(self, [self.etcd.client_url]).start(backend, extra=extra)
        yield self.proton.create_route_target("100:1")
        yield self.proton.create_vpn("v1", ipv4_family="100:1")
        yield self.proton.create_port("p1")
        yield self.proton.create_vpn_port("p1", "v1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(outcome.result["vif_type"], "ovs")
        yield wait_for(lambda: backend.called("bind_port", "p1") == 1, what="bind_port")
        yield self.proton.unbind("p1")
        yield wait_for(lambda: backend.called("unbind_port", "p1") == 1,
                       what="unbind_port")
        result = yield wait_for(
            lambda: self.stored(schema.result_key("p1")).addCallback(
                lambda r: r == {} and r is not None), what="the result cleared")
        self.assertTrue(result)
        return shim, backend

    def test_seed_model(self):
        return self.bind_through_shim(SEED)

    @inlineCallbacks
    def test_gluon_1_model(self):
        shim, backend = yield self.bind_through_shim(GLUON_1)
        # The rewrite with our own vif attributes is no change for the backend.
        self.assertEqual(backend.called("modify_port", "p1"), 0)


class GenerationCommandLineTests(GenerationTestCase):
    """
    C{shim-proton --api v2 --model net-l3vpn-v1.0} as a real process.
    """

    timeout = 120
    schema = GLUON_1

    def cli(self, *args):
        return CommandLineTests.cli(
            self, "--api", "v2", "--model", "net-l3vpn-v1.0", *args)

    @inlineCallbacks
    def test_create_bind_show(self):
        for args in (("rt", "create", "100:1"),
                     ("vpn", "create", "v1", "--name", "blue", "--ipv4-family", "100:1"),
                     ("port", "create", "p1"),
                     ("vpnport", "create", "p1", "v1", "--ip", "10.0.0.5",
                      "--prefix", "24")):
            out, err, code = yield self.cli(*args)
            self.assertEqual(code, 0, err)
        out, err, code = yield self.cli("port", "create", "p2", "--ip", "10.0.0.6")
        self.assertNotEqual(code, 0)
        self.assertIn("ipaddress", err)
        yield self.responder([[RESULT]])
        out, err, code = yield self.cli("bind", "p1", "--host", "h1", "--device", "d1",
                                        "--timeout", "60")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["vif_type"], "ovs")
        out, err, code = yield self.cli("show")
        self.assertEqual(code, 0, err)
        shown = json.loads(out)
        self.assertEqual(sorted(shown), sorted([
            "/controller/net-l3vpn/Port/p1", "/gluon/port/p1",
            "/proton/net-l3vpn/Interface/p1", "/proton/net-l3vpn/Port/p1",
            "/proton/net-l3vpn/VpnAfConfig/100:1", "/proton/net-l3vpn/VpnBinding/p1",
            "/proton/net-l3vpn/VpnService/v1"]))
        self.assertEqual(shown["/proton/net-l3vpn/Port/p1"]["vif_type"], "ovs")
        self.assertEqual(shown["/proton/net-l3vpn/VpnBinding/p1"]["ipaddress"],
                         "10.0.0.5")
