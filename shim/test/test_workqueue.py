"""
The work queue (L{shim.workqueue.WorkQueue}) on a fake clock: de-duplication, one
worker per key, a key marked while its worker runs, per-key backoff and its reset,
discarding a replaced cluster's work, pausing, the batch per reactor turn, and the
figures it exports.
"""

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from shim.backoff import Backoff
from shim.metrics import Metrics
from shim.workqueue import BATCH, WorkQueue


def no_jitter():
    """
    Delays of 1, 2, 4 and 8 seconds, exactly.
    """
    return Backoff(initial=1.0, maximum=8.0, random=lambda: 1.0)


class TurnClock(Clock):
    """
    A clock whose L{turn} runs only the calls due when it starts, as one reactor
    turn does (L{Clock.advance} also runs the calls they schedule for now).
    """

    def turn(self):
        now = self.seconds()
        due = [c for c in self.calls if c.getTime() <= now]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class Reconciler:
    """
    A reconcile that records each key it runs for and answers from C{outcomes}: key
    to a list of answers taken in turn (C{None} when the list is empty or missing).
    An answer that is C{"hang"} returns a Deferred kept in C{hanging[key]}.
    """

    def __init__(self):
        self.runs = []
        self.outcomes = {}
        self.hanging = {}

    def __call__(self, key):
        self.runs.append(key)
        answers = self.outcomes.get(key)
        answer = answers.pop(0) if answers else None
        if answer == "hang":
            d = self.hanging[key] = Deferred()
            return d
        if isinstance(answer, Exception):
            raise answer
        return answer


class WorkQueueCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.reconcile = Reconciler()
        self.metrics = Metrics()
        self.queue = WorkQueue(self.reconcile, self.clock, self.metrics,
                               backoff=no_jitter)

    def turn(self):
        """
        One reactor turn.
        """
        self.clock.advance(0)

    def retries(self, callback):
        return self.metrics.registry.get_sample_value(
            "shim_retries_total", {"callback": callback}) or 0


