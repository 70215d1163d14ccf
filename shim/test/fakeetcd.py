"""
An in-memory stand-in for the few L{shim.etcd.EtcdClient} calls that the bind-result
writer (L{shim.results.ResultWriter}) and a follower's snapshot
(L{shim.follower.Follower}) make: C{status}, C{get}, C{get_all}, C{put}, C{delete},
C{put_if}, C{delete_if} and C{txn} with C{mod_revision}, C{version}, C{create_revision}
and C{value} comparisons.  It has no watch: a test feeds changes to the follower
itself.

This is pure logic for property tests of the service's decisions; anything that claims
to work with etcd itself is tested against a real etcd (L{shim.test.etcdserver}).

Two knobs let a test shake the writer:
  - C{fail}: a callable C{(method, key)} returning an exception to fail that call with
    (before it changes anything), or C{None} to let it through;
  - C{hold}: when true, every call answers with an unfired Deferred and takes effect
    only when the test releases it (L{FakeEtcd.release}), in whatever order the test
    chooses, as concurrent requests reach etcd in no guaranteed order.
"""

from twisted.internet.defer import Deferred, fail, succeed

from shim.etcd import (
    CasResult, DeleteResult, KeyValue, PutResult, RangeResult, Status, TxnResult)
from shim.etcd.wire import IfValue, key_bytes, key_str, prefix_end, unb64, value_bytes

_COMPARISONS = {
    "EQUAL": lambda a, b: a == b,
    "NOT_EQUAL": lambda a, b: a != b,
    "GREATER": lambda a, b: a > b,
    "LESS": lambda a, b: a < b,
}

_TARGETS = {
    "MOD": ("mod_revision", int),
    "VERSION": ("version", int),
    "CREATE": ("create_revision", int),
    "VALUE": ("value", unb64),
}


