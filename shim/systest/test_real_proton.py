"""
End-to-end tests against the real Gluon 1.1.0 proton-server (installed by
C{scripts/setup-proton}), driven through its REST API as Gluon's Nova/Neutron plugin
drives it, over a real etcd with the v2 API on.  Every test starts a fresh proton:
proton's bind wait index belongs to the process (see docs/real-proton.md), so one
test's binds would change the next one's.

  - L{ProtonWritesTests}: what proton writes to etcd for each REST call, and what its
    REST answer to a bind is, with the bare v2 responder of L{shim.test.gluon} or
    with nobody answering.  These prove the harness.
  - L{WaitIndexTests}: proton's wait-index bug, reproduced, and the work-around of
    creating each port's result key as C{{}} when the port first appears.
  - L{ShimTests}: the shim itself, as a C{twistd shimserver} process over v2 with
    Gluon 1.x's model and a backend that records its calls to a file.

The tests skip, saying why, only when proton's virtualenv is missing.
"""

import json
import uuid

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from shim.test.etcdserver import start_etcd
from shim.test.gluon import (
    ETCD_V2_ARGS, VIF, BareResponder, EtcdV2, ProtonAPI, find_proton_server,
    result_key, row_key, start_proton, start_shim, wait_until)

TENANT = "22222222-2222-2222-2222-222222222222"
ROUTE_TARGET = "100:1"


def new_id():
    return str(uuid.uuid4())


class RealProtonMixin(object):
    """
    A fresh etcd (v2 on) and a fresh proton-server per test: C{self.etcd},
    C{self.proton}, C{self.api} (its REST API) and C{self.v2} (etcd's v2 keys).
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self):
        find_proton_server()
        self.etcd = start_etcd(self, extra_args=ETCD_V2_ARGS)
        self.proton = yield start_proton(self, self.etcd.client_url)
        self.api = ProtonAPI(self.proton.url)
        self.v2 = EtcdV2(self.etcd.client_url)

    def responder(self, **kwargs):
        """A started L{BareResponder} on this test's etcd, stopped at the end."""
        responder = BareResponder(self.etcd.client_url, **kwargs)
        self.addCleanup(responder.stop)
        return responder.start()

    def row(self, table, key):
        """Proton's row C{key} of C{table} as it is in etcd, decoded, or None."""
        return self.v2.get_json(row_key(table, key))

    def wait_row(self, table, key, predicate=lambda row: row is not None, what=None):
        """
        Wait until proton's row satisfies C{predicate}: proton writes to etcd from a
        thread of its own, after answering the REST call.
        """
        @inlineCallbacks
        def check():
            row = yield self.row(table, key)
            return predicate(row) and (row or True)
        return wait_until(check, what=what or "%s/%s in etcd" % (table, key))

    @inlineCallbacks
    def create_objects(self, port_id=None, vpn_id=None, afconfig=True):
        """
        Create what the plugin creates for one port in a VPN: the route target, the
        VPN, the port and its binding to the VPN (keyed by the port's default
        interface, which proton creates with the port's id).  Returns once every row
        is in etcd.
        """
        port_id = port_id or new_id()
        vpn_id = vpn_id or new_id()
        if afconfig:
            yield self.api.create_vpnafconfig(ROUTE_TARGET, TENANT)
        yield self.api.create_vpn(vpn_id, TENANT, ipv4_family=ROUTE_TARGET,
                                  route_distinguishers=ROUTE_TARGET)
        yield self.api.create_port(port_id, TENANT)
        yield self.api.create_vpnbinding(port_id, vpn_id, TENANT)
        yield self.wait_row("VpnBinding", port_id)
        return port_id, vpn_id

    @inlineCallbacks
    def create_port(self, port_id=None):
        port_id = port_id or new_id()
        yield self.api.create_port(port_id, TENANT)
        yield self.wait_row("Port", port_id)
        return port_id

    def assertAnswered(self, answer, vif=VIF):
        """Proton's REST answer to a bind carries C{vif}'s vif_type and details."""
        self.assertEqual(answer["vif_type"], vif["vif_type"], answer)
        self.assertEqual(json.loads(answer["vif_details"]), vif["vif_details"], answer)

    def assertNotAnswered(self, answer):
        self.assertIsNone(answer["vif_type"], answer)


