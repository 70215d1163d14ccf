"""
Tests of L{shim.etcd.v2.EtcdV2Client} against a real etcd with the v2 API on
(C{--enable-v2=true}; run with ETCD_BIN set to each etcd version supported), plus
pure tests of the v2 wire format and its snapshot parser.
"""

import base64
import json
import ssl
import urllib.error
import urllib.request

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from shim.etcd import (
    AuthFailed, CasResult, Compacted, ConnectionFailed, EtcdError, EtcdV2Client,
    IfValue, KeyValue, TLSFailed, WatchEvent)
from shim.etcd import v2wire
from shim.etcd.v2watch import V2Watch
from shim.test.certs import make_pki
from shim.test.etcdserver import EtcdServerMixin, refused_url, start_etcd
from shim.test.support import check_watch_too_large, sleep, wait_for

V2_ARGS = {"extra_args": ["--enable-v2=true"]}


@inlineCallbacks
def puts(client, keys, value):
    """Write each key in turn; the revisions."""
    revisions = []
    for key in keys:
        revisions.append((yield client.put(key, value)).revision)
    return revisions


def v2_call(server, method, path, body=None, user=None):
    """A blocking v2 request (JSON body) to C{server}; (status, decoded answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.client_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    if user is not None:
        token = base64.b64encode(("%s:%s" % user).encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


#: The v2 users and roles that docs/etcd-v2.md gives the shim: (method, path, body).
V2_AUTH = (
    ("PUT", "/v2/auth/users/root", {"user": "root", "password": "rootpw"}),
    ("PUT", "/v2/auth/roles/shim", {"role": "shim", "permissions": {"kv": {
        "read": ["/proton/*", "/controller/*"], "write": ["/controller/*"]}}}),
    ("PUT", "/v2/auth/users/shim", {"user": "shim", "password": "s3cret",
                                    "roles": ["shim"]}),
    ("PUT", "/v2/auth/enable", None),
    ("PUT", "/v2/auth/roles/guest", {"role": "guest", "revoke": {"kv": {
        "read": ["/*"], "write": ["/*"]}}}),
)


class SnapshotParserTests(SynchronousTestCase):
    """L{v2wire.SnapshotParser}, fed by hand."""

    ANSWER = json.dumps({"action": "get", "node": {
        "key": "/p", "dir": True, "nodes": [
            {"key": "/p/a", "value": 'x{"key":"/p/fake","value":"no"}\\"',
             "modifiedIndex": 4, "createdIndex": 3},
            {"key": "/p/d", "dir": True, "nodes": [
                {"key": "/p/d/e", "dir": True, "modifiedIndex": 5, "createdIndex": 5},
                {"key": "/p/d/\u00e9", "value": "\u00e9t\u00e9", "modifiedIndex": 6,
                 "createdIndex": 6},
            ], "modifiedIndex": 5, "createdIndex": 5},
            {"key": "/p/z", "value": "", "modifiedIndex": 7, "createdIndex": 7},
        ], "modifiedIndex": 2, "createdIndex": 2}}, separators=(",", ":")).encode()

    EXPECTED = [
        KeyValue("/p/a", b'x{"key":"/p/fake","value":"no"}\\"', 3, 4, 1, 0),
        KeyValue("/p/d/\u00e9", "\u00e9t\u00e9".encode(), 6, 6, 1, 0),
        KeyValue("/p/z", b"", 7, 7, 1, 0),
    ]

    def parse(self, *chunks):
        kvs = []
        parser = v2wire.SnapshotParser(kvs.extend)
        for chunk in chunks:
            parser.feed(chunk)
        parser.close()
        self.assertEqual(parser.count, len(kvs))
        return kvs

    def test_whole(self):
        self.assertEqual(self.parse(self.ANSWER), self.EXPECTED)

    def test_every_split_point(self):
        data = self.ANSWER
        for i in range(len(data) + 1):
            self.assertEqual(self.parse(data[:i], data[i:]), self.EXPECTED, i)

    def test_byte_by_byte(self):
        data = self.ANSWER
        self.assertEqual(self.parse(*[data[i:i + 1] for i in range(len(data))]),
                         self.EXPECTED)

    def test_dir_mark_elsewhere(self):
        """A directory whose "dir" comes late is decoded whole and flattened."""
        data = (b'{"action":"get","node":{"key":"/p","nodes":[{"key":"/p/a",'
                b'"value":"1","modifiedIndex":3,"createdIndex":3}],"dir":true}}')
        self.assertEqual(self.parse(data), [KeyValue("/p/a", b"1", 3, 3, 1, 0)])

    def test_truncated(self):
        e = self.assertRaises(ValueError, self.parse, self.ANSWER[:60])
        self.assertIn("answer ends", str(e))

    def test_single_leaf(self):
        data = b'{"action":"get","node":{"key":"/k","value":"v","modifiedIndex":9,' \
               b'"createdIndex":8}}'
        self.assertEqual(self.parse(data), [KeyValue("/k", b"v", 8, 9, 1, 0)])


class WireTests(SynchronousTestCase):
    """The v2 wire format, without etcd."""

    def test_key_path(self):
        self.assertEqual(v2wire.key_path("/proton/"), "/v2/keys/proton/")
        self.assertEqual(v2wire.key_path("a b/%?#"), "/v2/keys/a%20b/%25%3F%23")
        self.assertEqual(v2wire.key_path(b"/\xc3\xa9"), "/v2/keys/%C3%A9")

    def test_events(self):
        def event(action, node, prev=None):
            message = {"action": action, "node": node}
            if prev is not None:
                message["prevNode"] = prev
            return v2wire.decode_event(message, prev_kv=True)
        leaf = {"key": "/p/a", "value": "1", "modifiedIndex": 5, "createdIndex": 5}
        for action in ("set", "create", "update", "compareAndSwap"):
            self.assertEqual(event(action, leaf, {"key": "/p/a", "value": "0"}),
                             (5, WatchEvent("PUT", "/p/a", b"1", 5, b"0")))
        for action in ("delete", "expire", "compareAndDelete"):
            self.assertEqual(event(action, {"key": "/p/a", "modifiedIndex": 6}),
                             (6, WatchEvent("DELETE", "/p/a", None, 6, None)))
        self.assertEqual(
            event("delete", {"key": "/p/d", "dir": True, "modifiedIndex": 7}),
            (7, WatchEvent("DELETE", "/p/d/", None, 7, None)))
        self.assertEqual(
            event("expire", {"key": "/p/d", "dir": True, "modifiedIndex": 8}),
            (8, WatchEvent("DELETE", "/p/d/", None, 8, None)))
        self.assertEqual(event("set", {"key": "/p/d", "dir": True, "modifiedIndex": 9}),
                         (9, None))

    def test_errors(self):
        cleared = v2wire.error_from_v2(400, {
            "errorCode": 401, "message": "The event in requested index is outdated and"
            " cleared", "cause": "the requested history has been cleared [104/2]",
            "index": 1103}, "watch '/p/'", "http://e")
        self.assertIsInstance(cleared, Compacted)
        self.assertEqual(cleared.compact_revision, 104)
        self.assertIn("1000-event window", str(cleared))
        auth = v2wire.error_from_v2(401, {"errorCode": 110, "message": "The request"
                                          " requires user authentication"}, "get", "e")
        self.assertIsInstance(auth, AuthFailed)
        self.assertEqual(auth.v2_code, 110)
        self.assertEqual(v2wire.cluster_id("d1cfaf999eb97a2a"),
                         str(int("d1cfaf999eb97a2a", 16)))


class V2ClientTests(EtcdServerMixin, TestCase):
    """The v2 client against a real etcd with v2 on."""

    etcd_args = V2_ARGS

    def make_v2_client(self, endpoints=None, **kwargs):
        client = EtcdV2Client(endpoints or [self.etcd.client_url], **kwargs)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_status(self):
        client = self.make_v2_client()
        put = yield client.put("/s/k", b"1")
        status = yield client.status()
        self.assertEqual(status.version, "%d.%d.%d" % self.etcd.version)
        self.assertEqual(status.revision, put.revision)
        self.assertEqual(status.member_id, status.leader)
        self.assertTrue(status.cluster_id.isdigit())
        self.assertEqual(client.cluster_id, status.cluster_id)

    @inlineCallbacks
    def test_put_get_delete(self):
        client = self.make_v2_client()
        first = yield client.put("/p/a", b"1")
        second = yield client.put("/p/a", "\u00e9")
        self.assertEqual(second.revision, first.revision + 1)
        read = yield client.get("/p/a")
        self.assertEqual(read.kvs, [KeyValue("/p/a", "\u00e9".encode(), second.revision,
                                             second.revision, 1, 0)])
        self.assertEqual(read.revision, second.revision)
        self.assertEqual((yield client.get("/p/missing")).kvs, [])
        self.assertEqual((yield client.get("/p")).kvs, [])
        deleted = yield client.delete("/p/a", prev_kv=True)
        self.assertEqual((deleted.deleted, deleted.prev_kvs[0].value),
                         (1, "\u00e9".encode()))
        self.assertEqual((yield client.delete("/p/a")).deleted, 0)
        self.assertRaises(NotImplementedError, client.txn)
        self.assertRaises(NotImplementedError, client.lease_grant, 10)
        self.assertRaises(NotImplementedError, client.put, "/p/a", b"1", lease=5)

    @inlineCallbacks
    def test_get_all(self):
        """
        One recursive GET: leaves only, from nested directories, with the index of
        the read; on_page gets pages of at most page_size; a missing directory
        reads as empty.
        """
        client = self.make_v2_client()
        written = {}
        for i in range(25):
            key = "/g/t%d/k%02d" % (i % 3, i)
            written[key] = (yield client.put(key, b'{"key":"v%d"}' % (i,))).revision
        yield client.put("/gother", b"not under /g/")
        snapshot = yield client.get_all("/g/")
        self.assertEqual({kv.key: kv.mod_revision for kv in snapshot.kvs}, written)
        self.assertEqual(snapshot.count, 25)
        self.assertEqual(snapshot.revision, max(written.values()) + 1)
        pages = []
        paged = yield client.get_all("/g/", page_size=10, on_page=pages.append)
        self.assertEqual([len(p) for p in pages], [10, 10, 5])
        self.assertEqual([kv for page in pages for kv in page], snapshot.kvs)
        self.assertEqual((paged.kvs, paged.count), ([], 25))
        missing = yield client.get_all("/nothing/")
        self.assertEqual((missing.kvs, missing.revision), ([], snapshot.revision))
        probe = yield client.get("/g/", prefix=True, limit=1, keys_only=True)
        self.assertEqual((len(probe.kvs), probe.more, probe.kvs[0].value),
                         (1, True, b""))

    @inlineCallbacks
    def test_get_all_on_page_fails(self):
        client = self.make_v2_client()
        for i in range(30):
            yield client.put("/f/k%02d" % (i,), b"x" * 100)

        def refuse(page):
            raise RuntimeError("no thanks")
        yield self.assertFailure(client.get_all("/f/", page_size=5, on_page=refuse),
                                 RuntimeError)
        self.assertEqual((yield client.get_all("/f/")).count, 30)

    @inlineCallbacks
    def test_put_if_delete_if(self):
        client = self.make_v2_client()
        created = yield client.put_if("/cas/k", b"1", 0)
        self.assertEqual(created, CasResult(True, created.revision))
        exists = yield client.put_if("/cas/k", b"2", 0)
        self.assertEqual(exists, CasResult(False, created.revision))
        stale = yield client.put_if("/cas/k", b"2", created.revision - 1)
        self.assertEqual(stale, CasResult(False, created.revision))
        missing = yield client.put_if("/cas/none", b"2", created.revision)
        self.assertEqual(missing, CasResult(False, created.revision))
        swapped = yield client.put_if("/cas/k", b"2", created.revision)
        self.assertEqual(swapped, CasResult(True, created.revision + 1))
        self.assertEqual((yield client.get("/cas/k")).kvs[0].value, b"2")
        missed = yield client.delete_if("/cas/k", created.revision)
        self.assertEqual(missed, CasResult(False, swapped.revision))
        gone = yield client.delete_if("/cas/k", swapped.revision)
        self.assertEqual(gone, CasResult(True, swapped.revision + 1))
        again = yield client.delete_if("/cas/k", swapped.revision)
        self.assertEqual(again, CasResult(False, gone.revision))
        self.assertEqual((yield client.get("/cas/k")).kvs, [])
        self.assertRaises(ValueError, client.put_if, "/cas/k", b"1", 0, guard=["x"])
        self.assertRaises(ValueError, client.delete_if, "/cas/k", 5, guard=["x"])

    @inlineCallbacks
    def test_put_if_value(self):
        """
        put_if with L{IfValue} (v2's prevValue): written only if the key holds
        exactly that value; absent or holding another, C{succeeded=False}.
        """
        client = self.make_v2_client()
        absent = yield client.put_if("/cas/v", b"ours", IfValue(b"{}"))
        self.assertFalse(absent.succeeded)
        yield client.put("/cas/v", b"theirs")
        other = yield client.put_if("/cas/v", b"ours", IfValue(b"{}"))
        self.assertFalse(other.succeeded)
        empty = yield client.put("/cas/v", b"{}")
        written = yield client.put_if("/cas/v", b"ours", IfValue(b"{}"))
        self.assertEqual(written, CasResult(True, empty.revision + 1))
        self.assertEqual((yield client.get("/cas/v")).kvs[0].value, b"ours")

    @inlineCallbacks
    def test_snapshot_watch_resume(self):
        """
        A snapshot, then a watch from its index + 1 with writes before and after
        the watch opened; stopped, more writes, resumed from last_revision + 1:
        every change arrives once, in order.
        """
        client = self.make_v2_client()
        for i in range(5):
            yield client.put("/w/k%d" % (i,), b"a")
        snapshot = yield client.get_all("/w/")
        # Written after the snapshot, before the watch: caught up from history.
        behind = yield puts(client, ["/w/k%d" % (i,) for i in range(4)], b"b")
        yield client.put("/elsewhere", b"not watched")
        events = []
        watch = client.watch("/w/", snapshot.revision + 1, events.append)
        yield watch.started
        live = yield puts(client, ["/w/n%d" % (i,) for i in range(3)], b"c")
        yield wait_for(lambda: watch.last_revision >= live[-1], what="the live events")
        # One stream for each event of the backlog (the live writes may have
        # joined it), then one stream for the rest.
        self.assertGreaterEqual(watch.reopens, 4)
        yield watch.stop()
        away = yield puts(client, ["/w/m%d" % (i,) for i in range(3)], b"d")
        resumed = client.watch("/w/", watch.last_revision + 1, events.append)
        yield resumed.started
        deleted = yield client.delete("/w/k0")
        yield wait_for(lambda: resumed.last_revision >= deleted.revision, what="resumed")
        yield resumed.stop()
        self.assertEqual([e.mod_revision for e in events],
                         behind + live + away + [deleted.revision])
        self.assertEqual(events[-1], WatchEvent("DELETE", "/w/k0", None,
                                                deleted.revision, None))
        self.assertEqual(events[0], WatchEvent("PUT", "/w/k0", b"b", behind[0], None))
        self.assertEqual(watch.events_seen, 7)

    @inlineCallbacks
    def test_live_once_caught_up(self):
        """
        A watch from an index etcd has passed is live (held at etcd past its
        history) only once it has every event of the backlog: here the last one
        is followed by a write elsewhere, so the long-poll after it waits unanswered
        (C{live_after}).  A watch from now, or from the next index, is live at
        once.
        """
        self.patch(V2Watch, "live_after", 1.0)
        client = self.make_v2_client()
        behind = yield puts(client, ["/l/k%d" % (i,) for i in range(3)], b"a")
        yield client.put("/elsewhere", b"not watched")
        events = []
        watch = client.watch("/l/", behind[0], events.append)
        seen_when_live = []
        watch.live.addCallback(lambda w: seen_when_live.append(len(events)))
        yield watch.started
        yield wait_for(lambda: seen_when_live, what="the watch to be live")
        self.assertEqual(seen_when_live, [3])
        self.assertEqual([e.mod_revision for e in events], behind)
        yield watch.stop()
        status = yield client.status()
        for start in (None, status.revision + 1):
            now = client.watch("/l/", start, events.append)
            yield now.started
            self.assertTrue(now.live.called, start)
            yield now.stop()

    @inlineCallbacks
    def test_watch_from_now_and_dir_delete(self):
        """A directory delete is one event: a DELETE of the directory's key + "/"."""
        client = self.make_v2_client()
        for i in range(3):
            yield client.put("/d/sub/k%d" % (i,), b"x")
        events = []
        watch = client.watch("/d/", None, events.append, prev_kv=True)
        yield watch.started
        self.assertEqual(watch.last_revision, (yield client.status()).revision)
        yield client.put("/d/sub/k0", b"y")
        deleted = yield client.delete("/d/sub/", prefix=True)
        yield wait_for(lambda: len(events) == 2, what="two events")
        self.assertEqual(events[0].prev_value, b"x")
        self.assertEqual(events[1], WatchEvent("DELETE", "/d/sub/", None,
                                               deleted.revision, None))
        self.assertEqual((yield client.get_all("/d/")).kvs, [])
        yield watch.stop()

    @inlineCallbacks
    def test_event_index_cleared(self):
        """
        More than 1000 writes while the watch is away: resuming ends with
        "compacted", naming the oldest index etcd still holds.
        """
        client = self.make_v2_client()
        first = yield client.put("/e/k", b"0")
        semaphore = defer.DeferredSemaphore(16)
        yield defer.gatherResults([semaphore.run(client.put, "/e/k%d" % (i % 10,), b"x")
                                   for i in range(1100)])
        watch = client.watch("/e/", first.revision + 1, lambda event: None)
        yield self.assertFailure(watch.started, Compacted)
        ended = yield watch.done
        self.assertEqual(ended.reason, "compacted")
        now = (yield client.status()).revision
        self.assertEqual(ended.compact_revision, now - 999)
        self.assertIn("1000-event window", str(ended.error))

    @inlineCallbacks
    def test_dropped_watcher_resumes(self):
        """
        A stream reader that stops reading falls behind; etcd drops a watcher with
        100 events unsent, and its stream falls silent.  The watch's check finds an
        event the stream did not deliver and ends it with "connection_lost"; a
        watch from last_revision + 1 gets everything else, nothing twice.
        """
        client = self.make_v2_client(timeout=30)
        self.patch(V2Watch, "probe_interval", 0.5)
        events = []
        watch = client.watch("/b/", None, events.append)
        yield watch.started
        yield wait_for(lambda: watch._protocol is not None, what="the stream")
        # The watch may end (its probe finds the stream dropped) before the test
        # resumes reading: keep the transport itself.
        transport = watch._protocol.transport
        transport.pauseProducing()
        big = b"v" * (64 * 1024)
        semaphore = defer.DeferredSemaphore(8)
        results = yield defer.gatherResults([
            semaphore.run(client.put, "/b/k%03d" % (i,), big) for i in range(500)])
        written = sorted(r.revision for r in results)
        transport.resumeProducing()
        ended = yield watch.done
        self.assertEqual(ended.reason, "connection_lost")
        self.assertIn("dropped this v2 watcher", str(ended.error))
        self.assertLess(len(events), 500)
        resumed = client.watch("/b/", watch.last_revision + 1, events.append)
        yield wait_for(lambda: resumed.last_revision >= written[-1], what="the rest")
        yield resumed.stop()
        self.assertEqual([e.mod_revision for e in events], written)

    @inlineCallbacks
    def test_quiet_watch_checked(self):
        """
        A quiet, healthy watch is checked with long-polls and stays up, through
        writes elsewhere and an event of its own; stopping it ends its check too.
        """
        self.patch(V2Watch, "probe_interval", 0.2)
        client = self.make_v2_client()
        events = []
        watch = client.watch("/q/", None, events.append)
        yield watch.started
        yield wait_for(lambda: watch.probes >= 1, what="a check")
        yield client.put("/other", b"x")
        yield sleep(0.5)
        put = yield client.put("/q/k", b"1")
        yield wait_for(lambda: watch.probes >= 2, what="a second check")
        yield sleep(0.5)
        self.assertFalse(watch.done.called)
        self.assertEqual([e.mod_revision for e in events], [put.revision])
        self.assertEqual((yield watch.stop()).reason, "stopped")

    def test_too_large(self):
        """As with v3: an event bigger than the (lowered) cap ends the watch."""
        return check_watch_too_large(self, self.make_v2_client())

    @inlineCallbacks
    def test_failover(self):
        client = self.make_v2_client([refused_url(self), self.etcd.client_url])
        yield client.put("/fo/k", b"1")
        self.assertEqual(client.endpoint, self.etcd.client_url)
        watch = client.watch("/fo/", None, lambda event: None)
        yield watch.started
        self.assertEqual(watch.endpoint, self.etcd.client_url)
        yield watch.stop()

    @inlineCallbacks
    def test_refused(self):
        client = self.make_v2_client([refused_url(self)], timeout=2)
        yield self.assertFailure(client.get("/x"), ConnectionFailed)
        watch = client.watch("/x/", 1, lambda event: None)
        yield self.assertFailure(watch.started, ConnectionFailed)
        self.assertEqual((yield watch.done).reason, "connection_lost")

    @inlineCallbacks
    def test_killed(self):
        client = self.make_v2_client(timeout=2)
        watch = client.watch("/k/", None, lambda event: None)
        yield watch.started
        self.etcd.kill()
        ended = yield watch.done
        self.assertEqual(ended.reason, "connection_lost")


class NoV2Tests(TestCase):
    """An etcd without --enable-v2."""

    @inlineCallbacks
    def test_clear_message(self):
        etcd = start_etcd(self)
        client = EtcdV2Client([etcd.client_url])
        self.addCleanup(client.close)
        error = yield self.assertFailure(client.get("/k"), EtcdError)
        self.assertIn("--enable-v2=true", str(error))


class V2AuthTests(EtcdServerMixin, TestCase):
    """v2's own authentication: basic auth, and the roles docs/etcd-v2.md gives."""

    etcd_args = V2_ARGS

    def setUp(self):
        d = defer.maybeDeferred(EtcdServerMixin.setUp, self)
        d.addCallback(lambda _: self.enable_auth())
        return d

    def enable_auth(self):
        for method, path, body in V2_AUTH:
            status, answer = v2_call(self.etcd, method, path, body,
                                     user=("root", "rootpw"))
            self.assertIn(status, (200, 201), (path, answer))

    def make_v2_client(self, **kwargs):
        client = EtcdV2Client([self.etcd.client_url], **kwargs)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_shim_role(self):
        """The shim's user reads and watches /proton/ and writes /controller/."""
        root = self.make_v2_client(username="root", password="rootpw")
        put = yield root.put("/proton/net/Port/p2", b"{}")
        client = self.make_v2_client(username="shim", password="s3cret",
                                     status_key="/proton/")
        status = yield client.status()
        self.assertEqual(status.revision, put.revision)
        snapshot = yield client.get_all("/proton/")
        self.assertEqual([kv.key for kv in snapshot.kvs], ["/proton/net/Port/p2"])
        events = []
        watch = client.watch("/proton/", snapshot.revision + 1, events.append)
        yield watch.started
        written = yield client.put_if("/controller/net/Port/p2", b'{"vif_type":"x"}', 0)
        self.assertTrue(written.succeeded)
        change = yield root.put("/proton/net/Port/p2", b'{"a":1}')
        yield wait_for(lambda: events, what="the event")
        self.assertEqual(events[0].mod_revision, change.revision)
        yield watch.stop()
        yield self.assertFailure(client.put("/proton/net/Port/p2", b"x"), AuthFailed)

    @inlineCallbacks
    def test_refused(self):
        """A wrong password, or none: every call, and a watch, end with "auth"."""
        for client in (self.make_v2_client(username="shim", password="wrong"),
                       self.make_v2_client()):
            error = yield self.assertFailure(client.get_all("/proton/"), AuthFailed)
            self.assertIn("requires user authentication", str(error))
            watch = client.watch("/proton/", None, lambda event: None)
            yield self.assertFailure(watch.started, AuthFailed)
            ended = yield watch.done
            self.assertEqual(ended.reason, "auth")
            self.assertIsInstance(ended.error, AuthFailed)


class V2TLSTests(TestCase):
    """v2 over https, etcd demanding a client certificate of its CA."""

    def setUp(self):
        self.pki = make_pki(self.mktemp())
        context = ssl.create_default_context(cafile=self.pki.ca)
        context.load_cert_chain(self.pki.anonymous_cert, self.pki.anonymous_key)
        self.etcd = start_etcd(self, scheme="https", ssl_context=context, extra_args=[
            "--enable-v2=true", "--cert-file", self.pki.server_cert,
            "--key-file", self.pki.server_key, "--client-cert-auth",
            "--trusted-ca-file", self.pki.ca])

    def make_v2_client(self, **kwargs):
        client = EtcdV2Client([self.etcd.client_url], timeout=5, **kwargs)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_calls_and_watch(self):
        client = self.make_v2_client(ca_file=self.pki.ca, cert_file=self.pki.client_cert,
                                     key_file=self.pki.client_key)
        first = yield client.put("/t/a", b"1")
        events = []
        watch = client.watch("/t/", first.revision, events.append)
        yield watch.started
        second = yield client.put("/t/b", b"2")
        yield wait_for(lambda: len(events) == 2, what="two events")
        self.assertEqual([e.mod_revision for e in events],
                         [first.revision, second.revision])
        self.assertEqual((yield client.get_all("/t/")).count, 2)
        yield watch.stop()

    @inlineCallbacks
    def test_no_client_certificate(self):
        client = self.make_v2_client(ca_file=self.pki.ca)
        error = yield self.assertFailure(client.get("/t/a"), TLSFailed)
        self.assertIn("TLS handshake failed", str(error))
        self.assertIn(self.etcd.client_url, str(error))
