"""
The batcher of result writes (L{shim.results.Batcher}) against a real etcd: a lone
write is sent at once and alone; writes asked meanwhile go together, in transactions
within etcd's limits (L{TXN_OPS} operations, L{TXN_BYTES} bytes), one write per key
each; each write hears its own outcome, a stale one failing alone; the fence applies
to every write; an etcd error fails the writes it concerned, and the batcher goes on.

The clients are the real ones, subclassed only to note what the batcher asks of them.
"""

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from shim.etcd import (
    CasResult, Compare, ConnectionFailed, EtcdClient, EtcdError, EtcdV2Client, IfValue)
from shim.etcd.wire import unb64
from shim.results import TXN_BYTES, TXN_OPS, Batcher
from shim.test.etcdserver import EtcdServerMixin

PREFIX = "/controller/net-l3vpn/ports/"
ELECTION = "/shim/election/leader"


def key(i):
    return "%sport-%04d" % (PREFIX, i)


def value(i):
    return ('{"controller": "SimServer", "port": %d}' % (i,)).encode()


def _written_key(op):
    """The key a transaction's put or delete operation writes, as str."""
    request = op.get("request_put") or op.get("request_delete_range")
    return unb64(request["key"]).decode()


class Sent(object):
    """
    One transaction the batcher sent: its outer compares, the keys it writes in
    order, how many operations etcd counts in it, and the bytes of its keys and
    values.
    """

    def __init__(self, compare, success):
        self.compare = list(compare)
        self.nested = any("request_txn" in op for op in success)
        self.keys = []
        self.ops = len(self.compare)
        self.bytes = 0
        for op in success:
            inner = op["request_txn"] if "request_txn" in op else {
                "compare": [], "success": [op], "failure": []}
            self.ops += len(inner["compare"]) + len(inner["success"]) + len(
                inner["failure"])
            for write in inner["success"]:
                request = write.get("request_put") or write.get("request_delete_range")
                self.keys.append(_written_key(write))
                self.bytes += len(unb64(request["key"])) + len(
                    unb64(request.get("value")))


class CountingClient(EtcdClient):
    """
    A real v3 client that notes each transaction (L{Sent}) and each single
    compare-and-set (C{(call, key)}) the batcher asks for.
    """

    def __init__(self, *args, **kwargs):
        EtcdClient.__init__(self, *args, **kwargs)
        self.txns = []
        self.singles = []

    def txn(self, compare=(), success=(), failure=()):
        self.txns.append(Sent(compare, success))
        return EtcdClient.txn(self, compare, success, failure)

    def put_if(self, key, value, mod_revision, guard=()):
        self.singles.append(("put_if", key))
        return EtcdClient.put_if(self, key, value, mod_revision, guard)

    def delete_if(self, key, mod_revision, guard=()):
        self.singles.append(("delete_if", key))
        return EtcdClient.delete_if(self, key, mod_revision, guard)


class FlatClient(CountingClient):
    """
    A client that refuses nested transactions (as the batcher's docstring allows):
    the batcher falls back to one compare per write in the transaction itself.
    """

    refused = 0

    def txn(self, compare=(), success=(), failure=()):
        if any("request_txn" in op for op in success):
            self.refused += 1
            raise ValueError("this client does not send nested transactions")
        return CountingClient.txn(self, compare, success, failure)


class CountingV2Client(EtcdV2Client):
    """A real v2 client noting the same as L{CountingClient}."""

    def __init__(self, *args, **kwargs):
        EtcdV2Client.__init__(self, *args, **kwargs)
        self.txn_attempts = 0
        self.singles = []
        self.values = []

    def txn(self, compare=(), success=(), failure=()):
        self.txn_attempts += 1
        return EtcdV2Client.txn(self, compare, success, failure)

    def put_if(self, key, value, mod_revision, guard=()):
        self.singles.append(("put_if", key))
        self.values.append(value)
        return EtcdV2Client.put_if(self, key, value, mod_revision, guard)


