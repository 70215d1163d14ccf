"""
Tests of L{shim.etcd.watch}: the stream parser (pure) and watches against a
real etcd (run with ETCD_BIN set to each etcd version supported).
"""

import json
import os

from twisted.internet import defer, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from shim.etcd import (
    AuthFailed, ConnectionFailed, MessageTooLarge, WatchEvent, WatchStreamParser)
from shim.etcd import watch as watch_module
from shim.etcd.watch import LineTooLarge, Watch
from shim.etcd.wire import WatchEnded
from shim.test.etcdserver import EtcdServerMixin, b64, refused_url
from shim.test.support import check_watch_too_large, wait_for


class ParserTests(SynchronousTestCase):
    """L{WatchStreamParser}, fed by hand."""

    def setUp(self):
        self.messages = []
        self.parser = WatchStreamParser(self.messages.append)

    def test_split_message(self):
        line = json.dumps({"result": {"events": [{"kv": {"key": b64("k")}}]}}).encode()
        for chunk in (line[:3], line[3:10], line[10:11], line[11:], b"\n"):
            self.parser.feed(chunk)
        self.assertEqual(len(self.messages), 1)
        self.assertEqual(self.messages[0], json.loads(line))
        self.assertEqual(self.parser.buffered, 0)

    def test_several_in_one_chunk(self):
        lines = [json.dumps({"result": {"n": i}}).encode() for i in range(5)]
        data = b"\n".join(lines) + b"\n"
        # Two whole messages and the start of a third, then the rest.
        cut = len(lines[0]) + len(lines[1]) + 2 + 4
        self.parser.feed(data[:cut])
        self.assertEqual([m["result"]["n"] for m in self.messages], [0, 1])
        self.assertEqual(self.parser.buffered, 4)
        self.parser.feed(data[cut:])
        self.assertEqual([m["result"]["n"] for m in self.messages], [0, 1, 2, 3, 4])

    def test_every_split_point(self):
        data = b'{"a":1}\n\n{"b":"x\\ny"}\r\n{"c":[1,2]}\n'
        expected = [{"a": 1}, {"b": "x\ny"}, {"c": [1, 2]}]
        for i in range(len(data) + 1):
            for j in range(i, len(data) + 1):
                messages = []
                parser = WatchStreamParser(messages.append)
                parser.feed(data[:i])
                parser.feed(data[i:j])
                parser.feed(data[j:])
                self.assertEqual(messages, expected, (i, j))

    def test_garbage(self):
        self.assertRaises(ValueError, self.parser.feed, b"{not json\n")

    def test_stopped(self):
        self.parser.stopped = True
        self.parser.feed(b'{"a":1}\n')
        self.assertEqual(self.messages, [])

    def test_default_cap(self):
        self.assertEqual(self.parser.max_message, 64 * 1024 * 1024)
        self.assertEqual(watch_module.MAX_WATCH_MESSAGE, 64 * 1024 * 1024)

    def test_cap_unfinished_line(self):
        """An unfinished line is held up to the cap, then the parser gives up."""
        parser = WatchStreamParser(self.messages.append, max_message=10)
        parser.feed(b'{"a":1}\n{"b":')
        self.assertEqual(self.messages, [{"a": 1}])
        parser.feed(b'"xy')
        self.assertEqual(parser.buffered, 8)
        e = self.assertRaises(LineTooLarge, parser.feed, b"zzz")
        self.assertEqual((e.size, e.limit), (11, 10))
        self.assertIn("more than 10 bytes", str(e))

    def test_cap_whole_line(self):
        """A complete line over the cap is refused, the ones before it delivered."""
        parser = WatchStreamParser(self.messages.append, max_message=10)
        self.assertRaises(LineTooLarge, parser.feed,
                          b'{"a":1}\n{"b":"0123456789"}\n{"c":3}\n')
        self.assertEqual(self.messages, [{"a": 1}])

    def test_cap_exact(self):
        """A line of exactly the cap passes, split or not."""
        line = b'{"b":"01"}'
        self.assertEqual(len(line), 10)
        parser = WatchStreamParser(self.messages.append, max_message=10)
        parser.feed(line[:4])
        parser.feed(line[4:])
        parser.feed(b"\n" + line + b"\n")
        self.assertEqual(self.messages, [{"b": "01"}, {"b": "01"}])


