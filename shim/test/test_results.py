"""
The bind-result writer (L{shim.results.ResultWriter}) on the in-memory fake etcd and a
fake clock: compare-and-set over what proton or another shim wrote, the latest wish
winning, delayed releases, conflicts, failures and backoff.
"""

import gc
import json

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from shim.backoff import Backoff
from shim.bindresult import EMPTY, BindResult
from shim.etcd import Compare, ConnectionFailed, Op
from shim.metrics import Metrics
from shim.results import (
    EXISTS, MAX_CONFLICTS, PRECREATES_IN_FLIGHT, Paced, ResultWriter, fingerprint, pack, unpack)
from shim.schema import model_named
from shim.test.fakeetcd import FakeEtcd

SCHEMA = model_named("net-l3vpn")
KEY = SCHEMA.result_key("p1")
OURS = BindResult("ovs", {"port_filter": False}, "SimServer", "compute1", "vm1")
OURS_OLDER = BindResult("ovs", {"port_filter": True}, "SimServer", "compute2", "vm1")
FOREIGN = BindResult("vhu", {}, "West", "w1", "vm1")


def no_jitter():
    """
    Delays of 1, 2, 4 and 8 seconds, exactly.
    """
    return Backoff(initial=1.0, maximum=8.0, random=lambda: 1.0)


class WriterCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd()
        self.metrics = Metrics()
        self.is_acting = True
        self.conflicts = []
        self.written = []
        self.writer = ResultWriter(
            self.etcd, SCHEMA, "SimServer", self.clock, self.metrics,
            backoff=no_jitter, acting=lambda: self.is_acting,
            on_conflict=self.conflicts.append,
        )

    def put(self, value, key=KEY):
        """
        Write C{value} as someone else would (proton, another shim); its revision.
        """
        if isinstance(value, BindResult):
            value = value.encode()
        return self.successResultOf(self.etcd.put(key, value)).revision

    def value(self):
        return self.etcd.value(KEY)

    def kv(self):
        return self.etcd.data.get(KEY)

    def writes(self, operation, outcome):
        return self.metrics.registry.get_sample_value(
            "shim_result_writes_total",
            {"operation": operation, "outcome": outcome}) or 0

    def publish(self, result=OURS, **kwargs):
        self.writer.publish("p1", result, on_written=self.written.append, **kwargs)

    def down(self, *methods):
        """
        Fail every call of C{methods} (all when none given) until L{up}.
        """
        def fail(method, key):
            if not methods or method in methods:
                return ConnectionFailed(None, "etcd %s %s: down" % (method, key))
            return None
        self.etcd.fail = fail

    def up(self):
        self.etcd.fail = None


class KnownTests(WriterCase):
    """
    What the writer keeps of each result key: packed into an int.
    """

    def test_pack_round_trip(self):
        for known in [(0, None, False), (-1, None, False), (7, 0, True),
                      (2 ** 63 - 1, 2 ** 64 - 1, True), (12, fingerprint(b"{}"), False),
                      (3, fingerprint(OURS.encode()), True)]:
            self.assertEqual(unpack(pack(*known)), known)
        self.assertEqual(unpack(EXISTS), (-1, None, False))
        self.assertNotEqual(pack(0, None, False), EXISTS)

    def test_known_untracked(self):
        """
        The writer's memory of many keys is not tracked by the garbage collector, and
        stays so as keys are noted, written and removed: a full collection never
        walks it.
        """
        for n in range(1000):
            self.writer.note("q%d" % (n,), n + 1, OURS.encode())
        self.writer.note("absent", 0, None)
        self.publish()
        self.clock.advance(0)
        self.assertEqual(self.value(), OURS.encode())
        self.assertFalse(gc.is_tracked(self.writer.known))
        self.assertEqual(self.writer.known_of("q3"),
                         (4, fingerprint(OURS.encode()), True))
        self.assertEqual(self.writer.known_of("absent"), (0, None, False))
        self.assertIsNone(self.writer.known_of("nothing"))