class BatcherCase(EtcdServerMixin, TestCase):
    client_class = CountingClient

    def setUp(self):
        result = super(BatcherCase, self).setUp()
        self.client = self.make_counting_client()
        self.batcher = Batcher(self.client)
        return result

    def make_counting_client(self, client_class=None, **kwargs):
        # As EtcdServerMixin.make_client, with a subclass of the real client.
        client = (client_class or self.client_class)(
            endpoints=[self.etcd.client_url], **kwargs)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def create(self, count, start=0):
        """
        Put keys C{start} .. C{start + count - 1} directly, not through the batcher;
        fires with their mod revisions (a list, index i - start) and forgets the
        calls.
        """
        revisions = []
        for i in range(start, start + count):
            put = yield self.client.put(key(i), b"{}")
            revisions.append(put.revision)
        del self.client.singles[:], self.client.txns[:]
        return revisions

    @inlineCallbacks
    def read(self, k):
        """The key's C{(value, mod_revision)} in etcd, C{(None, 0)} when absent."""
        found = yield self.client.get(k)
        if not found.kvs:
            return (None, 0)
        return (found.kvs[0].value, found.kvs[0].mod_revision)

    @inlineCallbacks
    def assert_written(self, keys, outcomes):
        """
        Each of C{keys} holds its L{value} at the revision its outcome reported.
        """
        for i, outcome in zip(keys, outcomes):
            self.assertEqual(outcome.succeeded, True, key(i))
            held = yield self.read(key(i))
            self.assertEqual(held, (value(i), outcome.revision), key(i))

    def assert_within_limits(self):
        for sent in self.client.txns:
            self.assertLessEqual(sent.ops, TXN_OPS)
            self.assertLessEqual(sent.bytes, TXN_BYTES)
            self.assertEqual(len(sent.keys), len(set(sent.keys)), sent.keys)


class LoneWriteTests(BatcherCase):
    """A write asked while nothing is in flight goes at once, alone."""

    @inlineCallbacks
    def test_put_sent_at_once(self):
        """
        The client is asked before C{put_if} returns: nothing waits for a later turn.
        """
        d = self.batcher.put_if(key(1), value(1), 0)
        self.assertEqual(self.client.singles, [("put_if", key(1))])
        outcome = yield d
        self.assertEqual(self.client.txns, [])
        self.assertIsInstance(outcome, CasResult)
        yield self.assert_written([1], [outcome])

    @inlineCallbacks
    def test_put_over_revision(self):
        """
        A put over the key's current revision succeeds; the same put again (its
        revision now stale) fails, reporting etcd's current revision, and writes
        nothing.
        """
        [revision] = yield self.create(1, start=1)
        done = yield self.batcher.put_if(key(1), value(1), revision)
        self.assertTrue(done.succeeded)
        self.assertGreater(done.revision, revision)
        yield self.assert_written([1], [done])
        stale = yield self.batcher.put_if(key(1), b"late", revision)
        self.assertEqual(stale, CasResult(False, done.revision))
        self.assertEqual((yield self.read(key(1))), (value(1), done.revision))

    @inlineCallbacks
    def test_create_over_existing(self):
        """A create (revision 0) over an existing key fails."""
        [revision] = yield self.create(1, start=1)
        outcome = yield self.batcher.put_if(key(1), value(1), 0)
        self.assertEqual(outcome, CasResult(False, revision))
        self.assertEqual((yield self.read(key(1))), (b"{}", revision))

    @inlineCallbacks
    def test_delete(self):
        """
        A delete at the key's revision removes it, at a revision of its own; a stale
        one fails and leaves the key be.
        """
        revisions = yield self.create(2, start=1)
        d = self.batcher.delete_if(key(1), revisions[0])
        self.assertEqual(self.client.singles, [("delete_if", key(1))])
        done = yield d
        self.assertEqual(done, CasResult(True, revisions[1] + 1))
        self.assertEqual((yield self.read(key(1))), (None, 0))
        stale = yield self.batcher.delete_if(key(2), revisions[0])
        self.assertEqual(stale, CasResult(False, done.revision))
        self.assertEqual((yield self.read(key(2))), (b"{}", revisions[1]))

    @inlineCallbacks
    def test_alone_again_after_a_batch(self):
        """
        A batch counts as in flight until its writes' callbacks have run: a write
        asked from one of them waits, and goes as soon as they are done, with no
        answer from etcd awaited.  Once that one is answered the batcher is idle:
        the next write goes alone, at once.
        """
        outcomes = yield gatherResults([self.batcher.put_if(key(i), value(i), 0)
                                        for i in range(5)])
        self.assertEqual(len(self.client.txns), 1)
        from_callback = self.batcher.put_if(key(8), value(8), 0)
        self.assertEqual(self.client.singles, [("put_if", key(0))])
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.client.singles[-1], ("put_if", key(8)))
        outcomes.append((yield from_callback))
        d = self.batcher.put_if(key(9), value(9), 0)
        self.assertEqual(self.client.singles[-1], ("put_if", key(9)))
        outcomes.append((yield d))
        self.assertEqual(len(self.client.txns), 1)
        yield self.assert_written([0, 1, 2, 3, 4, 8, 9], outcomes)


