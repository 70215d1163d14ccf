"""
Tests for L{shim.election}: candidates of one group against a real etcd (and a real
three-member cluster losing a member).

Liveness is bounded by generous C{wait_for} limits; no test asserts how fast anything
is (bench/failover.py measures that).
"""

import time

from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web import resource, server
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from shim.election import (
    ELECTION_PREFIX, LEADER, STANDBY, Election, NotLeader, election_key)
from shim.etcd import EtcdClient, Op
from shim.test.etcdserver import EtcdServerMixin, start_cluster
from shim.test.support import wait_for

KEY = election_key("SimServer", ["compute1", "compute2"])
RESULT = "/controller/net-l3vpn/ProtonBasePort/p1"


class FakeMonotonic(object):
    """A monotonic clock that moves only when told to."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class ElectionKeyTests(SynchronousTestCase):
    """L{election_key} names one group per controller name and set of hosts."""

    def test_layout(self):
        key = election_key("SimServer", ["compute1"])
        self.assertTrue(key.startswith(ELECTION_PREFIX + "SimServer/"), key)
        digest = key.rsplit("/", 1)[1]
        self.assertEqual(len(digest), 16)
        int(digest, 16)

    def test_order_and_repeats_do_not_matter(self):
        self.assertEqual(election_key("A", ["h2", "h1"]),
                         election_key("A", ["h1", "h2", "h1"]))
        self.assertEqual(election_key("A", "h2, h1"), election_key("A", ["h1", "h2"]))

    def test_stable(self):
        """The hash is fixed: shims of different versions must agree on it."""
        self.assertEqual(election_key("SimServer", ["compute1", "compute2"]),
                         "/controller/shim-election/SimServer/"
                         + __import__("hashlib").sha256(
                             b"compute1\ncompute2").hexdigest()[:16])

    def test_groups_differ(self):
        self.assertNotEqual(election_key("A", ["h1"]), election_key("A", ["h2"]))
        self.assertNotEqual(election_key("A", ["h1"]), election_key("B", ["h1"]))
        self.assertNotEqual(election_key("A", ["*"]), election_key("A", ["h1"]))
        self.assertEqual(election_key("A", ["*"]), election_key("A", "*"))

    def test_bad_names(self):
        for name in ("", "a/b"):
            e = self.assertRaises(ValueError, election_key, name, ["h1"])
            self.assertIn(repr(name), str(e))
        self.assertRaises(ValueError, election_key, "A", [])

    def test_bad_ttl(self):
        for ttl in (0, 1.5, -3):
            self.assertRaises(ValueError, Election, None, KEY, "me", ttl=ttl)


class Recorder(object):
    """The hooks of one candidate, recorded."""

    def __init__(self):
        self.elected = []
        self.lost = []
        self.roles = []


class ElectionTestsMixin(object):
    timeout = 120

    def candidate(self, name, endpoints=None, ttl=3, monotonic=time.monotonic,
                  start=True, key=KEY):
        """An L{Election} on a client of its own, stopped when the test ends."""
        client = EtcdClient(endpoints or [self.etcd.client_url], timeout=2.0)
        self.addCleanup(client.close)
        hooks = Recorder()
        election = Election(client, key, name, ttl=ttl,
                            on_elected=hooks.elected.append, on_lost=hooks.lost.append,
                            on_role=hooks.roles.append, monotonic=monotonic)
        election.hooks = hooks
        election.client = client
        self.addCleanup(election.stop)
        if start:
            election.start()
        return election

    def observer(self, endpoints=None):
        client = EtcdClient(endpoints or [self.etcd.client_url], timeout=2.0)
        self.addCleanup(client.close)
        return client

    def never_two_acting(self, *elections):
        """
        Check at every reactor turn (about) that at most one candidate acts; the
        violations seen are in the returned list, checked when the test ends.
        """
        seen = []

        def check():
            acting = [e.identity for e in elections if e.acting()]
            if len(acting) > 1:
                seen.append(acting)
        loop = task.LoopingCall(check)
        loop.start(0.005)
        self.addCleanup(lambda: loop.running and loop.stop())
        self.addCleanup(lambda: self.assertEqual(seen, []))
        return seen

    @inlineCallbacks
    def fenced_write(self, client, election):
        """A result write carrying C{election}'s fence; whether it succeeded."""
        result = yield client.txn(compare=election.fence(),
                                  success=[Op.put(RESULT, b'{"vif_type": "ovs"}')])
        return result.succeeded


