"""
Tests of L{shim.etcd.client.EtcdClient} against a real etcd (run with ETCD_BIN set
to each etcd version supported), plus pure tests of the wire format.
"""

from base64 import b64decode

from twisted.internet import defer, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from shim.etcd import (
    AuthFailed, Compacted, Compare, ConnectionFailed, EtcdClient, EtcdError,
    NotFound, Op, RequestTooLarge, Timeout, wire)
from shim.etcd.errors import error_from_status
from shim.test.etcdserver import EtcdServerMixin, b64, refused_url


def sleep(seconds):
    from twisted.internet import reactor
    return task.deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def fill(client, prefix, count, value=b"v", batch=100):
    """Write C{count} keys C{prefix}NNNNNN in transactions of C{batch} puts."""
    for start in range(0, count, batch):
        ops = [Op.put("%s%06d" % (prefix, i), value)
               for i in range(start, min(count, start + batch))]
        yield client.txn([], ops, [])


class WireTests(SynchronousTestCase):
    """The wire format, without etcd."""

    def test_prefix_end(self):
        self.assertEqual(wire.prefix_end(b"/a/"), b"/a0")
        self.assertEqual(wire.prefix_end(b"a\xff"), b"b")
        self.assertEqual(wire.prefix_end(b"\xff\xff"), b"\0")
        self.assertEqual(wire.prefix_end(b""), b"\0")

    def test_int64_as_string_or_number(self):
        kv = wire.decode_kv({"key": b64("k"), "value": b64("v"),
                             "create_revision": "3", "mod_revision": 4, "version": "1"})
        self.assertEqual(kv, wire.KeyValue("k", b"v", 3, 4, 1, 0))

    def test_request_encoding(self):
        body = wire.put_request("k\u00e9", "v\u00e9", lease=2 ** 62)
        self.assertEqual(body, {"key": b64("k\u00e9"), "value": b64("v\u00e9"),
                                "lease": str(2 ** 62)})

    def test_bad_value_type(self):
        e = self.assertRaises(TypeError, wire.put_request, "k", 5)
        self.assertIn("value", str(e))

    def test_bad_compare_operator(self):
        e = self.assertRaises(ValueError, Compare.version, "k", "=", 0)
        self.assertIn("'k'", str(e))

    def test_streamed_answer(self):
        body = b'{"result":{"ID":"5","TTL":"10"}}\n'
        self.assertEqual(wire.decode_json(body), {"ID": "5", "TTL": "10"})

    def test_error_mapping(self):
        too_large = error_from_status(8, "grpc: received message larger than max"
                                      " (5000000 vs. 4194304)", "put", "http://x")
        self.assertIsInstance(too_large, RequestTooLarge)
        self.assertIn("http://x", str(too_large))
        self.assertIn("put", str(too_large))
        self.assertIsInstance(error_from_status(
            11, "etcdserver: mvcc: required revision has been compacted", "get", "e"),
            Compacted)
        self.assertIsInstance(error_from_status(
            16, "etcdserver: invalid auth token", "get", "e"), AuthFailed)
        self.assertIsInstance(error_from_status(
            5, "etcdserver: requested lease not found", "get", "e"), NotFound)