class FakeEtcd:
    """
    A flat key space with revisions, answering like L{shim.etcd.EtcdClient}.

    @ivar data: key (str) to L{KeyValue}.
    @ivar revision: the store revision.
    @ivar held: the calls waiting for L{release} in C{hold} mode, as C{(description,
        Deferred, thunk)}.
    @ivar calls: every call made, as C{(method, key)}.
    """

    cluster_id = "fake"

    def __init__(self, fail=None, hold=False, history=False):
        self.data = {}
        #: With C{history}, revision to the key space as it was then, so that
        #: C{get_all} can read at an earlier revision (after L{renumber}, from then).
        self.history = {} if history else None
        self.revision = 1
        self.fail = fail
        self.hold = hold
        self.held = []
        self.calls = []
        self.closed = False

    # -- the client's calls

    def get(self, key, prefix=False, revision=None, limit=0, keys_only=False):
        return self._call("get", key, lambda: self._range(key, prefix))

    def status(self):
        return self._call("status", "", lambda: Status(
            "3.5.0-fake", self.cluster_id, "1", "1", self.revision))

    def get_all(self, prefix, revision=None, page_size=5000, on_page=None, pause=0,
                expect=None):
        """
        The whole prefix at the current revision (the fake keeps no history: a
        C{revision} other than the current one is refused).  With C{on_page}, the
        keys go to it in one page and the result's C{kvs} is empty.
        """
        def read():
            data = self.data
            if revision is not None and revision != self.revision:
                data = (self.history or {}).get(revision)
                if data is None:
                    raise ValueError(
                        "the fake etcd does not hold revision %d" % (revision,))
            found = self._range(prefix, True, data)
            found = found._replace(revision=revision or found.revision)
            if on_page is None:
                return found
            on_page(found.kvs)
            return RangeResult([], found.revision, False, found.count)
        return self._call("get_all", prefix, read)

    def put(self, key, value, prev_kv=False, lease=0):
        return self._call("put", key, lambda: self._put(key, value))

    def delete(self, key, prefix=False, prev_kv=False):
        return self._call("delete", key, lambda: self._delete(key, prefix))

    def txn(self, compare=(), success=(), failure=()):
        keys = ",".join(key_str(unb64(c["key"])) for c in compare)
        return self._call("txn", keys, lambda: self._txn(compare, success, failure))

    def put_if(self, key, value, mod_revision, guard=()):
        return self._call("put_if", key, lambda: self._cas(key, value, mod_revision))

    def delete_if(self, key, mod_revision, guard=()):
        return self._call("delete_if", key, lambda: self._cas(key, None, mod_revision))

    def close(self):
        self.closed = True
        return succeed(None)

    # -- the test's controls

    def value(self, key):
        """
        The value of C{key} (bytes), or C{None} when it does not exist.
        """
        kv = self.data.get(key)
        return None if kv is None else kv.value

    def release(self, index=0):
        """
        Let the held call at C{index} take effect and answer.
        """
        description, d, thunk = self.held.pop(index)
        self._answer(d, description, thunk)

    # -- inside

    def _call(self, method, key, thunk):
        self.calls.append((method, key))
        if not self.hold:
            return self._perform((method, key), thunk)
        d = Deferred()
        self.held.append(((method, key), d, thunk))
        return d

    def _perform(self, description, thunk):
        if self.fail is not None:
            error = self.fail(*description)
            if error is not None:
                return fail(error)
        try:
            return succeed(thunk())
        except Exception:
            return fail()

    def renumber(self, cluster_id):
        """
        Become a new cluster C{cluster_id} restored from a backup: the same keys,
        their revisions numbered anew from 2, no history before.
        """
        self.cluster_id = cluster_id
        data = sorted(self.data.items())
        self.data = {}
        self.revision = 1
        if self.history is not None:
            self.history = {}
        for key, kv in data:
            self._put(key, kv.value)

    def _remember(self):
        if self.history is not None:
            self.history[self.revision] = dict(self.data)

    def _answer(self, d, description, thunk):
        self._perform(description, thunk).chainDeferred(d)

    def _range(self, key, prefix, data=None):
        data = self.data if data is None else data
        if prefix:
            start = key_bytes(key)
            end = prefix_end(start)
            kvs = [
                kv for k, kv in sorted(data.items())
                if start <= key_bytes(k) < end
            ]
        else:
            kvs = [data[key]] if key in data else []
        return RangeResult(kvs, self.revision, False, len(kvs))

    def _put(self, key, value):
        value = value_bytes(value)
        self.revision += 1
        prev = self.data.get(key)
        self.data[key] = KeyValue(
            key, value,
            prev.create_revision if prev is not None else self.revision,
            self.revision,
            prev.version + 1 if prev is not None else 1,
            0,
        )
        self._remember()
        return PutResult(self.revision, None)

    def _delete(self, key, prefix):
        if prefix:
            start = key_bytes(key)
            end = prefix_end(start)
            doomed = [k for k in self.data if start <= key_bytes(k) < end]
        else:
            doomed = [key] if key in self.data else []
        if doomed:
            self.revision += 1
            for k in doomed:
                del self.data[k]
            self._remember()
        return DeleteResult(self.revision, len(doomed), [])

    def _cas(self, key, value, mod_revision):
        kv = self.data.get(key)
        if isinstance(mod_revision, IfValue):
            if kv is None or kv.value != mod_revision.value:
                return CasResult(False, self.revision)
        elif (kv.mod_revision if kv is not None else 0) != mod_revision:
            return CasResult(False, self.revision)
        if value is None:
            return CasResult(True, self._delete(key, False).revision)
        return CasResult(True, self._put(key, value).revision)

    def _holds(self, compare):
        key = key_str(unb64(compare["key"]))
        field, convert = _TARGETS[compare["target"]]
        wanted = convert(compare.get(field, ""))
        kv = self.data.get(key)
        if kv is None:
            if field == "value":
                # as etcd: a value compare on a missing key always fails (an empty
                # value and no key look alike on the wire)
                return False
            actual = 0
        else:
            actual = getattr(kv, field)
        return _COMPARISONS[compare["result"]](actual, wanted)

    def _txn(self, compare, success, failure):
        succeeded = all(self._holds(c) for c in compare)
        responses = []
        for op in success if succeeded else failure:
            responses.append(self._op(op))
        return TxnResult(succeeded, self.revision, responses)

    def _op(self, op):
        if "request_put" in op:
            body = op["request_put"]
            return self._put(key_str(unb64(body["key"])), unb64(body.get("value")))
        if "request_delete_range" in op:
            body = op["request_delete_range"]
            return self._delete(
                key_str(unb64(body["key"])), "range_end" in body
            )
        if "request_range" in op:
            body = op["request_range"]
            return self._range(key_str(unb64(body["key"])), "range_end" in body)
        raise ValueError("the fake etcd does not do %r" % (sorted(op),))
