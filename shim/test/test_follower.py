"""
The follower's pacing on a fake clock: a takeover's restore that fails is tried
again after RESTORE_RETRY seconds, not at once; the sink hears that the watch
caught up at most LIVE_WAIT seconds after it opened, and not once a full read is
asked for.  A fake client stands for etcd
(pure scheduling logic; the same paths against a real etcd are in test_reconcile
and test_faults_v2).
"""

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from shim.etcd.errors import EtcdError
from shim.follower import LIVE_WAIT, RESTORE_RETRY, Follower
from shim.metrics import Metrics
from shim.model import Model


class BusyClient:
    """An etcd that answers every status request with an error, 10 ms later."""

    cluster_id = None

    def __init__(self, clock):
        self.clock = clock
        self.calls = 0

    def status(self):
        self.calls += 1
        d = Deferred()
        self.clock.callLater(0.01, d.errback, EtcdError(None, "etcd is busy"))
        return d


class Sink:
    """Hears what the follower tells; counts C{watching()} and C{caught_up()}."""

    def __init__(self):
        self.heard = {"watching": 0, "caught_up": 0}

    def snapshot_started(self, full=True):
        pass

    def watching(self):
        self.heard["watching"] += 1

    def caught_up(self):
        self.heard["caught_up"] += 1


class Watch:
    """A watch confirmed by etcd whose C{live} has not fired."""

    def __init__(self):
        self.live = Deferred()
        self.last_revision = 7
        self.stopped = False

    def stop(self):
        """Asked to end (the real one ends once etcd has closed it)."""
        self.stopped = True


class PacingTests(SynchronousTestCase):

    def follower(self):
        self.clock = task.Clock()
        self.client = BusyClient(self.clock)
        self.sink = Sink()
        follower = Follower(self.client, Model(), self.sink, self.clock, Metrics())
        follower.running = follower.synchronised = True
        self.addCleanup(setattr, follower, "running", False)
        return follower

    def live_watch(self, follower):
        follower._watch = watch = Watch()
        follower._watching(None, watch)
        watch.live.callback(watch)
        return watch

    def test_failed_restore_tried_again_later(self):
        """
        A takeover's resync beside a live watch fails again and again: it is
        tried once per RESTORE_RETRY seconds, with one timer pending at a time.
        """
        follower = self.follower()
        self.live_watch(follower)
        follower.request_resync("takeover", restore=True)
        self.clock.pump([0.01] * int(RESTORE_RETRY / 0.01 - 10))
        self.assertEqual(self.client.calls, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.pump([0.01] * 20)
        self.assertEqual(self.client.calls, 2)
        self.assertTrue(follower._restore)

    def test_caught_up_at_most_live_wait_after_open(self):
        """
        A watch that is open but not live (still catching up): the sink hears
        C{watching()} at once (the queue goes), and C{caught_up()} (the missing
        result keys go) LIVE_WAIT seconds later at most; the watch's own live
        afterwards changes nothing.
        """
        follower = self.follower()
        follower._watch = watch = Watch()
        follower._watching(None, watch)
        self.assertEqual(self.sink.heard, {"watching": 1, "caught_up": 0})
        self.clock.advance(LIVE_WAIT - 0.1)
        self.assertFalse(follower.caught_up)
        self.assertEqual(self.sink.heard["caught_up"], 0)
        self.clock.advance(0.2)
        self.assertTrue(follower.caught_up)
        watch.live.callback(watch)
        self.assertEqual(self.sink.heard, {"watching": 1, "caught_up": 1})

    def test_full_resync_asked_while_catching_up(self):
        """
        A full resync asked for while the watch catches up: the watch is asked to
        end, and until it has, neither LIVE_WAIT passing nor the watch's own live
        tells the sink C{caught_up()} (the missing result keys wait for the read
        and the next watch, not go just before the read).
        """
        follower = self.follower()
        follower._watch = watch = Watch()
        follower._watching(None, watch)
        follower.request_resync("operator", full=True)
        self.assertTrue(watch.stopped)
        self.clock.advance(LIVE_WAIT + 1)
        watch.live.callback(watch)
        self.assertFalse(follower.caught_up)
        self.assertEqual(self.sink.heard, {"watching": 1, "caught_up": 0})