class ClientTests(EtcdServerMixin, TestCase):
    """Each call against a real etcd."""

    @inlineCallbacks
    def test_status(self):
        client = self.make_client()
        status = yield client.status()
        self.assertEqual(status.version, "%d.%d.%d" % self.etcd.version)
        self.assertEqual(status.leader, status.member_id)
        self.assertEqual(client.cluster_id, status.cluster_id)
        self.assertIsInstance(status.revision, int)

    @inlineCallbacks
    def test_put_get_delete(self):
        client = self.make_client()
        put = yield client.put("/p/a", "\u00e9t\u00e9")
        self.assertIsNone(put.prev_kv)
        put2 = yield client.put("/p/a", b"\x00\xff", prev_kv=True)
        self.assertEqual(put2.revision, put.revision + 1)
        self.assertEqual(put2.prev_kv.value, "\u00e9t\u00e9".encode())
        yield client.put("/p/b", b"")
        yield client.put("/q", b"other")
        one = yield client.get("/p/a")
        self.assertEqual(one.kvs, [wire.KeyValue("/p/a", b"\x00\xff", put.revision,
                                                 put2.revision, 2, 0)])
        self.assertEqual((one.count, one.more, one.revision), (1, False, put2.revision + 2))
        both = yield client.get("/p/", prefix=True)
        self.assertEqual([(kv.key, kv.value) for kv in both.kvs],
                         [("/p/a", b"\x00\xff"), ("/p/b", b"")])
        limited = yield client.get("/p/", prefix=True, limit=1, keys_only=True)
        self.assertEqual((len(limited.kvs), limited.more, limited.count), (1, True, 2))
        self.assertEqual(limited.kvs[0].value, b"")
        old = yield client.get("/p/a", revision=put.revision)
        self.assertEqual(old.kvs[0].value, "\u00e9t\u00e9".encode())
        missing = yield client.get("/nothing")
        self.assertEqual((missing.kvs, missing.count), ([], 0))
        deleted = yield client.delete("/p/", prefix=True, prev_kv=True)
        self.assertEqual(deleted.deleted, 2)
        self.assertEqual(sorted(kv.key for kv in deleted.prev_kvs), ["/p/a", "/p/b"])
        self.assertEqual((yield client.get("/p/", prefix=True)).count, 0)
        self.assertEqual((yield client.get("/q")).count, 1)

    @inlineCallbacks
    def test_txn_compare_and_set(self):
        client = self.make_client()
        created = yield client.txn([Compare.version("k", "==", 0)],
                                   [Op.put("k", b"mine")], [Op.get("k")])
        self.assertTrue(created.succeeded)
        self.assertEqual(created.responses[0].revision, created.revision)
        # Compare-and-set on the value: right old value succeeds...
        swapped = yield client.txn([Compare.value("k", "==", b"mine")],
                                   [Op.put("k", b"yours", prev_kv=True)], [Op.get("k")])
        self.assertTrue(swapped.succeeded)
        self.assertEqual(swapped.responses[0].prev_kv.value, b"mine")
        # ... a stale one fails and runs the failure branch.
        stale = yield client.txn([Compare.value("k", "==", b"mine")],
                                 [Op.delete("k")], [Op.get("k")])
        self.assertFalse(stale.succeeded)
        self.assertEqual(stale.responses[0].kvs[0].value, b"yours")
        self.assertEqual(stale.revision, swapped.revision)
        kv = stale.responses[0].kvs[0]
        guarded = yield client.txn(
            [Compare.mod_revision("k", "==", kv.mod_revision),
             Compare.create_revision("k", ">", 0)],
            [Op.delete("k", prev_kv=True)], [])
        self.assertTrue(guarded.succeeded)
        self.assertEqual(guarded.responses[0].deleted, 1)
        self.assertEqual((yield client.get("k")).count, 0)

    @inlineCallbacks
    def test_put_if_delete_if(self):
        """
        put_if / delete_if: a write that finds the key as last seen succeeds; one
        that does not is C{succeeded=False} with the current revision, not an error.
        """
        client = self.make_client()
        created = yield client.put_if("/cas/k", b"1", 0)
        self.assertEqual(created, wire.CasResult(True, created.revision))
        again = yield client.put_if("/cas/k", b"2", 0)
        self.assertEqual(again, wire.CasResult(False, created.revision))
        stale = yield client.put_if("/cas/k", b"2", created.revision - 1)
        self.assertFalse(stale.succeeded)
        swapped = yield client.put_if("/cas/k", b"2", created.revision)
        self.assertTrue(swapped.succeeded)
        self.assertEqual(swapped.revision, created.revision + 1)
        kv = (yield client.get("/cas/k")).kvs[0]
        self.assertEqual((kv.value, kv.mod_revision), (b"2", swapped.revision))
        # A guard on another key fences the write.
        guard = [Compare.version("/cas/owner", "!=", 0)]
        fenced = yield client.put_if("/cas/k", b"3", swapped.revision, guard=guard)
        self.assertEqual(fenced, wire.CasResult(False, swapped.revision))
        owner = yield client.put("/cas/owner", b"me")
        guarded = yield client.put_if("/cas/k", b"3", swapped.revision, guard=guard)
        self.assertEqual(guarded, wire.CasResult(True, owner.revision + 1))
        # delete_if.
        missed = yield client.delete_if("/cas/k", swapped.revision)
        self.assertEqual(missed, wire.CasResult(False, guarded.revision))
        gone = yield client.delete_if("/cas/k", guarded.revision)
        self.assertEqual(gone, wire.CasResult(True, guarded.revision + 1))
        self.assertEqual((yield client.get("/cas/k")).count, 0)
        absent = yield client.delete_if("/cas/k", guarded.revision)
        self.assertFalse(absent.succeeded)
        self.assertRaises(ValueError, client.delete_if, "/cas/k", 0)

    @inlineCallbacks
    def test_put_if_value(self):
        """
        put_if with L{wire.IfValue}: written only if the key holds exactly that
        value; absent or holding another, C{succeeded=False}.
        """
        client = self.make_client()
        absent = yield client.put_if("/cas/v", b"ours", wire.IfValue(b"{}"))
        self.assertFalse(absent.succeeded)
        yield client.put("/cas/v", b"theirs")
        other = yield client.put_if("/cas/v", b"ours", wire.IfValue(b"{}"))
        self.assertFalse(other.succeeded)
        empty = yield client.put("/cas/v", b"{}")
        written = yield client.put_if("/cas/v", b"ours", wire.IfValue(b"{}"),
                                      guard=[Compare.version("/cas/v", "!=", 0)])
        self.assertEqual(written, wire.CasResult(True, empty.revision + 1))
        self.assertEqual((yield client.get("/cas/v")).kvs[0].value, b"ours")

    @inlineCallbacks
    def test_value_compare_on_missing_key_fails(self):
        """
        A value compare on a key that does not exist fails, even against the empty
        value: etcd cannot tell an empty value from none (shim.test.fakeetcd does
        the same).
        """
        client = self.make_client()
        done = yield client.txn(compare=[Compare.value("/cas/none", "==", b"")],
                                success=[Op.put("/cas/other", b"x")])
        self.assertFalse(done.succeeded)
        done = yield client.txn(compare=[Compare.value("/cas/none", "!=", b"")],
                                success=[Op.put("/cas/other", b"x")])
        self.assertFalse(done.succeeded)
        self.assertEqual((yield client.get("/cas/other")).count, 0)

    @inlineCallbacks
    def test_lease(self):
        client = self.make_client()
        lease = yield client.lease_grant(30)
        self.assertEqual(lease.ttl, 30)
        yield client.put("leased", b"x", lease=lease.id)
        self.assertEqual((yield client.get("leased")).kvs[0].lease, lease.id)
        ttl = yield client.lease_keepalive(lease.id)
        self.assertEqual(ttl, 30)
        yield client.lease_revoke(lease.id)
        self.assertEqual((yield client.get("leased")).count, 0)
        yield self.assertFailure(client.lease_keepalive(lease.id), NotFound)
        yield self.assertFailure(client.lease_revoke(lease.id), NotFound)

    @inlineCallbacks
    def test_compact(self):
        client = self.make_client()
        first = yield client.put("c", b"1")
        second = yield client.put("c", b"2")
        yield client.compact(second.revision)
        error = yield self.assertFailure(client.get("c", revision=first.revision),
                                         Compacted)
        self.assertIn("compacted", str(error))
        self.assertEqual((yield client.get("c")).kvs[0].value, b"2")

    @inlineCallbacks
    def test_errors(self):
        client = self.make_client()
        future = yield self.assertFailure(client.get("k", revision=10 ** 6), EtcdError)
        self.assertEqual(future.code, 11)
        self.assertIn("future revision", str(future))
        self.assertIn(self.etcd.client_url, str(future))
        # Above etcd's --max-request-bytes (1.5 MiB) ...
        yield self.assertFailure(client.put("big", b"x" * (2 * 1024 * 1024)),
                                 RequestTooLarge)
        # ... and above the gateway's 4 MiB message limit.
        yield self.assertFailure(client.put("big", b"x" * (5 * 1024 * 1024)),
                                 RequestTooLarge)
        # The client still works afterwards.
        yield client.put("small", b"x")

    @inlineCallbacks
    def test_get_all_pinned_while_writing(self):
        """
        A paged read of 10,000 keys sees one revision while writes to the same
        prefix go on between the pages.
        """
        client = self.make_client()
        yield fill(client, "/big/", 10000)
        writing = [True]
        written = []

        @inlineCallbacks
        def writer():
            i = 0
            while writing[0]:
                # Change existing keys (across all pages) and add new ones.
                result = yield client.put("/big/%06d" % ((i * 997) % 10000), b"new")
                yield client.put("/big/new%06d" % (i,), b"added")
                written.append(result.revision)
                i += 1
        writer_done = writer()
        yield sleep(0)
        result = yield client.get_all("/big/", page_size=1000)
        writing[0] = False
        yield writer_done
        pinned = result.revision
        self.assertTrue(written and written[-1] > pinned)
        self.assertTrue(all(kv.mod_revision <= pinned for kv in result.kvs))
        at_pinned = yield client.get("/big/", prefix=True, revision=pinned, limit=1)
        self.assertEqual(len(result.kvs), at_pinned.count)
        self.assertEqual(result.count, at_pinned.count)
        keys = [kv.key for kv in result.kvs]
        self.assertEqual(keys, sorted(set(keys)))
        self.assertGreaterEqual(len(keys), 10000)
        # Reading again at that revision gives the same snapshot, also in slices.
        again = yield client.get_all("/big/", revision=pinned, page_size=3000)
        self.assertEqual(again, result)
        again = yield client.get_all("/big/", revision=pinned)
        self.assertEqual(again, result)

    @inlineCallbacks
    def test_get_all_small(self):
        client = self.make_client()
        self.assertEqual((yield client.get_all("/none/")).kvs, [])
        yield fill(client, "/s/", 5)
        yield client.put("/s0", b"outside")
        result = yield client.get_all("/s/", page_size=2)
        self.assertEqual([kv.key for kv in result.kvs],
                         ["/s/%06d" % i for i in range(5)])
        everything = yield client.get_all("", page_size=4)
        self.assertEqual(len(everything.kvs), 6)

    @inlineCallbacks
    def sliced_prefix(self, client, prefix, names):
        """
        Write each of C{names} under C{prefix}, and a key just past the prefix; the
        client's requests from then on are recorded (their bodies) in the list
        returned.
        """
        for n in names:
            yield client.put(prefix + n, n.encode("utf-8"))
        yield client.put(prefix[:-1] + "0", b"outside")
        calls = []
        real = client._call

        def counting(call, path, body, decode=None):
            calls.append(body)
            return real(call, path, body, decode)

        self.patch(client, "_call", counting)
        return calls

    @inlineCallbacks
    def test_get_all_in_slices(self):
        """
        A prefix of more than SLICE_AT keys is read in slices split on the character
        after the prefix: every key is read once, in key order, whatever it starts
        with (uuids, other letters, a bound itself, bytes past "f"), at one
        revision, also when a slice is empty; a smaller prefix is read whole.
        """
        from shim.etcd import client as client_module
        self.patch(client_module, "SLICE_AT", 20)
        self.patch(client_module, "PAGE_SIZE", 7)
        client = self.make_client()
        names = ["%032x" % (i * 0x9e3779b97f4a7c15 % (1 << 128)) for i in range(60)]
        names += ["1", "a", "f", "0", "A-upper", "z-last", "~tilde", "-dash", "é"]
        names = [n for n in names if not n.startswith("3")]
        yield client.put("/sk/x", b"outside")
        calls = yield self.sliced_prefix(client, "/sl/", names)
        pages = []
        result = yield client.get_all("/sl/", on_page=pages.append)
        keys = [kv.key for p in pages for kv in p]
        self.assertEqual(keys, sorted("/sl/" + n for n in names))
        self.assertEqual(result.count, len(names))
        self.assertTrue(all(kv.mod_revision <= result.revision for p in pages for kv in p))
        # Past the first page, each range ends at a slice's bound.
        ends = {b64decode(c["range_end"]) for c in calls[1:]}
        self.assertIn(b"/sl/f", ends)
        self.assertIn(b"/sl0", ends)
        self.assertTrue(all(int(c["revision"]) == result.revision for c in calls[1:]))
        whole = yield client.get_all("/sl/", page_size=1000)
        self.assertEqual(keys, [kv.key for kv in whole.kvs])
        # A read in the background, page after page, reads the same.
        paced = yield client.get_all("/sl/", revision=result.revision, pause=0.001)
        self.assertEqual(keys, [kv.key for kv in paced.kvs])
        calls[:] = []
        small = yield client.get_all("/sk/")
        self.assertEqual([kv.key for kv in small.kvs], ["/sk/x"])
        self.assertEqual(len(calls), 1)

    @inlineCallbacks
    def test_get_all_expected_in_finer_slices(self):
        """
        Told about how many keys there are (C{expect}), the read is split from its
        first page, which is not counted over the whole prefix; more keys make
        finer slices (two characters after the prefix).  Every key is read once,
        in key order, at one revision.
        """
        from shim.etcd import client as client_module
        self.patch(client_module, "SLICE_AT", 20)
        self.patch(client_module, "SLICE_KEYS", 2)
        self.patch(client_module, "PAGE_SIZE", 7)
        client = self.make_client()
        names = ["%032x" % (i * 0x9e3779b97f4a7c15 % (1 << 128)) for i in range(60)]
        names += ["0", "00", "01", "f", "ff", "fg", "z", "-dash", "\u00e9"]
        calls = yield self.sliced_prefix(client, "/fs/", names)
        pages = []
        result = yield client.get_all("/fs/", on_page=pages.append, expect=len(names))
        keys = [kv.key for p in pages for kv in p]
        self.assertEqual(keys, sorted("/fs/" + n for n in names))
        self.assertEqual(result.count, len(names))
        self.assertEqual(b64decode(calls[0]["range_end"]), b"/fs/01")
        self.assertTrue(all(int(c["revision"]) == result.revision for c in calls[1:]))
        ends = {b64decode(c["range_end"]) for c in calls}
        self.assertIn(b"/fs/ff", ends)
        self.assertIn(b"/fs0", ends)
        self.assertGreaterEqual(len(calls), 256)
        # Without C{expect}: the first page says how many, then the same slices.
        calls[:] = []
        unexpected = yield client.get_all("/fs/")
        self.assertEqual([kv.key for kv in unexpected.kvs], keys)
        self.assertEqual(b64decode(calls[0]["range_end"]), b"/fs0")
        # A small C{expect} reads as without it.
        calls[:] = []
        yield client.get_all("/fs/", expect=3)
        self.assertEqual(b64decode(calls[0]["range_end"]), b"/fs0")

    def test_slice_bounds(self):
        """
        One, two or three hex digits after the prefix, as many as make slices of
        about SLICE_KEYS keys; only the bounds past the key given.
        """
        from shim.etcd.client import SLICE_KEYS, slice_bounds
        one = slice_bounds(b"/p/", b"/p/", 10 * SLICE_KEYS)
        self.assertEqual(one, [b"/p/" + c.encode() for c in "123456789abcdef"])
        two = slice_bounds(b"/p/", b"/p/", 100 * SLICE_KEYS)
        self.assertEqual(len(two), 255)
        self.assertEqual(two[:2], [b"/p/01", b"/p/02"])
        self.assertEqual(two, sorted(two))
        self.assertEqual(len(slice_bounds(b"/p/", b"/p/", 10 ** 9)), 4095)
        self.assertEqual(slice_bounds(b"/p/", b"/p/fe\0", 100 * SLICE_KEYS),
                         [b"/p/ff"])

    @inlineCallbacks
    def test_get_all_on_page(self):
        """
        With on_page, each page is handed over in key order as it arrives; the result
        counts the keys and carries the pinned revision; an exception from on_page
        ends the read with it.
        """
        client = self.make_client()
        yield fill(client, "/p/", 7)
        pages = []
        result = yield client.get_all("/p/", page_size=3, on_page=pages.append)
        self.assertEqual([len(p) for p in pages], [3, 3, 1])
        self.assertEqual([kv.key for p in pages for kv in p],
                         ["/p/%06d" % i for i in range(7)])
        self.assertEqual((result.kvs, result.count), ([], 7))
        self.assertEqual(result.revision, max(kv.mod_revision for p in pages for kv in p))

        def refuse(page):
            raise ValueError("no, thanks")

        yield self.assertFailure(
            client.get_all("/p/", page_size=3, on_page=refuse), ValueError)

    @inlineCallbacks
    def test_failover(self):
        dead = refused_url(self)
        client = self.make_client([dead, self.etcd.client_url])
        status = yield client.status()
        self.assertEqual(status.version, "%d.%d.%d" % self.etcd.version)
        self.assertEqual(client.endpoint, self.etcd.client_url)
        yield client.put("k", b"v")
        self.assertEqual(client.endpoint, self.etcd.client_url)

    @inlineCallbacks
    def test_no_endpoint(self):
        dead = [refused_url(self) for _ in range(2)]
        client = self.make_client(dead)
        error = yield self.assertFailure(client.get("k"), ConnectionFailed)
        for endpoint in dead:
            self.assertIn(endpoint, str(error))

    @inlineCallbacks
    def test_timeout(self):
        client = self.make_client(timeout=0.5)
        yield client.put("k", b"v")
        self.etcd.pause()
        error = yield self.assertFailure(client.get("k"), Timeout)
        self.assertIn(self.etcd.client_url, str(error))
        self.etcd.resume()
        self.assertEqual((yield client.get("k")).kvs[0].value, b"v")

    @inlineCallbacks
    def test_bad_endpoint(self):
        self.assertRaises(ValueError, EtcdClient, endpoints=["127.0.0.1:2379"])
        self.assertRaises(ValueError, EtcdClient, endpoints=[])
        yield defer.succeed(None)