class ProtonWritesTests(RealProtonMixin, TestCase):
    """
    What proton writes for each REST call, and its REST answer to a bind.
    """

    @inlineCallbacks
    def test_created_rows(self):
        """
        Every object is written at C{/proton/net-l3vpn/<Table>/<key>} as the whole
        row, non-null values as strings; a port also gets its default Interface and
        C{/gluon/port/<id>}.
        """
        port_id, vpn_id = yield self.create_objects()
        port = yield self.row("Port", port_id)
        self.assertEqual(port["id"], port_id)
        self.assertEqual(port["admin_state_up"], "True")
        self.assertEqual(port["mtu"], "1500")
        self.assertEqual(port["vlan_transparency"], "False")
        self.assertIsNone(port["host_id"])
        self.assertIsNone(port["vif_type"])
        self.assertIn("created_at", port)
        self.assertIn("updated_at", port)
        self.assertNotIn("ipaddress", port)
        interface = yield self.row("Interface", port_id)
        self.assertEqual((interface["port_id"], interface["segmentation_type"],
                          interface["segmentation_id"]), (port_id, "none", "0"))
        vpn = yield self.row("VpnService", vpn_id)
        self.assertEqual((vpn["ipv4_family"], vpn["route_distinguishers"]),
                         (ROUTE_TARGET, ROUTE_TARGET))
        binding = yield self.row("VpnBinding", port_id)
        self.assertEqual(
            (binding["interface_id"], binding["service_id"], binding["ipaddress"],
             binding["subnet_prefix"], binding["gateway"]),
            (port_id, vpn_id, "10.0.0.5", "24", "10.0.0.1"))
        self.assertNotIn("id", binding)
        afconfig = yield self.row("VpnAfConfig", ROUTE_TARGET)
        self.assertEqual((afconfig["vrf_rt_value"], afconfig["vrf_rt_type"]),
                         (ROUTE_TARGET, "both"))
        gluon_port = yield self.v2.get_json("/gluon/port/" + port_id)
        self.assertEqual(sorted(gluon_port), ["service", "tenant_id", "url"])
        self.assertEqual(gluon_port["service"], "net-l3vpn")
        # Creating writes nothing under /controller/.
        result = yield self.v2.get(result_key(port_id))
        self.assertIsNone(result)

    @inlineCallbacks
    def test_bind_answered_by_bare_responder(self):
        """
        With a responder writing the result, proton's REST answer to the bind carries
        its vif_type and vif_details, and proton rewrites the port with them.
        """
        responder = yield self.responder(hosts=["compute1"])
        port_id, _ = yield self.create_objects()
        answer = yield self.api.bind(port_id, "compute1")
        self.assertAnswered(answer)
        self.assertEqual(answer["host_id"], "compute1")
        self.assertEqual(responder.answered, [(port_id, "compute1")])
        result = yield self.v2.get_json(result_key(port_id))
        self.assertEqual(result, dict(VIF, controller="bare"))
        yield self.wait_row("Port", port_id, lambda row: row["vif_type"] == "ovs",
                            "proton's rewrite of the port with vif_type")
        shown = yield self.api.show_port(port_id)
        self.assertAnswered(shown)

    @inlineCallbacks
    def test_bind_unanswered(self):
        """
        With nobody answering, proton gives up (after about 8 s) and answers the bind
        with vif_type null; the result key holds the C{{}} proton created itself.
        """
        port_id, _ = yield self.create_objects()
        answer = yield self.api.bind(port_id, "compute1")
        self.assertNotAnswered(answer)
        self.assertIsNone(answer["vif_details"])
        result = yield self.v2.get_json(result_key(port_id))
        self.assertEqual(result, {})

    @inlineCallbacks
    def test_unbind(self):
        """
        Unbind empties host_id and device_id; proton sets vif_type null and
        vif_details C{"{}"} itself and leaves the result key alone.
        """
        yield self.responder(hosts=["compute1"])
        port_id, _ = yield self.create_objects()
        yield self.api.bind(port_id, "compute1")
        answer = yield self.api.unbind(port_id)
        self.assertEqual((answer["host_id"], answer["device_id"], answer["vif_type"],
                          answer["vif_details"]), ("", "", None, "{}"))
        yield self.wait_row("Port", port_id, lambda row: row["host_id"] == "",
                            "the unbound port in etcd")
        result = yield self.v2.get_json(result_key(port_id))
        self.assertEqual(result, dict(VIF, controller="bare"))

    @inlineCallbacks
    def test_delete(self):
        """
        Deleting a port deletes its row, its Interface and C{/gluon/port/<id>}; the
        result key and the VpnBinding stay.
        """
        yield self.responder(hosts=["compute1"])
        port_id, _ = yield self.create_objects()
        yield self.api.bind(port_id, "compute1")
        yield self.api.delete_port(port_id)
        yield self.wait_row("Interface", port_id, lambda row: row is None,
                            "the Interface's delete")
        port = yield self.row("Port", port_id)
        self.assertIsNone(port)
        gluon_port = yield self.v2.get("/gluon/port/" + port_id)
        self.assertIsNone(gluon_port)
        binding = yield self.row("VpnBinding", port_id)
        self.assertIsNotNone(binding)
        result = yield self.v2.get_json(result_key(port_id))
        self.assertEqual(result, dict(VIF, controller="bare"))

    @inlineCallbacks
    def test_update_vpn(self):
        """A VPN update rewrites its whole row."""
        port_id, vpn_id = yield self.create_objects()
        yield self.api.update_vpn(vpn_id, ipv4_family="100:1,100:2")
        yield self.wait_row("VpnService", vpn_id,
                            lambda row: row["ipv4_family"] == "100:1,100:2",
                            "the updated VPN")


    @inlineCallbacks
    def test_sync_thread_stops_after_failed_write(self):
        """
        Proton's writer thread stops for good after one failed etcd write: a port
        created while etcd is down, and one created after etcd is back, never reach
        etcd (REST still answers).  This is why fault tests drive etcd with
        shim-proton.
        """
        self.etcd.stop()
        lost = yield self.api.create_port(new_id(), TENANT)
        yield wait_until(lambda: "SyncThread exiting" in self.proton.log_text(),
                         what="proton's sync thread to stop")
        self.etcd.start()
        after = yield self.api.create_port(new_id(), TENANT)
        self.assertIn("Error writing to etcd", self.proton.log_text())
        for port in (lost, after):
            row = yield self.row("Port", port["id"])
            self.assertIsNone(row, port["id"])