class MarkingTests(WorkQueueCase):
    def test_runs_on_next_turn(self):
        """
        Marking never runs a worker at once: the next reactor turn does.
        """
        self.queue.mark("a")
        self.assertEqual(self.reconcile.runs, [])
        self.assertIn("a", self.queue)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a"])
        self.assertNotIn("a", self.queue)
        self.assertEqual(len(self.queue), 0)

    def test_dedup(self):
        """
        A key marked many times before its worker runs is reconciled once.
        """
        for _ in range(1000):
            self.queue.mark("a")
        self.queue.mark_all(["b", "a", "b"])
        self.assertEqual(len(self.queue), 2)
        self.assertEqual(self.queue.depth, 2)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "b"])

    def test_marking_order(self):
        """
        Keys run in the order they were first marked.
        """
        self.queue.mark_all(["c", "a", "b", "a"])
        self.turn()
        self.assertEqual(self.reconcile.runs, ["c", "a", "b"])

    def test_sweep_after_marks(self):
        """
        Keys a sweep marks run after every key marked by a change, even one marked
        later: a bind asked during a resync does not wait for the resync's keys.
        """
        clock = TurnClock()
        queue = WorkQueue(self.reconcile, clock, self.metrics)
        swept = ["s%d" % (i,) for i in range(BATCH + 5)]
        for key in swept:
            queue.sweep(key)
        queue.mark("a")
        clock.turn()
        self.assertEqual(self.reconcile.runs[0], "a")
        self.assertEqual(self.reconcile.runs[1:], swept[:BATCH - 1])
        queue.mark("b")
        clock.turn()
        self.assertEqual(self.reconcile.runs[BATCH], "b")
        self.assertEqual(self.reconcile.runs[BATCH + 1:], swept[BATCH - 1:])
        self.assertEqual(len(queue), 0)

    def test_sweep_dedup(self):
        """
        A key swept and marked runs once, in the marks' lane; a key marked then swept
        stays there; sweeping twice runs once.
        """
        self.queue.sweep("s")
        self.queue.sweep("s")
        self.queue.sweep("a")
        self.queue.mark("b")
        self.queue.mark("a")
        self.queue.sweep("b")
        self.assertEqual(len(self.queue), 3)
        self.assertEqual(self.queue.depth, 3)
        self.assertIn("s", self.queue)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["b", "a", "s"])

    def test_sweep_while_running(self):
        """
        A key swept while its worker runs is reconciled again after it.
        """
        self.reconcile.outcomes["a"] = ["hang"]
        self.queue.mark("a")
        self.turn()
        self.queue.sweep("a")
        self.reconcile.hanging["a"].callback(None)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a"])

    def test_sweep_all_drawn_lazily(self):
        """
        L{WorkQueue.sweep_all} draws its keys only when no other key waits (a key
        marked meanwhile runs first, and again when the sweep reaches it: a
        reconcile of a key in step is a no-op), skips the C{None}s, and a newer
        sweep replaces the one not done.
        """
        drawn = []

        def keys(names):
            for name in names:
                drawn.append(name)
                yield name

        self.queue.sweep_all(keys(["a", None, "b", "c"]))
        self.queue.mark("b")
        self.assertEqual(drawn, [])
        self.assertEqual(len(self.queue), 1)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["b", "a", "b", "c"])
        self.queue.sweep_all(keys(["x", "y"]))
        self.queue.sweep_all(keys(["z"]))
        self.turn()
        self.assertEqual(self.reconcile.runs, ["b", "a", "b", "c", "z"])
        self.assertEqual(len(self.queue), 0)
        self.successResultOf(self.queue.idle())

    def test_sweep_all_waits_while_paused(self):
        """
        A paused queue draws nothing from a sweep; it does when resumed.
        """
        self.queue.pause()
        self.queue.sweep_all(iter(["a"]))
        self.turn()
        self.assertEqual(self.reconcile.runs, [])
        self.queue.resume()
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a"])

    def test_sweep_discarded(self):
        """
        L{WorkQueue.discard} drops swept keys too.
        """
        self.queue.sweep("a")
        self.queue.discard()
        self.turn()
        self.assertEqual(self.reconcile.runs, [])
        self.assertEqual(len(self.queue), 0)

    def test_one_worker_per_key(self):
        """
        A key marked while its worker runs gets no second worker meanwhile; other
        keys do run.
        """
        self.reconcile.outcomes["a"] = ["hang"]
        self.queue.mark("a")
        self.turn()
        self.assertTrue(self.queue.busy("a"))
        self.queue.mark("b")
        for _ in range(5):
            self.queue.mark("a")
            self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "b"])
        self.assertTrue(self.queue.busy("a"))
        self.assertEqual(len(self.queue), 1)

    def test_marked_while_running_runs_again(self):
        """
        A key marked (many times) while its worker ran is reconciled once more
        after it, whatever the first worker's outcome.
        """
        self.reconcile.outcomes["a"] = ["hang"]
        self.queue.mark("a")
        self.turn()
        for _ in range(10):
            self.queue.mark("a")
        self.assertEqual(self.queue.depth, 1)
        self.reconcile.hanging["a"].callback(None)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a"])
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a"])
        self.assertEqual(len(self.queue), 0)

    def test_failed_while_marked_runs_again_at_once(self):
        """
        A worker that fails while its key was marked again runs again at once, not
        after its backoff: something changed.
        """
        self.reconcile.outcomes["a"] = ["hang"]
        self.queue.mark("a")
        self.turn()
        self.queue.mark("a")
        self.reconcile.hanging["a"].callback("bind_port")
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a"])
        self.assertEqual(self.retries("bind_port"), 1)