class _FakeClient(object):
    """Just what a L{Watch} asks of its client, for feeding a watch by hand."""

    _token = b"token.1"
    cluster_id = None

    def _header_seen(self, header):
        self.cluster_id = header.get("cluster_id")

    def _token_rejected(self, token):
        if token == self._token:
            self._token = None


class WatchMessageTests(SynchronousTestCase):
    """A L{Watch} fed stream bytes by hand, without etcd."""

    def setUp(self):
        self.events = []
        self.progress = []
        self.client = _FakeClient()
        self.watch = Watch(self.client, "/p/", 5, self.events.append,
                           on_progress=self.progress.append, reactor=task.Clock())

    def feed(self, *results):
        data = b"".join(json.dumps({"result": r}).encode() + b"\n" for r in results)
        self.watch._data(data)

    def test_events(self):
        header = {"cluster_id": "77", "revision": "9"}
        self.feed({"header": header, "created": True})
        self.assertEqual(self.successResultOf(self.watch.started), self.watch)
        self.assertEqual(self.watch.last_revision, 4)
        self.feed({"header": header, "events": [
            {"kv": {"key": b64("/p/a"), "value": b64("1"), "mod_revision": "5"}},
            {"type": "DELETE", "kv": {"key": b64("/p/a"), "mod_revision": "6"},
             "prev_kv": {"key": b64("/p/a"), "value": b64("1")}},
            {"kv": {"key": b64("/p/b"), "mod_revision": 7}, "prev_kv": {"key": b64("/p/b")}},
        ]})
        self.assertEqual(self.events, [
            WatchEvent("PUT", "/p/a", b"1", 5, None),
            WatchEvent("DELETE", "/p/a", None, 6, b"1"),
            WatchEvent("PUT", "/p/b", b"", 7, b""),
        ])
        self.assertEqual(self.watch.last_revision, 7)
        self.assertEqual(self.client.cluster_id, "77")
        self.feed({"header": {"revision": "12"}})
        self.assertEqual(self.progress, [12])
        self.assertEqual(self.watch.last_revision, 12)

    def test_complete_revision(self):
        """
        complete_revision moves to the last event of a message that is not a
        fragment, and to a progress notification's revision; the fragments before
        the last one of a response leave it where it was.
        """
        self.assertEqual(self.watch.complete_revision, 4)
        self.feed({"header": {"revision": "9"}, "created": True})

        def event(revision, key="/p/a"):
            return {"kv": {"key": b64(key), "value": b64("1"),
                           "mod_revision": str(revision)}}
        self.feed({"header": {"revision": "9"}, "events": [event(5), event(6)]})
        self.assertEqual(self.watch.complete_revision, 6)
        self.feed({"header": {"revision": "9"}, "fragment": True,
                   "events": [event(7), event(8, "/p/b")]})
        self.assertEqual((self.watch.last_revision, self.watch.complete_revision), (8, 6))
        self.feed({"header": {"revision": "9"}, "events": [event(8, "/p/c")]})
        self.assertEqual(self.watch.complete_revision, 8)
        self.feed({"header": {"revision": "12"}})
        self.assertEqual(self.watch.complete_revision, 12)

    def test_compacted(self):
        self.feed({"header": {}, "created": True},
                  {"header": {}, "canceled": True, "compact_revision": "8"})
        ended = self.successResultOf(self.watch.done)
        self.assertEqual((ended.reason, ended.compact_revision), ("compacted", 8))
        self.assertIn("8", str(ended.error))

    def test_cancelled_before_created(self):
        self.feed({"header": {}, "canceled": True, "cancel_reason": "no space"})
        ended = self.successResultOf(self.watch.done)
        self.assertEqual(ended.reason, "cancelled")
        self.assertIn("no space", str(ended.error))
        self.failureResultOf(self.watch.started)

    def test_auth_cancel(self):
        """
        etcd confirms a watch with a dead token and cancels it in the same
        message: C{started} fires, the watch ends with "auth", C{events_seen}
        says nothing arrived, and the client has dropped the token.
        """
        self.watch._token = self.client._token
        self.feed({"header": {}, "watch_id": "-1", "created": True, "canceled": True,
                   "cancel_reason": "rpc error: code = Unauthenticated desc ="
                   " etcdserver: invalid auth token"})
        self.successResultOf(self.watch.started)
        ended = self.successResultOf(self.watch.done)
        self.assertEqual(ended.reason, "auth")
        self.assertIsInstance(ended.error, AuthFailed)
        self.assertIn("invalid auth token", str(ended.error))
        self.assertEqual(self.watch.events_seen, 0)
        self.assertIsNone(self.client._token)

    def test_auth_reasons(self):
        for reason in ["rpc error: code = PermissionDenied desc = etcdserver:"
                       " permission denied",
                       "rpc error: code = InvalidArgument desc = etcdserver: user"
                       " name is empty"]:
            watch = Watch(self.client, "/p/", 5, self.events.append, reactor=task.Clock())
            watch._data(json.dumps({"result": {"header": {}, "created": True,
                                               "canceled": True,
                                               "cancel_reason": reason}}).encode()
                        + b"\n")
            ended = self.successResultOf(watch.done)
            self.assertEqual(ended.reason, "auth", reason)

    def test_auth_error_message(self):
        """An error message (not a cancel) refusing the token also ends with "auth"."""
        self.watch._token = self.client._token
        self.watch._data(b'{"error":{"grpc_code":16,"message":"etcdserver: invalid auth'
                         b' token"}}\n')
        ended = self.successResultOf(self.watch.done)
        self.assertEqual(ended.reason, "auth")
        self.assertIsInstance(ended.error, AuthFailed)
        self.assertIsNone(self.client._token)
        self.failureResultOf(self.watch.started)

    def test_events_seen(self):
        self.feed({"header": {"revision": "5"}, "created": True})
        self.assertEqual(self.watch.events_seen, 0)
        self.feed({"header": {}, "events": [
            {"kv": {"key": b64("/p/a"), "value": b64("1"), "mod_revision": "5"}},
            {"kv": {"key": b64("/p/b"), "value": b64("1"), "mod_revision": "6"}}]},
            {"header": {"revision": "9"}})
        self.assertEqual(self.watch.events_seen, 3)

    def test_too_large(self):
        """One message over the cap ends the watch with "too_large"."""
        self.patch(watch_module, "MAX_WATCH_MESSAGE", 100)
        watch = Watch(self.client, "/p/", 5, self.events.append, reactor=task.Clock())
        watch._data(b'{"result":{"header":{},"created":true}}\n')
        watch._data(b'{"result":{"events":[' + b" " * 200)
        ended = self.successResultOf(watch.done)
        self.assertEqual(ended.reason, "too_large")
        self.assertIsInstance(ended.error, MessageTooLarge)
        self.assertIn("more than 100 bytes", str(ended.error))
        self.assertIn("resynchronise", str(ended.error))

    def test_stream_error(self):
        self.watch._data(b'{"error":{"grpc_code":14,"message":"etcdserver: no leader"}}\n')
        ended = self.successResultOf(self.watch.done)
        self.assertEqual(ended.reason, "cancelled")
        self.assertIn("no leader", str(ended.error))
        self.failureResultOf(self.watch.started)