class ElectionTests(ElectionTestsMixin, EtcdServerMixin, TestCase):
    """Two candidates of one group against one etcd."""

    @inlineCallbacks
    def test_one_elected(self):
        """
        A lone candidate is elected: it acts, the key holds its identity with its
        lease, and its epoch is the key's creation revision.
        """
        a = self.candidate("host-a:1")
        epoch = yield a.when_elected()
        self.assertEqual(a.role, LEADER)
        self.assertTrue(a.acting())
        self.assertEqual(a.epoch, epoch)
        found = yield self.observer().get(KEY)
        kv = found.kvs[0]
        self.assertEqual(kv.value, b"host-a:1")
        self.assertEqual(kv.create_revision, epoch)
        self.assertEqual(kv.lease, a.lease_id)
        self.assertEqual(a.granted_ttl, 3)
        self.assertEqual((a.elections_won, a.elections_lost), (1, 0))
        self.assertEqual(a.hooks.elected, [epoch])
        self.assertEqual(a.hooks.roles, [LEADER])

    @inlineCallbacks
    def test_key_without_lease_cleared(self):
        """
        An election key without a lease (copied from another cluster, restored from a
        backup, written by hand) would never expire: a candidate deletes it, as it
        read it, and is elected.
        """
        observer = self.observer()
        yield observer.put(KEY, b"restored-from-elsewhere:1")
        a = self.candidate("host-a:1")
        epoch = yield a.when_elected()
        found = yield observer.get(KEY)
        self.assertEqual(found.kvs[0].value, b"host-a:1")
        self.assertEqual(found.kvs[0].lease, a.lease_id)
        self.assertEqual(a.epoch, epoch)

    @inlineCallbacks
    def test_second_waits(self):
        """
        A second candidate stands by: it does not act, it knows who leads, and the key
        stays the leader's. It holds no lease of its own.
        """
        a = self.candidate("host-a:1")
        yield a.when_elected()
        b = self.candidate("host-b:2")
        yield wait_for(lambda: b.leader_identity == "host-a:1", what="b standing by")
        self.assertEqual(b.role, STANDBY)
        self.assertFalse(b.acting())
        self.assertIsNone(b.epoch)
        self.assertEqual(b.hooks.roles, [])
        self.assertRaises(NotLeader, b.fence)
        found = yield self.observer().get(KEY)
        self.assertEqual(found.kvs[0].value, b"host-a:1")
        # The loser's lease was revoked: only the leader's is left with keys.
        self.assertTrue(a.acting())

    @inlineCallbacks
    def test_resign_hands_over(self):
        """
        On resign the lease is revoked, the key goes, and the standby is elected
        with a newer epoch; the old leader's fence no longer lets a write through.
        """
        client = self.observer()
        a = self.candidate("host-a:1")
        first = yield a.when_elected()
        b = self.candidate("host-b:2")
        yield wait_for(lambda: b.leader_identity == "host-a:1", what="b standing by")
        ok = yield self.fenced_write(client, a)
        self.assertTrue(ok)
        seen = self.never_two_acting(a, b)

        yield a.resign()
        self.assertFalse(a.acting())
        self.assertEqual(a.role, STANDBY)
        second = yield b.when_elected()
        self.assertGreater(second, first)
        self.assertEqual(a.hooks.roles, [LEADER, STANDBY])
        self.assertEqual(a.hooks.lost, [])
        self.assertEqual(a.elections_lost, 0)
        ok = yield self.fenced_write(client, a)
        self.assertFalse(ok)
        ok = yield self.fenced_write(client, b)
        self.assertTrue(ok)
        self.assertEqual(seen, [])

    @inlineCallbacks
    def test_lease_expiry(self):
        """
        A leader whose keepalives stop: the standby is elected once etcd expires the
        lease, never while the old leader still acts (its local deadline passes
        first), the old leader's fence fails, and it becomes a standby that knows the
        new leader.
        """
        client = self.observer()
        a = self.candidate("host-a:1")
        yield a.when_elected()
        b = self.candidate("host-b:2")
        yield wait_for(lambda: b.leader_identity == "host-a:1", what="b standing by")
        seen = self.never_two_acting(a, b)

        a._pause_keepalive()
        yield b.when_elected()
        self.assertFalse(a.acting())
        ok = yield self.fenced_write(client, a)
        self.assertFalse(ok)
        ok = yield self.fenced_write(client, b)
        self.assertTrue(ok)
        yield wait_for(lambda: a.role == STANDBY, what="a standing by")
        self.assertEqual(a.elections_lost, 1)
        self.assertEqual(len(a.hooks.lost), 1)
        self.assertEqual(a.hooks.roles, [LEADER, STANDBY])
        yield wait_for(lambda: a.leader_identity == "host-b:2", what="a seeing b lead")
        self.assertEqual(seen, [])

    @inlineCallbacks
    def test_deadline(self):
        """
        acting() turns false the moment the local deadline (keepalive sent + granted
        TTL) passes, before etcd or anyone tells the leader; the deadline's check
        (a timer, or the next keepalive tick) then makes it lose and stand by.
        """
        clock = FakeMonotonic()
        a = self.candidate("host-a:1", monotonic=clock)
        yield a.when_elected()
        a._pause_keepalive()
        self.assertEqual(a.deadline, 1000.0 + a.granted_ttl)
        clock.now = a.deadline - 0.001
        self.assertTrue(a.acting())
        clock.now = a.deadline
        self.assertFalse(a.acting())
        self.assertEqual(a.role, LEADER)
        self.assertEqual(a.hooks.lost, [])
        # What the deadline timer and the keepalive tick call:
        self.assertTrue(a._check_deadline())
        self.assertEqual(a.role, STANDBY)
        self.assertEqual(len(a.hooks.lost), 1)
        self.assertIn("deadline", a.hooks.lost[0])
        self.assertEqual(a.hooks.roles, [LEADER, STANDBY])

    @inlineCallbacks
    def test_keepalive_moves_deadline(self):
        """Each keepalive moves the deadline to when it was sent + the TTL."""
        clock = FakeMonotonic()
        a = self.candidate("host-a:1", monotonic=clock)
        yield a.when_elected()
        clock.advance(1.0)
        yield wait_for(lambda: a.deadline == 1001.0 + a.granted_ttl,
                       what="a keepalive sent at 1001")
        self.assertTrue(a.acting())

    @inlineCallbacks
    def test_lease_revoked_behind_its_back(self):
        """
        The lease revoked by someone else: the leader learns it (key deleted, or
        keepalive NotFound), calls on_lost, and campaigns again; being alone, it wins
        again with a newer epoch.
        """
        a = self.candidate("host-a:1")
        first = yield a.when_elected()
        yield self.observer().lease_revoke(a.lease_id)
        yield wait_for(lambda: a.elections_won == 2, what="a re-elected")
        self.assertEqual(a.elections_lost, 1)
        self.assertEqual(len(a.hooks.lost), 1)
        self.assertGreater(a.epoch, first)
        self.assertEqual(a.hooks.roles, [LEADER, STANDBY, LEADER])

    @inlineCallbacks
    def test_stop_leaves_lease(self):
        """stop() does not revoke: the standby takes over once the lease expires."""
        a = self.candidate("host-a:1")
        yield a.when_elected()
        b = self.candidate("host-b:2")
        yield wait_for(lambda: b.leader_identity == "host-a:1", what="b standing by")
        yield a.stop()
        self.assertFalse(a.acting())
        found = yield self.observer().get(KEY)
        self.assertEqual(found.kvs[0].value, b"host-a:1")
        yield b.when_elected()

    @inlineCallbacks
    def test_shared_name(self):
        """
        Two groups under one controller name (different host lists) both lead, and
        each notices the other's key.
        """
        a = self.candidate("host-a:1")
        other = election_key("SimServer", ["compute9"])
        c = self.candidate("host-c:3", key=other)
        yield a.when_elected()
        yield c.when_elected()
        yield wait_for(lambda: other in a.other_groups, what="a noticing c's group")
        yield wait_for(lambda: KEY in c.other_groups, what="c noticing a's group")
        self.assertTrue(a.acting() and c.acting())