class BackoffTests(WorkQueueCase):
    def test_failure_retried_after_backoff(self):
        """
        A failed key is retried after its own backoff, doubling each time, and
        each failure is counted by what failed.
        """
        self.reconcile.outcomes["a"] = ["bind_port", "bind_port", "write_result"]
        self.queue.mark("a")
        self.turn()
        self.assertTrue(self.queue.retrying("a"))
        self.assertIn("a", self.queue)
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.queue.depth, 1)
        self.clock.advance(0.999)
        self.assertEqual(self.reconcile.runs, ["a"])
        self.clock.advance(0.001)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a"])
        self.clock.advance(1.999)
        self.assertEqual(len(self.reconcile.runs), 2)
        self.clock.advance(0.001)
        self.turn()
        self.assertEqual(len(self.reconcile.runs), 3)
        self.clock.advance(4)
        self.turn()
        self.assertEqual(len(self.reconcile.runs), 4)
        self.assertFalse(self.queue.retrying("a"))
        self.assertEqual(self.retries("bind_port"), 2)
        self.assertEqual(self.retries("write_result"), 1)

    def test_backoff_is_per_key(self):
        """
        One key failing does not delay another, nor lengthen its backoff.
        """
        self.reconcile.outcomes["a"] = ["bind_port"] * 3
        self.reconcile.outcomes["b"] = ["bind_port"]
        self.queue.mark("a")
        self.turn()
        self.clock.advance(1)
        self.turn()
        self.clock.advance(2)
        self.turn()
        self.queue.mark("b")
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a", "a", "b"])
        # a waits 4 s now, b 1 s.
        self.clock.advance(1)
        self.turn()
        self.assertEqual(self.reconcile.runs[-1], "b")
        self.assertEqual(self.reconcile.runs.count("a"), 3)
        self.clock.advance(3)
        self.turn()
        self.assertEqual(self.reconcile.runs.count("a"), 4)

    def test_reset_on_success(self):
        """
        A success resets the key's backoff: its next failure waits the shortest
        delay again.
        """
        self.reconcile.outcomes["a"] = ["bind_port", "bind_port", None, "bind_port"]
        self.queue.mark("a")
        self.turn()
        self.clock.advance(1)
        self.turn()
        self.clock.advance(2)
        self.turn()
        self.assertEqual(len(self.reconcile.runs), 3)
        self.assertFalse(self.queue.retrying("a"))
        self.queue.mark("a")
        self.turn()
        self.assertEqual(len(self.reconcile.runs), 4)
        self.assertTrue(self.queue.retrying("a"))
        self.clock.advance(1)
        self.turn()
        self.assertEqual(len(self.reconcile.runs), 5)

    def test_mark_cuts_backoff_short(self):
        """
        A change of a key waiting for its retry runs it at once.
        """
        self.reconcile.outcomes["a"] = ["bind_port"]
        self.queue.mark("a")
        self.turn()
        self.assertTrue(self.queue.retrying("a"))
        self.queue.mark("a")
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a"])
        self.assertFalse(self.queue.retrying("a"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exception_is_retried(self):
        """
        A reconcile that raises, or whose Deferred fails, is a defect: logged, counted
        as C{internal} and retried.
        """
        self.reconcile.outcomes["a"] = [RuntimeError("boom"), "hang"]
        self.queue.mark("a")
        self.turn()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(self.queue.retrying("a"))
        self.clock.advance(1)
        self.turn()
        self.reconcile.hanging["a"].errback(ValueError("later"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.retries("internal"), 2)
        self.clock.advance(2)
        self.turn()
        self.assertEqual(len(self.reconcile.runs), 3)

    def test_fired_deferred(self):
        """
        A Deferred that has fired already counts like a plain value.
        """
        outcomes = iter([fail(ValueError("no")), Deferred()])

        def reconcile(key):
            d = next(outcomes)
            if not d.called:
                d.callback("bind_port")
            return d

        queue = WorkQueue(reconcile, self.clock, self.metrics, backoff=no_jitter)
        queue.mark("a")
        self.turn()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertTrue(queue.retrying("a"))
        self.clock.advance(1)
        self.turn()
        self.assertTrue(queue.retrying("a"))
        self.assertEqual(self.retries("bind_port"), 1)


class ControlTests(WorkQueueCase):
    def test_discard(self):
        """
        Discarding drops dirty keys and pending retries; a running worker finishes
        and its key is not requeued, even if it failed or was marked meanwhile.
        """
        self.reconcile.outcomes["failed"] = ["bind_port"]
        self.reconcile.outcomes["running"] = ["hang"]
        self.queue.mark_all(["failed", "running"])
        self.turn()
        self.queue.mark("running")
        self.queue.pause()
        self.queue.mark("dirty")
        self.queue.discard()
        self.assertEqual(self.queue.depth, 0)
        self.assertNotIn("failed", self.queue)
        self.assertNotIn("dirty", self.queue)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.queue.resume()
        self.reconcile.hanging["running"].callback("bind_port")
        self.clock.advance(100)
        self.assertEqual(self.reconcile.runs, ["failed", "running"])
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.queue.depth, 0)

    def test_marked_after_discard_while_running(self):
        """
        A key the new cluster's snapshot marks while the old cluster's worker for it
        still runs is reconciled after that worker: only the old marks are dropped.
        """
        self.reconcile.outcomes["a"] = ["hang"]
        self.queue.mark("a")
        self.turn()
        self.queue.pause()
        self.queue.discard()
        # The new snapshot marks what it needs, then resumes the queue.
        self.queue.mark("a")
        self.queue.resume()
        self.reconcile.hanging["a"].callback(None)
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "a"])

    def test_discard_wakes_idle(self):
        self.queue.mark("a")
        idle = self.queue.idle()
        self.assertNoResult(idle)
        self.queue.discard()
        self.successResultOf(idle)

    def test_paused_idle_counts_running_only(self):
        """
        Paused (a standby, or a shim stopping), the queue is idle once no worker
        runs: keys marked meanwhile wait for a resume, and stopping does not wait for
        them.
        """
        self.queue.mark("a")
        self.queue.pause()
        self.successResultOf(self.queue.idle())
        self.assertEqual(self.queue.depth, 1)

    def test_pause_resume(self):
        """
        A paused queue (a standby, a snapshot being read) marks keys but runs none;
        resuming runs them.
        """
        self.queue.pause()
        self.queue.mark_all(["a", "b"])
        self.clock.advance(10)
        self.assertEqual(self.reconcile.runs, [])
        self.assertEqual(self.queue.depth, 2)
        self.queue.resume()
        self.turn()
        self.assertEqual(self.reconcile.runs, ["a", "b"])

    def test_pause_mid_batch(self):
        """
        Pausing from inside a worker stops the rest of the batch.
        """
        def reconcile(key):
            runs.append(key)
            queue.pause()

        runs = []
        queue = WorkQueue(reconcile, self.clock, self.metrics)
        queue.mark_all(["a", "b"])
        self.turn()
        self.assertEqual(runs, ["a"])
        queue.resume()
        self.turn()
        self.assertEqual(runs, ["a", "b"])

    def test_batch_per_turn(self):
        """
        At most L{BATCH} synchronous reconciles run per reactor turn; the rest on the
        next ones.
        """
        clock = TurnClock()
        queue = WorkQueue(self.reconcile, clock, self.metrics)
        keys = ["k%d" % (i,) for i in range(2 * BATCH + 10)]
        queue.mark_all(keys)
        clock.turn()
        self.assertEqual(len(self.reconcile.runs), BATCH)
        self.assertEqual(queue.depth, BATCH + 10)
        clock.turn()
        self.assertEqual(len(self.reconcile.runs), 2 * BATCH)
        clock.turn()
        self.assertEqual(self.reconcile.runs, keys)
        self.assertEqual(queue.depth, 0)

    def test_time_per_turn(self):
        """
        A turn also ends once its reconciles took L{SLICE} seconds (looked at every
        few keys), however few of L{BATCH} ran.
        """
        from shim import workqueue
        now = [0.0]

        def timer():
            return now[0]

        def slow(key):
            now[0] += workqueue.SLICE / 40
            self.reconcile.runs.append(key)

        clock = TurnClock()
        queue = WorkQueue(slow, clock, self.metrics, timer=timer)
        queue.mark_all(range(200))
        clock.turn()
        self.assertEqual(len(self.reconcile.runs), 64)
        clock.turn()
        self.assertEqual(len(self.reconcile.runs), 128)
        while clock.calls:
            clock.turn()
        self.assertEqual(self.reconcile.runs, list(range(200)))

    def test_time_per_turn_of_a_sweep(self):
        """
        Swept keys are background work: a turn of them ends after L{SWEEP_SLICE}
        seconds, and a key marked meanwhile is reconciled first in the next turn.
        """
        from shim import workqueue
        now = [0.0]

        def timer():
            return now[0]

        def slow(key):
            now[0] += workqueue.SWEEP_SLICE / 40
            self.reconcile.runs.append(key)

        clock = TurnClock()
        queue = WorkQueue(slow, clock, self.metrics, timer=timer)
        queue.sweep_all(iter(range(200)))
        clock.turn()
        # the time is looked at every few keys
        first = len(self.reconcile.runs)
        self.assertTrue(40 <= first <= 44, first)
        queue.mark("bind")
        clock.turn()
        self.assertEqual(self.reconcile.runs[first], "bind")
        self.assertLessEqual(len(self.reconcile.runs), 2 * first + 1)
        while clock.calls:
            clock.turn()
        self.assertEqual(self.reconcile.runs, list(range(first)) + ["bind"]
                         + list(range(first, 200)))

    def test_stop(self):
        """
        Stopping cancels the pending turn and the retries.
        """
        self.reconcile.outcomes["a"] = ["bind_port"]
        self.queue.mark("a")
        self.turn()
        self.queue.mark("b")
        self.queue.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.reconcile.runs, ["a"])
        self.queue.mark("c")
        self.clock.advance(1)
        self.assertEqual(self.reconcile.runs, ["a"])

    def test_idle(self):
        """
        C{idle()} fires when nothing is dirty or running; keys waiting for a retry do
        not count.
        """
        self.successResultOf(self.queue.idle())
        self.reconcile.outcomes["a"] = ["hang"]
        self.reconcile.outcomes["b"] = ["bind_port"]
        self.queue.mark_all(["a", "b"])
        idle = self.queue.idle()
        self.turn()
        self.assertNoResult(idle)
        self.reconcile.hanging["a"].callback(None)
        self.successResultOf(idle)
        self.assertTrue(self.queue.retrying("b"))


