"""
Per-object ordered execution.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from shim.serial import SerialQueues


class SerialQueuesTests(SynchronousTestCase):
    def test_order_per_key_concurrency_across_keys(self):
        q = SerialQueues()
        log = []
        pending = {}

        def job(key, n):
            log.append((key, n, "start"))
            d = pending[(key, n)] = Deferred()
            d.addCallback(lambda _: log.append((key, n, "end")))
            return d

        q.submit("a", job, "a", 1)
        q.submit("a", job, "a", 2)
        q.submit("b", job, "b", 1)
        # a2 waits for a1; b1 runs beside a1.
        self.assertEqual(log, [("a", 1, "start"), ("b", 1, "start")])
        pending[("a", 1)].callback(None)
        self.assertEqual(log[-2:], [("a", 1, "end"), ("a", 2, "start")])
        idle = q.idle()
        self.assertNoResult(idle)
        pending[("b", 1)].callback(None)
        pending[("a", 2)].callback(None)
        self.successResultOf(idle)
        self.assertEqual(len(q), 0)

    def test_synchronous_jobs(self):
        q = SerialQueues()
        out = []
        for i in range(10000):
            q.submit("k", out.append, i)
        q.submit("k", lambda: succeed(None))
        q.submit("k", out.append, "last")
        self.assertEqual(out, list(range(10000)) + ["last"])
        self.assertFalse(q.busy("k"))

    def test_failures_do_not_stop_the_queue(self):
        q = SerialQueues()
        out = []

        def boom():
            raise RuntimeError("boom")

        d = Deferred()
        q.submit("k", lambda: d)
        q.submit("k", boom)
        q.submit("k", lambda: fail(ValueError("failed")))
        q.submit("k", out.append, "after")
        d.errback(KeyError("late"))
        self.assertEqual(out, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, ValueError, KeyError)), 3)