class PrecreateTests(WriterCase):
    """
    The C{{}} result keys created over v2 (proton's wait-index work-around), and
    created again when a read finds them gone.
    """

    def test_precreate_once(self):
        self.writer.precreate("p1")
        self.clock.advance(0)
        self.assertEqual(self.value(), EMPTY)
        self.successResultOf(self.etcd.delete(KEY))
        self.writer.precreate("p1")
        self.clock.advance(0)
        self.assertIsNone(self.kv())

    def test_missing_after_read_created_again(self):
        """
        The {} the writer created is gone when a later read looks: created
        again.  Written after the read, or holding more than {}, it is left.
        """
        self.writer.precreate("p1")
        self.clock.advance(0)
        created = self.kv().mod_revision
        deleted = self.successResultOf(self.etcd.delete(KEY)).revision
        self.writer.precreate_missing("p1", created - 1)
        self.clock.advance(0)
        self.assertIsNone(self.kv())
        self.writer.precreate_missing("p1", None)
        self.clock.advance(0)
        self.assertIsNone(self.kv())
        self.writer.precreate_missing("p1", deleted)
        self.clock.advance(0)
        self.assertEqual(self.value(), EMPTY)

    def test_found_there_then_deleted_created_again(self):
        """
        A key that was there already when the writer would create it (proton's,
        or another shim's), deleted later, is created when a read finds it gone.
        """
        self.put(EMPTY)
        self.writer.precreate("p1")
        self.clock.advance(0)
        self.assertEqual(self.writes("precreate", "skipped"), 1)
        deleted = self.successResultOf(self.etcd.delete(KEY)).revision
        self.writer.precreate_missing("p1", deleted)
        self.clock.advance(0)
        self.assertEqual(self.value(), EMPTY)

    def test_missing_result_left_to_its_reconcile(self):
        """
        A result (not {}) a read found missing is the reconcile's to write again
        (the controller notes it absent): no {} goes first.
        """
        self.writer.note("p1", 0, None)
        self.writer.precreate_missing("p1", 10)
        self.clock.advance(0)
        self.assertIsNone(self.kv())


class PacedTests(SynchronousTestCase):
    """L{Paced}: at most C{limit} out, those added first ahead, in order."""

    def setUp(self):
        self.sent = {}
        self.paced = Paced(self.send, 2)

    def send(self, item):
        if item == "skip":
            return None
        d = self.sent[item] = Deferred()
        return d

    def test_order_and_limit(self):
        for item in ["a", "b", "skip", "c"]:
            self.paced.add(item)
        self.paced.add("x", first=True)
        self.paced.add("y", first=True)
        self.assertEqual(list(self.sent), ["a", "b"])
        self.assertIn("x", self.paced)
        self.sent["a"].callback(None)
        self.sent["b"].errback(ValueError("the call failed"))
        self.assertEqual(list(self.sent), ["a", "b", "x", "y"])
        self.failureResultOf(self.sent["b"], ValueError)
        self.sent["x"].callback(None)
        self.assertEqual(list(self.sent), ["a", "b", "x", "y", "c"])
        self.assertEqual(self.paced.out, {"y", "c"})
        self.assertEqual(self.paced.drop(), set())

    def test_answers_at_once(self):
        done = []
        paced = Paced(lambda item: succeed(item).addCallback(done.append), 2)
        paced.add("first")
        for i in range(5000):
            paced.add(i)
        self.assertEqual(len(done), 5001)
        self.assertEqual(paced.out, set())

    def test_drop(self):
        for item in ["a", "b", "c", "d"]:
            self.paced.add(item)
        self.assertEqual(self.paced.drop(), {"c", "d"})
        self.sent["a"].callback(None)
        self.assertEqual(list(self.sent), ["a", "b"])
        self.assertNotIn("c", self.paced)


class V2Etcd(FakeEtcd):
    """The fake etcd without transactions, as the v2 client: one request a write."""

    txn = None


