"""
Tests of the real-etcd test harness L{shim.test.etcdserver}.
"""

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from shim.test import etcdserver
from shim.test.etcdserver import (
    EtcdServer, EtcdServerMixin, etcd_version, find_etcd_binary, start_cluster)


class BinaryTests(SynchronousTestCase):

    def test_etcd_bin_wins(self):
        binary = find_etcd_binary()
        self.patch(os, "environ", dict(os.environ, ETCD_BIN=binary))
        self.assertEqual(find_etcd_binary(), binary)
        self.patch(os, "environ", dict(os.environ, ETCD_BIN="/nonexistent/etcd"))
        error = self.assertRaises(RuntimeError, find_etcd_binary)
        self.assertIn("/nonexistent/etcd", str(error))

    def test_version(self):
        version = etcd_version()
        self.assertEqual(len(version), 3)
        self.assertGreaterEqual(version, (3, 4, 0))


class ServerTests(EtcdServerMixin, SynchronousTestCase):
    """One server: lifecycle and helpers."""

    def test_running(self):
        status = self.etcd.status()
        self.assertEqual(status["version"], "%d.%d.%d" % self.etcd.version)
        self.assertTrue(self.etcd.client_url.startswith("http://127.0.0.1:"))
        self.assertTrue(os.path.isdir(self.etcd.data_dir))
        self.assertTrue(os.path.exists(self.etcd.log_file))
        if self.etcd.version >= (3, 5, 0):
            self.assertIn("--unsafe-no-fsync", self.etcd.command())
        else:
            self.assertNotIn("--unsafe-no-fsync", self.etcd.command())

    def test_restart_keeps_data_and_ports(self):
        revision = self.etcd.put("k", "v")
        url = self.etcd.client_url
        self.etcd.kill()
        self.assertRaises(OSError, self.etcd.status, 0.5)
        self.etcd.start()
        self.assertEqual(self.etcd.client_url, url)
        self.assertEqual(self.etcd.revision(), revision)
        self.etcd.restart()
        self.assertEqual(self.etcd.revision(), revision)
        self.etcd.stop()
        self.assertFalse(self.etcd.running)

    def test_pause_resume(self):
        self.etcd.pause()
        self.assertRaises(socket.timeout, self.etcd.status, 0.3)
        self.etcd.resume()
        self.assertIn("version", self.etcd.status())

    def test_compact(self):
        for i in range(3):
            self.etcd.put("k", str(i))
        revision = self.etcd.compact()
        self.assertEqual(revision, self.etcd.revision())
        answer = self.etcd.call("kv/range", {"key": etcdserver.b64("k"), "revision": "2"})
        self.assertIn("compacted", answer["error"])

    def test_cleanup(self):
        server = EtcdServer()
        server.start()
        server.cleanup()
        self.assertFalse(server.running)
        self.assertFalse(os.path.exists(server.base_dir))


class ClusterTests(SynchronousTestCase):

    def test_cluster(self):
        cluster = start_cluster(self, 3)
        self.assertEqual(len(set(cluster.client_urls)), 3)
        leader = cluster.leader()
        self.assertIn(leader, (0, 1, 2))
        member_ids = {m.status()["header"]["member_id"] for m in cluster.members}
        self.assertEqual(len(member_ids), 3)
        revision = cluster.members[leader].put("k", "v")
        cluster.kill(leader)
        survivor = cluster.members[(leader + 1) % 3]
        new_leader = cluster.wait_for_leader()
        self.assertNotEqual(new_leader, leader)
        self.assertGreaterEqual(survivor.revision(), revision)
        cluster.restart(leader)
        self.assertEqual(cluster.members[leader].status()["header"]["member_id"] in
                         member_ids, True)
        self.assertGreaterEqual(cluster.members[leader].revision(), revision)


class PortTakenTests(SynchronousTestCase):
    def test_port_taken_meanwhile(self):
        """
        A port chosen free and then taken by someone else before etcd binds it: the
        server is started again on other ports.
        """
        taken = socket.socket()
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        real = etcdserver.free_port
        ports = [taken.getsockname()[1]]
        self.patch(etcdserver, "free_port", lambda: ports.pop() if ports else real())
        server = etcdserver.start_etcd(self)
        self.assertNotEqual(server.client_port, taken.getsockname()[1])
        self.assertIn("version", server.status())

    def test_port_taken_by_another_etcd(self):
        """
        The client port chosen is taken by another test's etcd before ours binds
        it: the other etcd's answers are not taken for ours (its members have other
        peer URLs), and ours is started again on other ports.
        """
        other = etcdserver.start_etcd(self)
        real = etcdserver.free_port
        ports = [other.client_port]
        self.patch(etcdserver, "free_port", lambda: ports.pop() if ports else real())
        server = etcdserver.start_etcd(self)
        self.assertNotEqual(server.client_port, other.client_port)
        self.assertTrue(server.running)
        self.assertTrue(server._answers_for_us())
        probe = EtcdServer(client_port=other.client_port)
        self.addCleanup(probe.cleanup)
        self.assertFalse(probe._answers_for_us())