class WaitIndexTests(RealProtonMixin, TestCase):
    """
    Proton's wait index belongs to the process: it is set only when the result key
    exists at a bind; when proton creates the key, it keeps the old index and catches
    its own C{{}}.
    """

    def precreated(self, responder, port):
        """
        When C{responder} creates result keys, wait until it has created C{port}'s
        (a bind sooner would find no key, whichever way the test goes).
        """
        if not responder.precreate:
            return succeed(None)
        return wait_until(lambda: self.v2.get(result_key(port)),
                          what="the result key the responder creates")

    @inlineCallbacks
    def rebind_then_first_bind(self, responder):
        """
        Bind port A, bind it again (the key exists now: proton remembers its index),
        then bind a new port B for the first time; return the answer to B's bind.
        """
        port_a = yield self.create_port()
        yield self.precreated(responder, port_a)
        answer = yield self.api.bind(port_a, "compute1")
        self.assertAnswered(answer)
        answer = yield self.api.bind(port_a, "compute1")
        self.assertAnswered(answer)
        port_b = yield self.create_port()
        yield self.precreated(responder, port_b)
        answer = yield self.api.bind(port_b, "compute1")
        # Either way the responder answers B, once proton has written its bind.
        yield wait_until(lambda: (port_b, "compute1") in responder.answered,
                         what="the responder's answer to B")
        return answer

    @inlineCallbacks
    def test_bug_reproduced(self):
        """
        Without the work-around, the first bind of a new port after any re-bind gets
        no vif: proton takes its own C{{}} as the answer.
        """
        responder = yield self.responder(hosts=["compute1"])
        answer = yield self.rebind_then_first_bind(responder)
        self.assertNotAnswered(answer)
        self.assertIn("Key Not Found, creating it", self.proton.log_text())

    @inlineCallbacks
    def test_precreated_result_key_avoids_bug(self):
        """
        When the responder creates each port's result key as C{{}} (only if absent)
        as the port first appears, proton always finds the key and waits from its
        index: the same sequence answers B's bind.
        """
        responder = yield self.responder(hosts=["compute1"], precreate=True)
        answer = yield self.rebind_then_first_bind(responder)
        self.assertAnswered(answer)
        self.assertNotIn("Key Not Found, creating it", self.proton.log_text())

    @inlineCallbacks
    def test_precreated_many_first_binds(self):
        """
        With the work-around, every first bind of several new ports after a re-bind
        is answered.
        """
        responder = yield self.responder(hosts=["compute1"], precreate=True)
        yield self.rebind_then_first_bind(responder)
        for _ in range(3):
            port_id = yield self.create_port()
            yield self.precreated(responder, port_id)
            answer = yield self.api.bind(port_id, "compute1")
            self.assertAnswered(answer)