class PrecreateLaneTests(WriterCase):
    """
    Over v2 the {} keys a read found missing go PRECREATES_IN_FLIGHT at a time: a
    result asked for meanwhile is sent at once, not behind them.
    """

    def setUp(self):
        WriterCase.setUp(self)
        self.etcd = V2Etcd(hold=True)
        self.writer = ResultWriter(
            self.etcd, SCHEMA, "SimServer", self.clock, self.metrics,
            backoff=no_jitter, acting=lambda: self.is_acting)

    def sent(self):
        return [key for (_, key), _, _ in self.etcd.held]

    def test_few_at_a_time_and_results_first(self):
        ports = ["q%03d" % (i,) for i in range(200)]
        for uuid in ports:
            self.writer.precreate(uuid)
        self.assertEqual(self.sent(), [SCHEMA.result_key(u)
                                       for u in ports[:PRECREATES_IN_FLIGHT]])
        self.publish()
        self.assertEqual(self.sent()[-1], KEY)
        self.writer.precreate("new", first=True)
        self.etcd.release(0)
        self.assertEqual(self.sent()[-1], SCHEMA.result_key("new"))
        while self.etcd.held:
            self.etcd.release(0)
        self.clock.advance(0)
        while self.etcd.held:
            self.etcd.release(0)
        self.assertEqual(self.value(), OURS.encode())
        for uuid in ports + ["new"]:
            self.assertEqual(self.etcd.value(SCHEMA.result_key(uuid)), EMPTY, uuid)
        self.assertEqual(self.writes("precreate", "ok"), len(ports) + 1)

    def test_new_ports_first_in_order(self):
        for i in range(20):
            self.writer.precreate("q%d" % (i,))
        self.writer.precreate("new1", first=True)
        self.writer.precreate("new2", first=True)
        self.etcd.release(0)
        self.etcd.release(0)
        self.assertEqual(self.sent()[-2:], [SCHEMA.result_key("new1"),
                                            SCHEMA.result_key("new2")])

    def test_answers_at_once(self):
        """
        A client that answers before the call returns (the fake without hold)
        once thousands wait: all are created, without recursing once per key.
        """
        ports = ["q%04d" % (i,) for i in range(3000)]
        for uuid in ports:
            self.writer.precreate(uuid)
        self.etcd.hold = False
        while self.etcd.held:
            self.etcd.release(0)
        self.assertEqual(len(self.etcd.data), len(ports))
        self.assertEqual(self.writes("precreate", "ok"), len(ports))

    def test_full_read_drops_those_waiting(self):
        """
        drop_precreates (a full read begins): the keys waiting are not created,
        and are forgotten, so that the read's own catch-up creates them.
        """
        self.assert_waiting_dropped(self.writer.drop_precreates)
        self.writer.precreate_missing("q19", self.etcd.revision)
        self.etcd.release(0)
        self.assertEqual(self.etcd.value(SCHEMA.result_key("q19")), EMPTY)

    def test_port_gone_while_its_key_is_created(self):
        """
        The port goes (remove_empty) while its {} is being created: the {} is
        deleted once created.  One waiting is simply not created.
        """
        for i in range(10):
            self.writer.precreate("q%d" % (i,))
        self.writer.remove_empty("q0")
        self.writer.remove_empty("q9")
        while self.etcd.held:
            self.etcd.release(0)
        self.assertNotIn(SCHEMA.result_key("q0"), self.etcd.data)
        self.assertNotIn(SCHEMA.result_key("q9"), self.etcd.data)
        self.assertEqual(self.etcd.value(SCHEMA.result_key("q1")), EMPTY)
        self.assertEqual(self.writes("remove", "ok"), 1)

    def test_stop_drops_those_waiting(self):
        self.assert_waiting_dropped(self.writer.stop)

    def assert_waiting_dropped(self, drop):
        """
        Of 20 keys asked for, those sent before C{drop()} are created, and the
        others neither created nor remembered.
        """
        for i in range(20):
            self.writer.precreate("q%d" % (i,))
        drop()
        while self.etcd.held:
            self.etcd.release(0)
        self.assertEqual(len(self.etcd.data), PRECREATES_IN_FLIGHT)
        self.assertIsNone(self.writer.known_of("q19"))


