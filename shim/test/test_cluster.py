"""
The shim against a real three-member etcd cluster on loopback, losing members.

The shim is given all three endpoints.  The member it is connected to is killed,
then (after it is back) the leader of the cluster: with two members left the
cluster keeps its quorum, and binds keep working throughout.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from shim import keys
from shim.etcd import EtcdClient
from shim.portstate import BOUND
from shim.proton import ProtonClient
from shim.test.etcdserver import start_cluster
from shim.test.support import RecordingBackend, ShimRunner, wait_for
from shim.test.test_faults import port_attrs, vpn_objects


class ClusterTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.cluster = start_cluster(self)
        urls = self.cluster.client_urls
        self.client = EtcdClient(urls, timeout=2.0)
        self.addCleanup(self.client.close)
        self.proton = ProtonClient(self.client)
        self.backend = RecordingBackend()
        self.shim = yield ShimRunner(self, urls).start(
            self.backend, extra="[etcd]\ntimeout = 2")
        for table, name, attrs in vpn_objects():
            yield self.proton.put_object(table, name, attrs)

    def member_index(self, endpoint):
        return self.cluster.client_urls.index(endpoint)

    @inlineCallbacks
    def bind(self, uuid):
        """
        Create a port and bind it as proton does; the shim's answer must come.
        """
        yield self.cluster_ready()
        yield self.proton.put_object(keys.PORT, uuid, port_attrs(uuid))
        yield self.proton.put_object(
            keys.VPN_PORT, uuid, {"id": uuid, "vpn_instance": "vpn-1"})
        outcome = yield self.proton.bind(uuid, "compute1", "vm-" + uuid)
        self.assertEqual(outcome.result["controller"], "SimServer", uuid)
        self.assertEqual(self.shim.model.ports[uuid].binding, BOUND)
        self.assertEqual(self.backend.called("bind_port", uuid), 1)

    def cluster_ready(self):
        """
        Wait until the members that run agree on a leader (proton's own requests are
        not retried; the shim's are).
        """
        return wait_for(lambda: self.cluster.leader() is not None, timeout=30,
                        what="a leader")

    @inlineCallbacks
    def test_members_lost_and_back(self):
        """
        Binds work with all members, after the member the shim uses is killed, after
        it returns, after the leader is killed, and after that one returns.
        """
        yield self.bind("p0")
        connected = self.member_index(self.shim.client.endpoint)
        self.assertEqual(self.shim.follower._watch.endpoint, self.shim.client.endpoint)
        self.cluster.kill(connected)
        yield self.bind("p1")
        self.assertNotEqual(self.shim.client.endpoint, self.cluster.client_urls[connected])
        self.cluster.restart(connected)
        yield self.bind("p2")

        leader = self.cluster.wait_for_leader()
        self.cluster.kill(leader)
        yield self.bind("p3")
        self.cluster.restart(leader)
        yield self.bind("p4")

        yield wait_for(lambda: self.shim.ready, what="the shim to be ready")
        self.assertEqual(
            sorted(self.backend.calls),
            [("bind_port", "p%d" % (i,)) for i in range(5)],
        )