class _Silent(Protocol):
    """Accepts a connection and never answers: an etcd that hangs."""


class SilentEndpointTests(ElectionTestsMixin, EtcdServerMixin, TestCase):
    """A keepalive sent to an endpoint that never answers."""

    @inlineCallbacks
    def test_keepalive_time_limit(self):
        """
        The keepalive gives up on a silent endpoint after its own time limit (ttl/3,
        shorter than the client's 2 s), and the next one goes to the next endpoint
        and succeeds.
        """
        factory = Factory.forProtocol(_Silent)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        silent = "http://127.0.0.1:%d" % (port.getHost().port,)
        a = self.candidate("host-a:1", endpoints=[self.etcd.client_url, silent])
        yield a.when_elected()
        # Once the leader's watch is open (opening it sets the client's endpoint),
        # calls go to the silent endpoint first.
        yield a._watch.started
        a.client.skip_endpoint(self.etcd.client_url)
        self.assertEqual(a.client.endpoint, silent)
        switched = time.monotonic()
        yield wait_for(lambda: a.keepalives_failed, what="a keepalive failing")
        self.assertEqual(a.client.endpoint, self.etcd.client_url)
        yield wait_for(lambda: a.deadline > switched + a.granted_ttl + 1,
                       what="a keepalive succeeding after the failure")