class PublishTests(WriterCase):
    def test_over_empty(self):
        """
        A result is written over proton's C{{}}; C{on_written} hears its revision.
        """
        self.put(EMPTY)
        self.publish()
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.written, [self.kv().mod_revision])
        self.assertEqual(self.writer.pending, {})
        self.assertEqual(self.writer.revision("p1"), self.kv().mod_revision)
        self.assertTrue(self.writer.holds("p1", OURS.encode()))
        self.assertTrue(self.writer.names_us("p1"))
        self.assertEqual(self.writes("publish", "ok"), 1)
        self.successResultOf(self.writer.idle())

    def test_absent_key(self):
        """
        A key that does not exist is created.
        """
        self.publish()
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.kv().version, 1)

    def test_over_own_older(self):
        self.put(OURS_OLDER)
        self.publish()
        self.assertEqual(self.value(), OURS.encode())

    def test_over_foreign(self):
        """
        A result naming another controller is written over (PROTOCOL.md section 3):
        the port is on our host now.
        """
        self.put(FOREIGN)
        self.publish()
        self.assertEqual(json.loads(self.value())["controller"], "SimServer")

    def test_equal_is_skipped(self):
        """
        A result etcd holds already is not written again.
        """
        revision = self.put(OURS)
        self.publish()
        self.assertEqual(self.kv().mod_revision, revision)
        self.assertEqual(self.writes("publish", "skipped"), 1)
        self.assertEqual(self.writer.pending, {})

    def test_again_writes_a_new_revision(self):
        """
        C{again=True} (proton asked again) writes a new revision even when etcd holds
        the same result: proton waits for a change of the key.
        """
        revision = self.put(OURS)
        self.publish(again=True)
        self.assertEqual(self.value(), OURS.encode())
        self.assertGreater(self.kv().mod_revision, revision)
        self.assertEqual(self.written, [self.kv().mod_revision])

    def test_known_from_snapshot(self):
        """
        A result noted from a snapshot is compared without reading the key again.
        """
        revision = self.put(EMPTY)
        self.writer.note("p1", revision, EMPTY)
        self.publish()
        self.assertEqual(self.value(), OURS.encode())
        self.assertNotIn(("get", KEY), self.etcd.calls)

    def test_snapshot_older_than_known(self):
        """
        A value a snapshot read before the writer's own write does not replace
        what the writer knows: the result written is still held, without a read.
        """
        old = self.put(EMPTY)
        self.publish()
        self.clock.advance(0)
        written = self.kv().mod_revision
        self.assertGreater(written, old)
        self.writer.note("p1", old, EMPTY)
        self.assertEqual(self.writer.revision("p1"), written)
        self.assertTrue(self.writer.holds("p1", OURS.encode()))
        # A newer value read is taken.
        self.put(FOREIGN)
        self.writer.note("p1", self.kv().mod_revision, FOREIGN.encode())
        self.assertFalse(self.writer.names_us("p1"))
        # An absent key: the caller compared the revision it read at.
        self.writer.note("p1", 0, None)
        self.assertEqual(self.writer.known_of("p1"), (0, None, False))

    def test_cluster_changed(self):
        """
        A replaced cluster's revisions tell nothing of the old one's: all that is
        known is forgotten.
        """
        self.put(EMPTY)
        self.publish()
        self.clock.advance(0)
        self.assertIsNotNone(self.writer.known_of("p1"))
        self.writer.cluster_changed()
        self.assertIsNone(self.writer.known_of("p1"))

    def test_holds_and_names_us(self):
        self.assertFalse(self.writer.names_us("p1"))
        self.assertFalse(self.writer.holds("p1", OURS.encode()))
        self.down()
        self.publish()
        # Pending: as good as written for the controller's decisions.
        self.assertTrue(self.writer.holds("p1", OURS.encode()))
        self.assertFalse(self.writer.holds("p1", OURS_OLDER.encode()))
        self.assertTrue(self.writer.names_us("p1"))
        self.up()
        self.clock.advance(1)
        self.assertTrue(self.writer.holds("p1", OURS.encode()))
        self.assertTrue(self.writer.names_us("p1"))
        self.put(FOREIGN)
        self.writer.note("p1", self.kv().mod_revision, FOREIGN.encode())
        self.assertFalse(self.writer.names_us("p1"))
        self.assertFalse(self.writer.holds("p1", OURS.encode()))
        self.flushLoggedErrors()