class BatchTests(BatcherCase):
    """Writes asked while one is in flight go together, within etcd's limits."""

    @inlineCallbacks
    def test_burst(self):
        """
        Of 200 writes asked in one turn the first goes alone; the 199 others wait
        for it, then go in transactions of as many writes as L{TXN_OPS} allows (a
        compare and a put each), one after the other; every key is written once.
        """
        count = 200
        ds = [self.batcher.put_if(key(i), value(i), 0) for i in range(count)]
        self.assertEqual(self.client.singles, [("put_if", key(0))])
        self.assertEqual(self.client.txns, [])
        outcomes = yield gatherResults(ds)
        room = TXN_OPS // 2
        self.assertEqual([len(sent.keys) for sent in self.client.txns],
                         [room, room, room, count - 1 - 3 * room])
        self.assert_within_limits()
        self.assertEqual(self.client.singles, [("put_if", key(0))])
        sent_keys = [k for sent in self.client.txns for k in sent.keys]
        self.assertEqual(sent_keys, [key(i) for i in range(1, count)])
        yield self.assert_written(range(count), outcomes)
        # One transaction, one revision: the writes sent together share theirs.
        first = self.client.txns[0]
        self.assertEqual(len({outcomes[i].revision
                              for i in range(1, 1 + len(first.keys))}), 1)
        every = yield self.client.get(PREFIX, prefix=True)
        self.assertEqual(every.count, count)

    @inlineCallbacks
    def test_fence_counts_against_the_limit(self):
        """
        The fence's compares are in each transaction once, and count: with two of
        them a transaction holds (L{TXN_OPS} - 2) // 2 writes.
        """
        election = yield self.client.put(ELECTION, b"me")
        fence = (Compare.create_revision(ELECTION, "==", election.revision),
                 Compare.version(ELECTION, ">", 0))
        count = 150
        ds = [self.batcher.put_if(key(i), value(i), 0, guard=fence)
              for i in range(count)]
        outcomes = yield gatherResults(ds)
        room = (TXN_OPS - 2) // 2
        self.assertEqual([len(sent.keys) for sent in self.client.txns],
                         [room, room, count - 1 - 2 * room])
        self.assertEqual([sent.compare for sent in self.client.txns],
                         [list(fence)] * 3)
        self.assertEqual(max(sent.ops for sent in self.client.txns), TXN_OPS)
        self.assert_within_limits()
        yield self.assert_written(range(count), outcomes)

    @inlineCallbacks
    def test_bytes_limit(self):
        """
        Large values: a transaction holds what fits in L{TXN_BYTES}, and etcd takes
        it.
        """
        size = TXN_BYTES // 3 - 1000
        big = {i: (b"%d" % (i,)) * size for i in range(1, 10)}
        ds = [self.batcher.put_if(key(0), value(0), 0)]
        ds += [self.batcher.put_if(key(i), big[i], 0) for i in range(1, 8)]
        outcomes = yield gatherResults(ds)
        self.assertTrue(all(outcome.succeeded for outcome in outcomes))
        self.assertEqual([len(sent.keys) for sent in self.client.txns], [3, 3])
        self.assertEqual(self.client.singles, [("put_if", key(0)), ("put_if", key(7))])
        self.assert_within_limits()
        for i in range(1, 8):
            self.assertEqual((yield self.read(key(i))), (big[i], outcomes[i].revision))

    @inlineCallbacks
    def test_one_write_per_key(self):
        """
        Two writes of one key never share a transaction: the later waits for the
        next one, and sees what the earlier did (here: the key exists now).
        """
        ds = [self.batcher.put_if(key(0), value(0), 0),
              self.batcher.put_if(key(1), value(1), 0),
              self.batcher.put_if(key(2), value(2), 0),
              self.batcher.put_if(key(1), b"second", 0),
              self.batcher.put_if(key(3), value(3), 0)]
        outcomes = yield gatherResults(ds)
        self.assertEqual([sent.keys for sent in self.client.txns],
                         [[key(1), key(2), key(3)]])
        # Alone, as a batch of one: the first write, then the passed-over one.
        self.assertEqual(self.client.singles, [("put_if", key(0)), ("put_if", key(1))])
        yield self.assert_written([0, 1, 2], outcomes[:3])
        self.assertEqual(outcomes[3], CasResult(False, outcomes[3].revision))
        self.assertGreaterEqual(outcomes[3].revision, outcomes[1].revision)
        yield self.assert_written([3], outcomes[4:])
        self.assertEqual((yield self.read(key(1))), (value(1), outcomes[1].revision))

    @inlineCallbacks
    def test_one_fence_per_transaction(self):
        """
        Writes under different fences go in different transactions, each with its
        own fence; the writes passed over keep their order.
        """
        one = yield self.client.put(ELECTION, b"me")
        two = yield self.client.put(ELECTION + "2", b"me")
        fences = [(Compare.create_revision(ELECTION, "==", one.revision),),
                  (Compare.create_revision(ELECTION + "2", "==", two.revision),)]
        del self.client.singles[:], self.client.txns[:]
        ds = [self.batcher.put_if(key(i), value(i), 0, guard=fences[i % 2])
              for i in range(9)]
        outcomes = yield gatherResults(ds)
        self.assertEqual([(sent.compare, sent.keys) for sent in self.client.txns], [
            (list(fences[1]), [key(1), key(3), key(5), key(7)]),
            (list(fences[0]), [key(2), key(4), key(6), key(8)]),
        ])
        yield self.assert_written(range(9), outcomes)

    @inlineCallbacks
    def test_puts_and_deletes(self):
        """Deletes go in the same transactions as puts."""
        revisions = yield self.create(10)
        ds = []
        for i in range(10):
            if i % 2:
                ds.append(self.batcher.delete_if(key(i), revisions[i]))
            else:
                ds.append(self.batcher.put_if(key(i), value(i), revisions[i]))
        outcomes = yield gatherResults(ds)
        self.assertEqual([sent.keys for sent in self.client.txns],
                         [[key(i) for i in range(1, 10)]])
        self.assertTrue(all(outcome.succeeded for outcome in outcomes))
        yield self.assert_written(range(0, 10, 2), outcomes[0::2])
        for i in range(1, 10, 2):
            self.assertEqual((yield self.read(key(i))), (None, 0))
        self.assertEqual({outcome.revision for outcome in outcomes[1:]},
                         {outcomes[2].revision})


