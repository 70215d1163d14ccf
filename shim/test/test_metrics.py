"""
L{shim.metrics.Metrics}: every labelled counter starts at 0 for each known label value,
C{shim_info} describes the shim, and the service's gauges can be set either way.
"""

from prometheus_client import generate_latest
from twisted.trial.unittest import TestCase

from shim import metrics
from shim.metrics import Metrics, group_of
from shim.test.test_web import samples


def scrape(m):
    return samples(generate_latest(m.registry).decode("utf-8"))


class StartAtZeroTests(TestCase):
    """
    A new L{Metrics} exports every known series of its labelled counters, at 0.
    """

    def test_every_known_label_value(self):
        found = scrape(Metrics())
        expected = []
        for callback in metrics.CALLBACKS:
            for outcome in ("ok", "rejected", "error", "timeout"):
                expected.append(("shim_backend_calls_total",
                                 (("callback", callback), ("outcome", outcome))))
            expected.append(("shim_backend_call_seconds_count",
                             (("callback", callback),)))
        for callback in metrics.CALLBACKS + ("write_result", "internal"):
            expected.append(("shim_retries_total", (("callback", callback),)))
        for cause in ("start", "periodic", "compacted", "cluster_changed", "admin",
                      "takeover"):
            expected.append(("shim_resyncs_total", (("cause", cause),)))
        for reason in ("stopped", "connection_lost", "compacted", "cancelled", "idle",
                       "auth", "too_large"):
            expected.append(("shim_watch_restarts_total", (("reason", reason),)))
        for reason in ("bad_key", "bad_value", "other_api"):
            expected.append(("shim_bad_input_total", (("reason", reason),)))
        for operation in ("publish", "clear", "remove"):
            for outcome in ("ok", "error"):
                expected.append(("shim_result_writes_total",
                                 (("operation", operation), ("outcome", outcome))))
        for outcome in ("won", "lost"):
            expected.append(("shim_elections_total", (("outcome", outcome),)))
        for table in ("ProtonBasePort", "VPNPort", "VpnInstance", "VpnAfConfig"):
            for action in ("PUT", "DELETE"):
                expected.append(("shim_events_applied_total",
                                 (("action", action), ("table", table))))
        for series in expected:
            self.assertEqual(found.get(series), 0, series)

    def test_gauges(self):
        """
        The gauges exist from the start, at 0, and C{shim_info} only once described.
        """
        found = scrape(Metrics())
        for name in ("shim_leader", "shim_workqueue_depth",
                     "shim_workqueue_oldest_seconds", "shim_result_writes_pending",
                     "shim_ready", "shim_revision"):
            self.assertEqual(found.get((name, ())), 0, name)
        self.assertFalse([k for k in found if k[0] == "shim_info"])

    def test_counting_moves_the_same_series(self):
        """
        Counting through L{Metrics.child} moves the series exported at 0.
        """
        m = Metrics()
        m.child(m.retries, "write_result").inc()
        m.child(m.elections, "won").inc()
        found = scrape(m)
        self.assertEqual(
            found[("shim_retries_total", (("callback", "write_result"),))], 1)
        self.assertEqual(found[("shim_elections_total", (("outcome", "won"),))], 1)
        self.assertEqual(found[("shim_elections_total", (("outcome", "lost"),))], 0)

    def test_registries_apart(self):
        """
        Two L{Metrics} count apart.
        """
        a, b = Metrics(), Metrics()
        a.child(a.bad_values, "bad_key").inc()
        self.assertEqual(scrape(b)[("shim_bad_input_total", (("reason", "bad_key"),))], 0)


class DescribeTests(TestCase):
    """
    L{Metrics.describe_shim} exports C{shim_info}.
    """

    def test_info(self):
        m = Metrics()
        m.describe_shim("0.1.0", "SimServer", "v3", "net-l3vpn", group="abc")
        self.assertTrue(m.described)
        labels = (("api", "v3"), ("api_model", "net-l3vpn"),
                  ("controller_name", "SimServer"), ("group", "abc"),
                  ("version", "0.1.0"))
        self.assertEqual(scrape(m)[("shim_info", labels)], 1)

    def test_again_replaces(self):
        """
        Describing again leaves one C{shim_info} series, the new one.
        """
        m = Metrics()
        m.describe_shim("0.1.0", "SimServer", "v3", "net-l3vpn")
        m.describe_shim("0.1.0", "SimServer", "v2", "net-l3vpn-v1.0")
        infos = [k for k in scrape(m) if k[0] == "shim_info"]
        self.assertEqual(len(infos), 1)
        self.assertIn(("api", "v2"), infos[0][1])

    def test_group_of(self):
        """
        The group name depends on the set of hosts, not their order.
        """
        self.assertEqual(group_of(["b", "a"]), group_of(("a", "b")))
        self.assertNotEqual(group_of(["a"]), group_of(["a", "b"]))
        self.assertEqual(len(group_of([])), 12)


class GaugeTests(TestCase):
    """
    The gauges the service keeps can be set, or read from a function at scrape time.
    """

    def test_set(self):
        m = Metrics()
        m.leader.set(1)
        m.queue_depth.set(4)
        m.queue_oldest.set(2.5)
        m.writes_pending.set(3)
        found = scrape(m)
        self.assertEqual(found[("shim_leader", ())], 1)
        self.assertEqual(found[("shim_workqueue_depth", ())], 4)
        self.assertEqual(found[("shim_workqueue_oldest_seconds", ())], 2.5)
        self.assertEqual(found[("shim_result_writes_pending", ())], 3)

    def test_set_function(self):
        m = Metrics()
        pending = {"a": 1}
        m.writes_pending.set_function(lambda: len(pending))
        self.assertEqual(scrape(m)[("shim_result_writes_pending", ())], 1)
        pending["b"] = 2
        self.assertEqual(scrape(m)[("shim_result_writes_pending", ())], 2)