class ClearTests(WriterCase):
    def test_clear_ours(self):
        self.put(OURS)
        self.writer.clear("p1")
        self.assertEqual(self.value(), EMPTY)
        self.assertEqual(self.writes("clear", "ok"), 1)

    def test_clear_foreign_or_empty_or_absent(self):
        """
        A clear writes C{{}} only while the key names us.
        """
        for value in (FOREIGN, EMPTY, b"garbage", None):
            self.etcd.data.pop(KEY, None)
            self.writer.forget("p1")
            if value is not None:
                revision = self.put(value)
            self.writer.clear("p1")
            if value is None:
                self.assertNotIn(KEY, self.etcd.data)
            else:
                self.assertEqual(self.kv().mod_revision, revision, value)
        self.assertEqual(self.writes("clear", "skipped"), 4)

    def test_remove_ours(self):
        self.put(OURS)
        self.writer.remove("p1")
        self.assertNotIn(KEY, self.etcd.data)
        self.assertNotIn("p1", self.writer.known)

    def test_remove_foreign(self):
        """
        A delete happens only while the key names us.
        """
        revision = self.put(FOREIGN)
        self.writer.remove("p1")
        self.assertEqual(self.kv().mod_revision, revision)
        self.writer.forget("p1")
        self.put(EMPTY)
        self.writer.remove("p1")
        self.assertEqual(self.value(), EMPTY)

    def test_clear_after_foreign_write(self):
        """
        Another shim wrote its result after ours: our clear's compare fails, the key
        is read again, and it names them now: nothing is written.
        """
        self.put(EMPTY)
        self.publish()
        revision = self.put(FOREIGN)
        self.writer.clear("p1")
        self.assertEqual(self.kv().mod_revision, revision)
        self.assertEqual(self.conflicts, ["p1"])
        self.assertEqual(self.writes("clear", "conflict"), 1)
        self.assertEqual(self.writes("clear", "skipped"), 1)


class WishTests(WriterCase):
    def test_newer_supersedes_older(self):
        """
        A publish waiting for its retry is replaced by a newer one: the older result
        is never written.
        """
        self.put(EMPTY)
        self.down("put_if")
        self.publish(OURS_OLDER)
        self.publish(OURS)
        self.up()
        self.clock.advance(100)
        history = [k for (m, k) in self.etcd.calls if m == "put_if"]
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.kv().version, 2)
        self.assertEqual(self.written, [self.kv().mod_revision])
        self.assertEqual(len(history), 2)
        self.flushLoggedErrors()

    def test_clear_supersedes_failing_publish(self):
        """
        A publish being retried, then a clear (an unbind): the result is never
        written, C{{}} stays.
        """
        revision = self.put(EMPTY)
        self.down("put_if")
        self.publish()
        self.writer.clear("p1")
        self.up()
        self.clock.advance(100)
        self.assertEqual((self.value(), self.kv().mod_revision), (EMPTY, revision))
        self.assertEqual(self.writer.pending, {})
        self.assertEqual(self.written, [])

    def test_delayed_clear_supersedes_failing_publish(self):
        """
        A publish being retried when the port migrates to another controller's host
        (a delayed release): the publish is dropped at once, so it never lands on the
        gaining shim's result, and the release finds their result and leaves it.
        """
        self.put(EMPTY)
        self.down("put_if")
        self.publish()
        self.writer.clear("p1", delay=10)
        # The gaining shim writes its result while ours waits for its retry.
        revision = self.put(FOREIGN)
        self.up()
        self.clock.advance(100)
        self.assertEqual((self.value(), self.kv().mod_revision),
                         (FOREIGN.encode(), revision))
        self.assertEqual(self.written, [])

    def test_delayed_clear(self):
        """
        A clear with a delay writes C{{}} once the delay is over.
        """
        self.put(OURS)
        self.writer.clear("p1", delay=10)
        self.assertIn("p1", self.writer.delayed)
        self.clock.advance(9.9)
        self.assertEqual(self.value(), OURS.encode())
        self.clock.advance(0.1)
        self.assertEqual(self.value(), EMPTY)
        self.assertNotIn("p1", self.writer.delayed)

    def test_delayed_clear_cancelled_by_publish(self):
        """
        A delayed release is cancelled by a later wish: the port came back to our
        host and bound again; proton never sees C{{}}.
        """
        self.put(OURS_OLDER)
        self.writer.clear("p1", delay=10)
        self.publish()
        self.clock.advance(100)
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.writer.delayed, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_delayed_clear_cancelled(self):
        """
        C{cancel()} drops a delayed release (a bind on our host was decided).
        """
        revision = self.put(OURS)
        self.writer.clear("p1", delay=10)
        self.writer.cancel("p1")
        self.clock.advance(100)
        self.assertEqual(self.kv().mod_revision, revision)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_drops_pending(self):
        """
        C{cancel()} drops a pending wish waiting for its retry.
        """
        revision = self.put(EMPTY)
        self.down("put_if")
        self.publish()
        self.writer.cancel("p1")
        self.up()
        self.clock.advance(100)
        self.assertEqual(self.kv().mod_revision, revision)
        self.assertEqual(self.writer.pending, {})
        self.flushLoggedErrors()

    def test_delayed_clear_replaced(self):
        """
        A second delayed clear replaces the first: one delayed call at a time.
        """
        self.put(OURS)
        self.writer.clear("p1", delay=10)
        self.clock.advance(5)
        self.writer.clear("p1", delay=10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9)
        self.assertEqual(self.value(), OURS.encode())
        self.clock.advance(1)
        self.assertEqual(self.value(), EMPTY)


