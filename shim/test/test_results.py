"""
The bind-result writer's retries, with a client that fails (pure logic).
"""

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from shim.etcd import ConnectionFailed
from shim.results import ResultWriter

RESULT = {"vif_type": "ovs", "vif_details": {"port_filter": False}}


class FailingPuts:
    """
    A client whose puts fail while C{down} is true, and record what they wrote.
    """

    def __init__(self):
        self.down = True
        self.written = []

    def put(self, key, value):
        if self.down:
            return fail(ConnectionFailed(None, "etcd put %r: down" % (key,)))
        self.written.append((key, value))
        return succeed(None)


class RetryTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.client = FailingPuts()
        self.writer = ResultWriter(self.client, "SimServer", self.clock)

    def test_retried_until_written(self):
        self.writer.publish("p1", RESULT)
        self.assertEqual(self.client.written, [])
        self.assertIn("p1", self.writer.pending)
        self.client.down = False
        self.clock.advance(10)
        self.assertEqual([k for k, v in self.client.written],
                         ["/controller/net-l3vpn/ProtonBasePort/p1"])
        self.assertEqual(self.writer.pending, {})
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_stop_drops_the_pause(self):
        """
        Stopping while a write waits for its next attempt leaves nothing scheduled.
        """
        self.writer.publish("p1", RESULT)
        self.writer.clear("p2", delay=10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.writer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.writer.idle())