class AuthTests(EtcdServerMixin, TestCase):
    """Authentication against an etcd with auth enabled."""

    def setUp(self):
        d = defer.maybeDeferred(EtcdServerMixin.setUp, self)
        d.addCallback(lambda _: self.enable_auth())
        return d

    def enable_auth(self):
        call = self.etcd.call
        for path, body in [
                ("auth/user/add", {"name": "root", "password": "rootpw"}),
                ("auth/role/add", {"name": "root"}),
                ("auth/user/grant", {"user": "root", "role": "root"}),
                ("auth/user/add", {"name": "shim", "password": "s3cret"}),
                ("auth/role/add", {"name": "shimrole"}),
                ("auth/role/grant", {"name": "shimrole", "perm": {
                    "permType": "READWRITE", "key": b64("/"), "range_end": b64("0")}}),
                ("auth/user/grant", {"user": "shim", "role": "shimrole"}),
                ("auth/enable", {})]:
            answer = call(path, body)
            self.assertNotIn("error", answer, (path, answer))

    @inlineCallbacks
    def test_authenticated_calls(self):
        client = self.make_client(username="shim", password="s3cret")
        yield client.put("/a", b"1")
        self.assertEqual((yield client.get("/a")).kvs[0].value, b"1")
        events = []
        watch = client.watch("/", None, events.append)
        yield watch.started
        yield client.put("/b", b"2")
        while not events:
            yield sleep(0.05)
        self.assertEqual(events[0].key, "/b")
        yield watch.stop()
        # Outside the role's range: permission denied.
        yield self.assertFailure(client.put("x", b"1"), AuthFailed)

    @inlineCallbacks
    def test_no_credentials(self):
        client = self.make_client()
        error = yield self.assertFailure(client.get("/a"), AuthFailed)
        self.assertIn("get", str(error))

    @inlineCallbacks
    def test_wrong_password(self):
        client = self.make_client(username="shim", password="wrong")
        error = yield self.assertFailure(client.get("/a"), AuthFailed)
        self.assertIn("authenticate", str(error))

    @inlineCallbacks
    def test_watch_with_dead_token(self):
        """
        A restart of etcd kills every simple token.  A watch opened with the dead
        token is confirmed and cancelled at once: it ends with "auth" before any
        event, the client drops the token, and the next watch authenticates again
        and works.
        """
        client = self.make_client(username="shim", password="s3cret")
        yield client.put("/a", b"1")
        dead = client._token
        self.assertTrue(dead)
        self.etcd.restart()
        watch = client.watch("/", None, lambda event: None)
        yield watch.started
        ended = yield watch.done
        self.assertEqual(ended.reason, "auth")
        self.assertIsInstance(ended.error, AuthFailed)
        # etcd 3.4 says "invalid auth token", 3.5 "permission denied".
        self.assertIn("cancelled by etcd for authentication or permission",
                      str(ended.error))
        self.assertEqual(watch.events_seen, 0)
        self.assertIsNone(client._token)
        events = []
        watch = client.watch("/", None, events.append)
        yield watch.started
        put = yield client.put("/b", b"2")
        while not events:
            yield sleep(0.05)
        self.assertEqual([(e.key, e.mod_revision) for e in events], [("/b", put.revision)])
        self.assertNotEqual(client._token, dead)
        yield watch.stop()

    @inlineCallbacks
    def test_watch_permission_denied(self):
        """A watch outside the user's role ends with "auth", not "cancelled"."""
        client = self.make_client(username="shim", password="s3cret")
        watch = client.watch("x", None, lambda event: None)
        ended = yield watch.done
        self.assertEqual(ended.reason, "auth")
        self.assertIn("permission denied", str(ended.error))
        self.assertEqual(watch.events_seen, 0)

    @inlineCallbacks
    def test_reauthenticate(self):
        """A token etcd rejects is replaced once, and the call retried."""
        client = self.make_client(username="shim", password="s3cret")
        yield client.put("/a", b"1")
        good = client._token
        client._token = b"stale.token.123"
        self.assertEqual((yield client.get("/a")).kvs[0].value, b"1")
        self.assertNotEqual(client._token, b"stale.token.123")
        self.assertTrue(client._token)
        self.assertIsNotNone(good)