class ShimTests(RealProtonMixin, TestCase):
    """
    The shim as a C{twistd shimserver} process, C{[etcd] api = v2},
    C{[shim] api_model = net-l3vpn-v1.0}, C{host_list = compute1}, its backend
    recording calls to a file.
    """

    @inlineCallbacks
    def setUp(self):
        yield RealProtonMixin.setUp(self)
        self.shim = yield start_shim(self, self.etcd.client_url, hosts="compute1")

    def calls(self, callback, uuid=None):
        return self.shim.calls(callback, uuid)

    def wait_call(self, callback, uuid):
        return wait_until(lambda: self.calls(callback, uuid),
                          what="%s(%s) in the shim's backend; shim output:\n%s" % (
                              callback, uuid, self.shim.output()))

    @inlineCallbacks
    def bound_port(self):
        """Create the objects of one port and bind it on compute1; its ids."""
        port_id, vpn_id = yield self.create_objects()
        answer = yield self.api.bind(port_id, "compute1")
        self.assertAnswered(answer)
        return port_id, vpn_id

    @inlineCallbacks
    def test_bind_on_our_host(self):
        """
        A bind on one of the shim's hosts calls bind_port, and proton's REST answer
        carries the backend's vif_type and vif_details.
        """
        port_id, _ = yield self.create_objects()
        answer = yield self.api.bind(port_id, "compute1")
        self.assertAnswered(answer)
        self.assertEqual(len(self.calls("bind_port", port_id)), 1)
        result = yield self.v2.get_json(result_key(port_id))
        self.assertEqual(result.get("controller"), "SimServer")

    @inlineCallbacks
    def test_bind_on_foreign_host(self):
        """
        A bind on a host the shim does not serve gets no answer from it: proton gives
        up and answers vif_type null, and bind_port is not called.
        """
        port_id, _ = yield self.create_objects()
        answer = yield self.api.bind(port_id, "compute9")
        self.assertNotAnswered(answer)
        self.assertEqual(self.calls("bind_port"), [])

    @inlineCallbacks
    def test_update_vpn(self):
        """Updating the VPN of a port bound by the shim calls modify_service."""
        port_id, vpn_id = yield self.bound_port()
        yield self.api.update_vpn(vpn_id, ipv4_family="100:1,100:2")
        yield self.wait_call("modify_service", vpn_id)

    @inlineCallbacks
    def test_unbind(self):
        """Unbinding a port bound by the shim calls unbind_port."""
        port_id, _ = yield self.bound_port()
        yield self.api.unbind(port_id)
        yield self.wait_call("unbind_port", port_id)

    @inlineCallbacks
    def test_delete(self):
        """Deleting a port bound by the shim calls delete_port."""
        port_id, _ = yield self.bound_port()
        yield self.api.delete_port(port_id)
        yield self.wait_call("delete_port", port_id)

    @inlineCallbacks
    def test_first_bind_after_rebind(self):
        """
        The wait-index sequence through the shim: bind A, bind A again, then the
        first bind of a new port B is answered too (the shim creates B's result key
        as C{{}} when B appears, so proton finds it and waits from its index).
        """
        port_a, _ = yield self.create_objects()
        answer = yield self.api.bind(port_a, "compute1")
        self.assertAnswered(answer)
        answer = yield self.api.bind(port_a, "compute1")
        self.assertAnswered(answer)
        port_b = yield self.create_port()
        yield wait_until(
            lambda: self.v2.get(result_key(port_b)),
            what="B's result key: the shim creates it as {} (prevExist=false) when B "
                 "first appears, so that proton waits from its index (see "
                 "docs/real-proton.md, the wait-index bug)")
        answer = yield self.api.bind(port_b, "compute1")
        self.assertAnswered(answer)