class ConflictTests(WriterCase):
    def test_failed_compare_rereads(self):
        """
        Another controller's result landed after the snapshot: the compare fails,
        C{on_conflict} hears the port, the key is read again, and the result is
        written over what was read.
        """
        old = self.put(EMPTY)
        self.writer.note("p1", old, EMPTY)
        self.put(FOREIGN)
        self.publish()
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.conflicts, ["p1"])
        self.assertEqual(self.writes("publish", "conflict"), 1)
        self.assertEqual(self.writes("publish", "ok"), 1)
        self.assertIn(("get", KEY), self.etcd.calls)

    def test_failed_compare_over_empty(self):
        """
        Proton re-created the key as C{{}} after the snapshot: the compare fails,
        and the result is written over the empty key without reading it (an empty
        key is nobody's result).
        """
        old = self.put(EMPTY)
        self.writer.note("p1", old, EMPTY)
        self.put(EMPTY)
        self.publish()
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.conflicts, ["p1"])
        self.assertNotIn(("get", KEY), self.etcd.calls)

    def test_unknown_key_empty(self):
        """
        A key the writer has not seen that holds proton's C{{}}: one compare-and-set
        on its value, no read.
        """
        self.put(EMPTY)
        self.etcd.calls[:] = []
        self.publish()
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.etcd.calls, [("put_if", KEY)])
        self.assertEqual(self.writer.revision("p1"), self.kv().mod_revision)

    def test_unknown_key_not_empty(self):
        """
        A key the writer has not seen that holds something else, or nothing: read,
        then written by its revision as usual.
        """
        for before in (FOREIGN.encode(), None):
            self.writer.forget("p1")
            if before is None:
                self.etcd._delete(KEY, False)
            else:
                self.put(before)
            self.etcd.calls[:] = []
            self.publish()
            self.assertEqual(self.value(), OURS.encode())
            self.assertEqual(self.etcd.calls,
                             [("put_if", KEY), ("get", KEY), ("put_if", KEY)])

    def test_wish_dropped_while_reading(self):
        """
        A publish dropped (a delayed release) while its key is read is not written:
        what was read may be another shim's result, noted meanwhile.
        """
        self.put(FOREIGN)
        self.etcd.calls[:] = []
        self.etcd.hold = True
        self.publish()
        self.etcd.release()  # the write over {} fails: the key holds a result
        self.assertEqual(self.etcd.calls, [("put_if", KEY), ("get", KEY)])
        self.writer.clear("p1", delay=5)
        self.etcd.release()  # the read answers after the wish was dropped
        self.assertEqual(self.etcd.calls, [("put_if", KEY), ("get", KEY)])
        self.assertEqual(self.value(), FOREIGN.encode())
        self.assertEqual(self.written, [])

    def test_repeated_conflicts_back_off(self):
        """
        A compare that keeps failing is retried, and after L{MAX_CONFLICTS} in a row
        it waits like a failure.
        """
        etcd = self.etcd
        real = etcd.put_if

        def racing_put_if(key, value, mod_revision, guard=()):
            # Someone writes the key between every read and our write.
            etcd._put(key, FOREIGN.encode())
            return real(key, value, mod_revision, guard)

        etcd.put_if = racing_put_if
        self.publish()
        self.assertEqual(len(self.conflicts), MAX_CONFLICTS)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        etcd.put_if = real
        self.clock.advance(1)
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.writer.pending, {})