class PrefixProbeTests(TestCase):
    """
    The gateway prefix falls back to /v3beta, against a fake gateway that only
    knows /v3beta (the etcd versions we test with all answer on /v3).
    """

    @inlineCallbacks
    def test_v3beta(self):
        from twisted.internet import reactor
        from twisted.web import resource, server

        seen = []

        class Gateway(resource.Resource):
            isLeaf = True

            def render_POST(self, request):
                seen.append(request.path)
                if not request.path.startswith(b"/v3beta/"):
                    request.setResponseCode(404)
                    return b"404 page not found\n"
                return (b'{"header":{"cluster_id":"42","revision":"7"},'
                        b'"version":"3.2.0"}')

        port = reactor.listenTCP(0, server.Site(Gateway()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = EtcdClient(["http://127.0.0.1:%d" % (port.getHost().port,)])
        self.addCleanup(client.close)
        status = yield client.status()
        self.assertEqual((status.version, status.revision, client.cluster_id),
                         ("3.2.0", 7, "42"))
        yield client.status()
        self.assertEqual(seen, [b"/v3/maintenance/status", b"/v3beta/maintenance/status",
                                b"/v3beta/maintenance/status",
                                b"/v3beta/maintenance/status"])


class EndpointTests(SynchronousTestCase):
    """Choosing the endpoint calls go to."""

    def test_skip_endpoint(self):
        client = EtcdClient(["http://127.0.0.1:1", "http://127.0.0.1:2"])
        self.assertEqual(client.endpoint, "http://127.0.0.1:1")
        client.skip_endpoint("http://127.0.0.1:2")  # not the current one: no change
        self.assertEqual(client.endpoint, "http://127.0.0.1:1")
        client.skip_endpoint("http://127.0.0.1:1")
        self.assertEqual(client.endpoint, "http://127.0.0.1:2")
        client.skip_endpoint("http://127.0.0.1:2")
        self.assertEqual(client.endpoint, "http://127.0.0.1:1")
        self.successResultOf(client.close())

    def test_single_endpoint(self):
        client = EtcdClient(["http://127.0.0.1:1"])
        client.skip_endpoint("http://127.0.0.1:1")
        self.assertEqual(client.endpoint, "http://127.0.0.1:1")
        self.successResultOf(client.close())