class NoV3Tests(ElectionTestsMixin, TestCase):
    """An etcd without the v3 API (etcd 2.x answers 404 under /v3 and /v3beta)."""

    @inlineCallbacks
    def test_says_what_to_do(self):
        """
        The candidate is never elected, and says once, as an error, that the election
        needs etcd 3.x and how to run without it.
        """
        site = server.Site(resource.NoResource())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        a = self.candidate("host-a:1",
                           endpoints=["http://127.0.0.1:%d" % (port.getHost().port,)])

        def errors():
            return [e for e in events if e.get("log_level") == LogLevel.error
                    and "no v3 API" in e.get("log_format", "")]
        yield wait_for(errors, what="the error about etcd 2.x")
        self.assertIn("[election] enabled = false", errors()[0]["log_format"])
        self.assertEqual(a.role, STANDBY)
        self.assertFalse(a.acting())
        self.assertEqual(a.elections_won, 0)


class TTLTests(ElectionTestsMixin, EtcdServerMixin, TestCase):
    """
    An etcd whose minimum lease TTL is above what we ask: etcd's minimum is 1.5
    election timeouts, here 1.5 * 2 s.
    """

    etcd_args = {"extra_args": ["--heartbeat-interval", "100",
                                "--election-timeout", "2000"]}

    @inlineCallbacks
    def test_granted_ttl_raised(self):
        """
        Asked for 1 s, etcd grants its minimum: the election uses (and reports) the
        granted TTL for its deadline and keepalives.
        """
        clock = FakeMonotonic()
        a = self.candidate("host-a:1", ttl=1, monotonic=clock)
        yield a.when_elected()
        self.assertGreater(a.granted_ttl, 1)
        self.assertEqual(a.deadline, clock.now + a.granted_ttl)
        clock.advance(1.5)
        self.assertTrue(a.acting())


class ClusterElectionTests(ElectionTestsMixin, TestCase):
    """Two candidates on a three-member cluster that loses members."""

    timeout = 180

    def setUp(self):
        self.cluster = start_cluster(self)
        self.urls = self.cluster.client_urls

    @inlineCallbacks
    def lose_connected_member(self, leader_index_wanted, pause=False):
        a = self.candidate("host-a:1", endpoints=self.urls)
        yield a.when_elected()
        b = self.candidate("host-b:2", endpoints=list(reversed(self.urls)))
        seen = self.never_two_acting(a, b)
        yield wait_for(lambda: b.leader_identity == "host-a:1", what="b standing by")
        if leader_index_wanted:
            victim = self.cluster.wait_for_leader()
        else:
            victim = self.urls.index(a.client.endpoint)
        killed = time.monotonic()
        if pause:
            member = self.cluster.members[victim]
            self.addCleanup(member.resume)
            member.pause()
        else:
            self.cluster.kill(victim)

        def settled():
            # Leadership kept (a lease renewed through another member after the
            # kill) or handed over.
            if a.acting() and a.deadline > killed + a.granted_ttl:
                return True
            return b.acting()
        yield wait_for(settled, timeout=60, what="leadership kept or handed over")
        self.assertEqual(seen, [])
        return victim

    @inlineCallbacks
    def test_member_lost(self):
        """
        The member the leader's client talks to is killed: its keepalives go to the
        others, and never do both candidates act.
        """
        yield self.lose_connected_member(False)

    @inlineCallbacks
    def test_member_frozen(self):
        """
        The member the leader's client talks to freezes (SIGSTOP: connections stay
        open, nothing is answered): each keepalive's own time limit (ttl/3, shorter
        than the client's) moves it on to another member in time.
        """
        yield self.lose_connected_member(False, pause=True)

    @inlineCallbacks
    def test_cluster_leader_lost(self):
        """The cluster's leader is killed: the same holds."""
        yield self.lose_connected_member(True)