class OutcomeTests(BatcherCase):
    """Each write in a transaction hears its own outcome."""

    @inlineCallbacks
    def burst_with_one_stale(self):
        """
        Writes over keys 0..9 at their revisions, but key 5's stale; fires with the
        outcomes and the revisions the keys had.
        """
        revisions = yield self.create(10)
        ds = [self.batcher.put_if(key(i), value(i),
                                  revisions[i] - 1 if i == 5 else revisions[i])
              for i in range(10)]
        outcomes = yield gatherResults(ds)
        return outcomes, revisions

    @inlineCallbacks
    def check_one_stale(self, outcomes, revisions):
        self.assertFalse(outcomes[5].succeeded)
        self.assertGreaterEqual(outcomes[5].revision, revisions[-1])
        self.assertEqual((yield self.read(key(5))), (b"{}", revisions[5]))
        others = [i for i in range(10) if i != 5]
        yield self.assert_written(others, [outcomes[i] for i in others])

    @inlineCallbacks
    def test_stale_write_fails_alone(self):
        """
        With nested transactions (etcd 3.3 and later) the stale write fails within
        the transaction and the others succeed in it: nothing is sent again.
        """
        outcomes, revisions = yield self.burst_with_one_stale()
        yield self.check_one_stale(outcomes, revisions)
        self.assertEqual([sent.keys for sent in self.client.txns],
                         [[key(i) for i in range(1, 10)]])
        self.assertTrue(self.client.txns[0].nested)
        self.assertEqual(self.client.singles, [("put_if", key(0))])
        # A failed write reports etcd's revision after the transaction.
        self.assertEqual(outcomes[5].revision, outcomes[4].revision)

    @inlineCallbacks
    def test_writes_over_empty(self):
        """
        Writes expecting an empty key (L{IfValue}) batch like the others; each
        succeeds where its key holds C{{}} and fails alone where it does not.
        """
        yield self.create(10)
        yield self.client.put(key(5), b"theirs")
        yield self.client.delete(key(7))
        del self.client.singles[:], self.client.txns[:]
        outcomes = yield gatherResults([
            self.batcher.put_if(key(i), value(i), IfValue(b"{}")) for i in range(10)])
        self.assertEqual([o.succeeded for o in outcomes],
                         [i not in (5, 7) for i in range(10)])
        self.assertEqual((yield self.read(key(5)))[0], b"theirs")
        self.assertEqual((yield self.read(key(7))), (None, 0))
        others = [i for i in range(10) if i not in (5, 7)]
        yield self.assert_written(others, [outcomes[i] for i in others])
        self.assertEqual(len(self.client.txns), 1)

    @inlineCallbacks
    def test_stale_write_without_nesting(self):
        """
        Without nested transactions one stale compare fails the whole transaction;
        each of its writes is then tried alone and hears its own outcome.  The
        batcher remembers: the next transaction is flat at once.
        """
        self.client = self.make_counting_client(FlatClient)
        self.batcher = Batcher(self.client)
        outcomes, revisions = yield self.burst_with_one_stale()
        yield self.check_one_stale(outcomes, revisions)
        self.assertEqual(self.client.refused, 1)
        self.assertEqual([(sent.nested, sent.keys) for sent in self.client.txns],
                         [(False, [key(i) for i in range(1, 10)])])
        self.assertEqual(self.client.singles,
                         [("put_if", key(i)) for i in range(10)])
        # Fresh writes succeed in one flat transaction, each at its revision.
        del self.client.singles[:], self.client.txns[:]
        ds = [self.batcher.put_if(key(i), value(i), 0) for i in range(20, 30)]
        outcomes = yield gatherResults(ds)
        self.assertEqual(self.client.refused, 1)
        self.assertEqual([(sent.nested, len(sent.keys)) for sent in self.client.txns],
                         [(False, 9)])
        self.assertEqual(self.client.singles, [("put_if", key(20))])
        self.assert_within_limits()
        yield self.assert_written(range(20, 30), outcomes)

    @inlineCallbacks
    def test_stale_delete_in_batch(self):
        """A stale delete fails alone too; the other deletes happen."""
        revisions = yield self.create(5)
        ds = [self.batcher.delete_if(key(i),
                                     revisions[i] - 1 if i == 3 else revisions[i])
              for i in range(5)]
        outcomes = yield gatherResults(ds)
        self.assertEqual([outcome.succeeded for outcome in outcomes],
                         [True, True, True, False, True])
        self.assertEqual(len(self.client.txns), 1)
        every = yield self.client.get(PREFIX, prefix=True)
        self.assertEqual([(kv.key, kv.mod_revision) for kv in every.kvs],
                         [(key(3), revisions[3])])


    @inlineCallbacks
    def test_delete_at_revision_zero(self):
        """
        A delete must name the key's revision: asked with 0 it fails the same way
        whether it goes alone (the client's ValueError) or in a batch.
        """
        alone = self.batcher.delete_if(key(0), 0)
        yield self.assertFailure(alone, ValueError)
        ds = [self.batcher.put_if(key(1), value(1), 0),
              self.batcher.put_if(key(2), value(2), 0),
              self.batcher.delete_if(key(3), 0)]
        yield gatherResults(ds[:2])
        # The delete never joins a transaction: it fails alone, at once.
        self.assertEqual(self.client.txns, [])
        yield self.assertFailure(ds[2], ValueError)