class FigureTests(WorkQueueCase):
    def test_depth_and_len(self):
        """
        C{depth} counts the keys waiting for a worker (dirty, marked while running,
        waiting for a retry); C{len} the keys dirty or running.
        """
        self.reconcile.outcomes["running"] = ["hang"]
        self.reconcile.outcomes["failed"] = ["bind_port"]
        self.queue.mark_all(["running", "failed"])
        self.turn()
        self.assertEqual((self.queue.depth, len(self.queue)), (1, 1))
        self.queue.mark("running")
        self.assertEqual((self.queue.depth, len(self.queue)), (2, 1))
        self.queue.pause()
        self.queue.mark("dirty")
        self.assertEqual((self.queue.depth, len(self.queue)), (3, 2))

    def test_oldest_age(self):
        """
        The age of the oldest dirty key, from when it was first marked; 0 when none.
        """
        self.assertEqual(self.queue.oldest_age(), 0.0)
        self.queue.pause()
        self.queue.mark("a")
        self.clock.advance(5)
        self.queue.mark("b")
        self.queue.mark("a")
        self.clock.advance(2)
        self.assertEqual(self.queue.oldest_age(), 7.0)
        self.queue.resume()
        self.turn()
        self.assertEqual(self.queue.oldest_age(), 0.0)

    def test_oldest_age_counts_marked_while_running(self):
        self.reconcile.outcomes["a"] = ["hang"]
        self.queue.mark("a")
        self.turn()
        self.assertEqual(self.queue.oldest_age(), 0.0)
        self.queue.mark("a")
        self.clock.advance(3)
        self.assertEqual(self.queue.oldest_age(), 3.0)