class FailureTests(WriterCase):
    def test_retried_with_backoff(self):
        """
        A write that fails is retried after 1, 2, 4 ... seconds while its wish stands,
        each failure counted; it is written once etcd answers.
        """
        self.put(EMPTY)
        self.down("put_if")
        self.publish()
        attempts = lambda: sum(1 for m, _ in self.etcd.calls if m == "put_if")
        self.assertEqual(attempts(), 1)
        self.clock.advance(0.999)
        self.assertEqual(attempts(), 1)
        self.clock.advance(0.001)
        self.assertEqual(attempts(), 2)
        self.clock.advance(2)
        self.assertEqual(attempts(), 3)
        self.assertEqual(self.writes("publish", "error"), 3)
        self.assertIn("p1", self.writer.pending)
        self.assertNoResult(self.writer.idle())
        self.up()
        self.clock.advance(4)
        self.assertEqual(self.value(), OURS.encode())
        self.assertEqual(self.writer.pending, {})
        self.assertEqual(len(self.written), 1)

    def test_failed_read_retried(self):
        self.down("get")
        self.publish()
        self.assertIsNone(self.value())
        self.up()
        self.clock.advance(1)
        self.assertEqual(self.value(), OURS.encode())

    def test_not_acting_drops_wishes(self):
        """
        A shim that may not act (a standby, a lease run out) writes nothing and keeps
        no wish: the acting shim reconciles the port.
        """
        self.is_acting = False
        self.publish()
        self.writer.clear("p1")
        self.writer.remove("p1")
        self.assertEqual(self.etcd.calls, [])
        self.assertEqual(self.writer.pending, {})

    def test_stops_acting_while_retrying(self):
        self.down("put_if")
        self.publish()
        self.is_acting = False
        self.up()
        self.clock.advance(100)
        self.assertIsNone(self.value())
        self.assertEqual(self.writer.pending, {})
        self.flushLoggedErrors()

    def test_stop_drops_the_pause(self):
        """
        Stopping while a write waits for its next attempt leaves nothing scheduled.
        """
        self.down()
        self.publish()
        self.writer.clear("p2", delay=10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.writer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.writer.idle())
        self.flushLoggedErrors()

    def test_cancel_all(self):
        self.down()
        self.publish()
        self.writer.clear("p2", delay=10)
        self.writer.cancel_all()
        self.assertEqual(self.writer.pending, {})
        self.assertEqual(self.writer.delayed, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors()


class FenceTests(WriterCase):
    def test_fence_travels_with_each_write(self):
        """
        Each compare-and-set carries the election's fence as its guard.
        """
        guards = []
        etcd = self.etcd
        put_if, delete_if = etcd.put_if, etcd.delete_if

        def recording_put_if(key, value, mod_revision, guard=()):
            guards.append(guard)
            return put_if(key, value, mod_revision, guard)

        def recording_delete_if(key, mod_revision, guard=()):
            guards.append(guard)
            return delete_if(key, mod_revision, guard)

        etcd.put_if, etcd.delete_if = recording_put_if, recording_delete_if
        writer = ResultWriter(etcd, SCHEMA, "SimServer", self.clock, self.metrics,
                              fence=lambda: ("fence",))
        writer.publish("p1", OURS)
        writer.clear("p1")
        writer.publish("p1", OURS)
        writer.remove("p1")
        # The first publish writes over an empty key (none here), then reads.
        self.assertEqual(guards, [("fence",)] * 5)
        self.assertNotIn(KEY, etcd.data)


class FakeEtcdCompareTests(SynchronousTestCase):
    """
    The fake compares as etcd does (test_etcd_client's
    test_value_compare_on_missing_key_fails shows etcd itself).
    """

    def test_value_compare_on_missing_key_fails(self):
        etcd = FakeEtcd()
        for op in ("==", "!="):
            done = self.successResultOf(etcd.txn(
                compare=[Compare.value("/cas/none", op, b"")],
                success=[Op.put("/cas/other", b"x")]))
            self.assertFalse(done.succeeded)
        self.assertEqual(self.successResultOf(etcd.get("/cas/other")).count, 0)