class FenceTests(BatcherCase):
    """The fence (C{guard}) goes with every write, alone or together."""

    @inlineCallbacks
    def fence(self):
        election = yield self.client.put(ELECTION, b"me")
        del self.client.singles[:], self.client.txns[:]
        return [Compare.create_revision(ELECTION, "==", election.revision)]

    @inlineCallbacks
    def test_fence_holds(self):
        fence = yield self.fence()
        outcomes = yield gatherResults([
            self.batcher.put_if(key(i), value(i), 0, guard=fence) for i in range(10)])
        self.assertEqual([sent.compare for sent in self.client.txns], [fence])
        yield self.assert_written(range(10), outcomes)

    @inlineCallbacks
    def test_fence_fails(self):
        """
        Once the election key is gone, no write happens, alone or together: each
        fails (after the batch, tried alone, under the fence again).
        """
        fence = yield self.fence()
        revisions = yield self.create(3, start=20)
        yield self.client.delete(ELECTION)
        del self.client.singles[:], self.client.txns[:]
        ds = [self.batcher.put_if(key(i), value(i), 0, guard=fence) for i in range(10)]
        ds += [self.batcher.delete_if(key(20 + i), revisions[i], guard=fence)
               for i in range(3)]
        outcomes = yield gatherResults(ds)
        self.assertEqual([outcome.succeeded for outcome in outcomes], [False] * 13)
        self.assertEqual([sent.compare for sent in self.client.txns], [fence])
        self.assertEqual(len(self.client.singles), 13)
        every = yield self.client.get(PREFIX, prefix=True)
        self.assertEqual([(kv.key, kv.mod_revision) for kv in every.kvs],
                         [(key(20 + i), revisions[i]) for i in range(3)])

    @inlineCallbacks
    def test_fence_fails_without_nesting(self):
        fence = yield self.fence()
        self.client = self.make_counting_client(FlatClient)
        self.batcher = Batcher(self.client)
        yield self.client.delete(ELECTION)
        outcomes = yield gatherResults([
            self.batcher.put_if(key(i), value(i), 0, guard=fence) for i in range(10)])
        self.assertEqual([outcome.succeeded for outcome in outcomes], [False] * 10)
        self.assertEqual((yield self.client.get(PREFIX, prefix=True)).count, 0)