class WatchTests(EtcdServerMixin, TestCase):
    """Watches against a real etcd."""

    @inlineCallbacks
    def test_big_value_and_burst(self):
        """A 1 MiB value and 5,000 small writes arrive complete and in order."""
        client = self.make_client(timeout=30)
        events = []
        watch = client.watch("/w/", None, events.append)
        yield watch.started
        # v3 keeps its history until a compaction: live as soon as confirmed.
        self.assertTrue(watch.live.called)
        self.assertEqual(client.cluster_id, (yield client.status()).cluster_id)
        big = os.urandom(1024 * 1024)
        big_put = yield client.put("/w/big", big)
        semaphore = defer.DeferredSemaphore(16)
        puts = [semaphore.run(client.put, "/w/k%05d" % (i,), b"v%d" % (i,))
                for i in range(5000)]
        results = yield defer.gatherResults(puts)
        written = sorted([(r.revision, "/w/k%05d" % (i,), b"v%d" % (i,))
                          for i, r in enumerate(results)])
        last = written[-1][0]
        yield wait_for(lambda: watch.last_revision >= last, what="5000 events")
        self.assertEqual(events[0], WatchEvent("PUT", "/w/big", big, big_put.revision, None))
        self.assertEqual([(e.mod_revision, e.key, e.value) for e in events[1:]], written)
        ended = yield watch.stop()
        self.assertEqual(ended.reason, "stopped")

    @inlineCallbacks
    def test_compacted(self):
        client = self.make_client()
        for i in range(5):
            yield client.put("/c/k", b"%d" % (i,))
        compacted = self.etcd.compact()
        watch = client.watch("/c/", 2, lambda event: None)
        yield watch.started
        ended = yield watch.done
        self.assertEqual((ended.reason, ended.compact_revision), ("compacted", compacted))

    @inlineCallbacks
    def test_killed_and_resumed(self):
        """
        SIGKILL ends a watch with connection_lost; a new watch from
        last_revision + 1 after the restart misses nothing and repeats nothing.
        """
        client = self.make_client(timeout=2)
        seen = []
        watch = client.watch("/r/", None, seen.append)
        yield watch.started
        acked = []

        @inlineCallbacks
        def writer(start, count):
            for i in range(start, start + count):
                try:
                    result = yield client.put("/r/%04d" % (i,), b"x")
                except ConnectionFailed:
                    return
                acked.append(result.revision)
        writing = writer(0, 400)
        yield wait_for(lambda: len(acked) >= 50, what="50 writes")
        self.etcd.kill()
        ended = yield watch.done
        self.assertEqual(ended.reason, "connection_lost")
        self.assertIsInstance(ended.error, ConnectionFailed)
        yield writing
        self.etcd.start()
        yield writer(1000, 20)
        seen_again = []
        watch2 = client.watch("/r/", watch.last_revision + 1, seen_again.append)
        yield watch2.started
        truth = yield client.get_all("/r/")
        revisions = sorted(kv.mod_revision for kv in truth.kvs)
        yield wait_for(lambda: watch2.last_revision >= revisions[-1], what="catch up")
        yield watch2.stop()
        self.assertEqual([e.mod_revision for e in seen + seen_again], revisions)
        self.assertTrue(set(acked) <= set(revisions))

    @inlineCallbacks
    def test_idle_watchdog(self):
        """
        Progress notifications keep an idle watch alive and move last_revision;
        a frozen etcd sends nothing and the watchdog ends the watch.
        """
        client = self.make_client()
        progress = []
        watch = client.watch("/idle/", None, lambda e: None, idle_timeout=3.0,
                             on_progress=progress.append)
        yield watch.started
        other = yield client.put("/elsewhere", b"x")
        yield wait_for(lambda: progress and progress[-1] >= other.revision, what="progress")
        self.assertEqual(watch.last_revision, progress[-1])
        self.assertFalse(watch.done.called)
        self.etcd.pause()
        ended = yield watch.done
        self.assertEqual(ended.reason, "idle")
        self.assertIn("nothing received", str(ended.error))

    def test_too_large(self):
        """
        A value bigger than the (lowered) cap ends a real watch with "too_large";
        the events before it were delivered.
        """
        return check_watch_too_large(self, self.make_client())

    @inlineCallbacks
    def test_refused(self):
        client = self.make_client([refused_url(self)])
        watch = client.watch("/x/", 1, lambda e: None)
        yield self.assertFailure(watch.started, ConnectionFailed)
        ended = yield watch.done
        self.assertEqual(ended.reason, "connection_lost")

    @inlineCallbacks
    def test_stop_and_single_key(self):
        client = self.make_client()
        events = []
        watch = client.watch("/k", None, events.append, prefix=False, prev_kv=False)
        yield watch.started
        yield client.put("/k2", b"not me")
        put = yield client.put("/k", b"me")
        yield wait_for(lambda: events, what="the event")
        self.assertEqual(events, [WatchEvent("PUT", "/k", b"me", put.revision, None)])
        ended = yield watch.stop()
        self.assertEqual(ended, (("stopped", None, None)))
        self.assertIs((yield watch.stop()), ended)


class FollowerResumeTests(SynchronousTestCase):
    """
    Where the follower resumes a watch that ended: after the last revision the
    watch had whole, or from the last one seen when it was cut between fragments.
    """

    def setUp(self):
        from shim.follower import Follower
        from shim.metrics import Metrics
        from shim.model import Model
        self.follower = Follower(None, Model(), None, task.Clock(), Metrics())

    def ended(self, seen, complete):
        # the follower's state after an event at revision `seen`
        follower = self.follower
        follower.revision = follower._watch_from = seen

        class Ended:
            endpoint = None
            complete_revision = complete
        follower._watch_ended(WatchEnded("stopped", None, None), Ended())
        return follower._watch_from

    def test_whole(self):
        self.assertEqual(self.ended(seen=7, complete=7), 8)

    def test_cut_between_fragments(self):
        self.assertEqual(self.ended(seen=8, complete=7), 8)