class ErrorTests(BatcherCase):
    """An etcd error fails the writes it concerned; the batcher goes on after it."""

    @inlineCallbacks
    def test_etcd_stopped(self):
        """
        With etcd stopped, the lone write and the batched ones fail with the
        connection error (a batch whole, not tried again alone); with etcd back,
        writes go through again, batched.
        """
        yield self.client.status()
        self.etcd.stop()
        ds = [self.batcher.put_if(key(i), value(i), 0) for i in range(100)]
        for d in ds:
            yield self.assertFailure(d, ConnectionFailed)
        self.assertEqual(self.client.singles, [("put_if", key(0))])
        self.assertEqual([len(sent.keys) for sent in self.client.txns],
                         [TXN_OPS // 2, 99 - TXN_OPS // 2])
        self.etcd.restart()
        del self.client.singles[:], self.client.txns[:]
        outcomes = yield gatherResults([
            self.batcher.put_if(key(i), value(i), 0) for i in range(10)])
        self.assertEqual(len(self.client.txns), 1)
        yield self.assert_written(range(10), outcomes)



class AnsweredErrorTests(BatcherCase):
    """An error etcd answers fails the batch it answered."""

    etcd_args = {"extra_args": ["--max-request-bytes=%d" % (TXN_BYTES // 4,)]}

    @inlineCallbacks
    def test_request_too_large(self):
        """
        A transaction over etcd's request limit (here lowered) fails its writes with
        etcd's error; the next batch is sent as usual.
        """
        size = TXN_BYTES // 10
        first = self.batcher.put_if(key(0), value(0), 0)
        too_big = [self.batcher.put_if(key(i), b"x" * size, 0) for i in range(1, 6)]
        yield first
        for d in too_big:
            yield self.assertFailure(d, EtcdError)
        small = yield gatherResults([
            self.batcher.put_if(key(i), value(i), 0) for i in range(10, 15)])
        yield self.assert_written(range(10, 15), small)
        self.assertEqual((yield self.client.get(PREFIX, prefix=True)).count, 6)


class V2Tests(BatcherCase):
    """Over etcd's v2 API every write is its own request."""

    etcd_args = {"extra_args": ["--enable-v2=true"]}
    client_class = CountingV2Client

    @inlineCallbacks
    def test_each_alone(self):
        revisions = []
        for i in range(3):
            put = yield self.client.put(key(i), b"{}")
            revisions.append(put.revision)
        ds = [self.batcher.put_if(key(i), value(i),
                                  revisions[i] - 1 if i == 1 else revisions[i])
              for i in range(3)]
        ds += [self.batcher.put_if(key(i), value(i), 0) for i in range(3, 20)]
        outcomes = yield gatherResults(ds)
        self.assertLessEqual(self.client.txn_attempts, 1)
        self.assertEqual(sorted(self.client.singles),
                         [("put_if", key(i)) for i in range(20)])
        self.assertEqual([outcome.succeeded for outcome in outcomes],
                         [i != 1 for i in range(20)])
        for i in range(20):
            found = yield self.client.get(key(i))
            kv = found.kvs[0]
            if i == 1:
                self.assertEqual((kv.value, kv.mod_revision), (b"{}", revisions[1]))
            else:
                self.assertEqual((kv.value, kv.mod_revision),
                                 (value(i), outcomes[i].revision))


class OrderTests(BatcherCase):
    """
    Writes of one key go out in the order asked: the later waits for the earlier,
    which it may depend on (both compare against the key's revision).
    """

    @inlineCallbacks
    def test_same_key_across_fences(self):
        """
        A write passed over for its fence still holds back later writes of its key:
        of two creations of one key, asked under two fences that both hold, the
        first asked is the one that happens.
        """
        election = yield self.client.put(ELECTION, b"me")
        one = (Compare.version(ELECTION, ">", 0),)
        two = (Compare.create_revision(ELECTION, "==", election.revision),)
        ds = [self.batcher.put_if(key(0), value(0), 0, guard=one),
              self.batcher.put_if(key(2), value(2), 0, guard=one),
              self.batcher.put_if(key(1), b"first", 0, guard=two),
              self.batcher.put_if(key(1), b"second", 0, guard=one)]
        outcomes = yield gatherResults(ds)
        self.assertEqual([outcome.succeeded for outcome in outcomes],
                         [True, True, True, False])
        self.assertEqual((yield self.read(key(1))), (b"first", outcomes[2].revision))



class V2OrderTests(BatcherCase):
    """Over v2 too, writes of one key go out in the order asked."""

    etcd_args = {"extra_args": ["--enable-v2=true"]}
    client_class = CountingV2Client

    @inlineCallbacks
    def test_same_key_after_finding_no_txn(self):
        """
        The batcher finds out that v2 has no transactions with writes still queued;
        a write asked then must not overtake an older queued write of its key.
        """
        ds = [self.batcher.put_if(key(0), value(0), 0),
              self.batcher.put_if(key(1), value(1), 0),
              self.batcher.put_if(key(2), value(2), 0),
              self.batcher.put_if(key(1), b"second", 0)]
        outcomes = [(yield ds.pop(0))]
        # ds[1] and ds[2] were just sent alone; ds[3] waits for them.
        ds.append(self.batcher.put_if(key(1), b"third", 0))
        outcomes += (yield gatherResults(ds))
        self.assertEqual([outcome.succeeded for outcome in outcomes],
                         [True, True, True, False, False])
        sent = [v for (_, k), v in zip(self.client.singles, self.client.values)
                if k == key(1)]
        self.assertEqual(sent, [value(1), b"second", b"third"])

