"""
EtcdV2Client: etcd's v2 keys API (/v2/keys/...) over treq, with the surface of the
v3 L{shim.etcd.client.EtcdClient}, so that the service does not know which API it
talks to.  etcd serves v2 only when started with C{--enable-v2=true} (3.4, 3.5).

How v2 maps onto the client's calls (docs/etcd-v2.md says more):
  - the revision is etcd's index: C{X-Etcd-Index} for a read, a node's
    C{modifiedIndex} / C{createdIndex} for a key's revisions; v2 counts no versions
    (a live key has C{version} 1) and has no leases;
  - a prefix is a directory: C{get_all("/proton/")} is one recursive GET of the
    directory C{/proton}, whose leaves come back in v2's sorted depth-first order.
    v2 has no paging and no read at an index, so C{revision} is ignored and the
    answer is parsed as it arrives (L{v2wire.SnapshotParser});
  - C{put_if} / C{delete_if} are v2's compare-and-swap (C{prevIndex},
    C{prevExist=false}) and compare-and-delete; v2 cannot fence a write on another
    key, so a C{guard} is refused;
  - authentication is HTTP basic auth on every request (v2's own users and roles,
    apart from v3's); TLS and endpoint failover are as with v3;
  - C{txn}, C{compact} and the lease calls do not exist: they raise
    C{NotImplementedError}.
"""

import base64
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks, returnValue
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

import treq

from shim.etcd import v2wire, wire
from shim.etcd.errors import ConnectionFailed, EtcdError, Timeout, describe_failure
from shim.etcd.transport import Transport
from shim.etcd.v2watch import V2Watch

_FORM = b"application/x-www-form-urlencoded"


class _BodyReader(Protocol):
    """
    Hands a response body to C{feed} as it arrives; C{finished} fires when it is
    complete, or fails: with C{feed}'s exception (the connection is then closed), or
    with L{Timeout} when nothing arrived for C{idle} seconds (None: no limit).
    """

    def __init__(self, feed, finished, reactor, idle, describe):
        self._feed = feed
        self._finished = finished
        self._reactor = reactor
        self._idle = idle
        self._describe = describe
        self._failed = None
        self._watchdog = reactor.callLater(idle, self._silent) if idle else None

    def dataReceived(self, data):
        if self._failed is not None:
            return
        if self._watchdog is not None:
            self._watchdog.reset(self._idle)
        try:
            self._feed(data)
        except Exception:
            self._fail(Failure())

    def _silent(self):
        self._watchdog = None
        self._fail(Failure(Timeout(None, "%s: nothing received for %.1f s"
                                   % (self._describe, self._idle))))

    def _fail(self, failure):
        if self._failed is None:
            self._failed = failure
            if self.transport is not None:
                self.transport.stopProducing()

    def connectionLost(self, reason):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self._finished.called:
            # Cancelled: the canceller has already answered.
            return
        if self._failed is not None:
            self._finished.errback(self._failed)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(None)
        else:
            self._finished.errback(ConnectionFailed(
                None, "%s: the answer broke off: %s"
                % (self._describe, describe_failure(reason))))


class EtcdV2Client(Transport):
    """
    A client of etcd's v2 keys API. Every call returns a Deferred.
    Endpoints, TLS, connections and failover are L{Transport}'s, as with v3.

    @ivar cluster_id: the cluster id (decimal str, as v3 gives it) of the last
        answer seen, or None before any.
    @ivar status_key: the key whose (non-recursive) read gives L{status} its index;
        it must be readable by our user (with v2 auth, say C{"/proton/"}).
    """

    def __init__(self, endpoints=("http://127.0.0.1:2379",), timeout=5.0,
                 username=None, password=None,
                 ca_file=None, cert_file=None, key_file=None, reactor=None,
                 status_key="/"):
        Transport.__init__(self, endpoints, timeout, ca_file, cert_file, key_file,
                           reactor)
        self.status_key = status_key
        self._username = username
        self._authorization = None
        if username is not None:
            pair = ("%s:%s" % (username, password or "")).encode("utf-8")
            self._authorization = b"Basic " + base64.b64encode(pair)

    # -- plumbing -------------------------------------------------------

    def _headers(self, form=False):
        headers = {b"Accept": [b"application/json"]}
        if form:
            headers[b"Content-Type"] = [_FORM]
        if self._authorization is not None:
            headers[b"Authorization"] = [self._authorization]
        return headers

    def _token_rejected(self, token):
        """Basic auth has no token to drop (the v3 watch's hook)."""

    def _seen(self, response):
        """Remember the cluster id an answer names; its X-Etcd-Index (0 if none)."""
        headers = response.headers
        cluster = headers.getRawHeaders(b"x-etcd-cluster-id")
        if cluster:
            self.cluster_id = v2wire.cluster_id(cluster[0].decode("ascii", "replace"))
        index = headers.getRawHeaders(b"x-etcd-index")
        return int(index[0]) if index else 0

    def _send_once(self, http, endpoint, method, path, data, call, timeout):
        """
        One request to one endpoint; fires with the response once its headers
        arrived. Connection problems become L{ConnectionFailed}, running out of
        time L{Timeout}.
        """
        d = http.request(method, endpoint + path, data=data,
                         headers=self._headers(form=data is not None), unbuffered=True)
        d.addTimeout(timeout, self._reactor)
        return d.addErrback(self._connection_problem, call, endpoint)

    def _send(self, call, method, path, data=None, http=None, tries=None):
        """
        Send to the current endpoint, moving on to the next ones when one cannot be
        reached (see L{Transport._failover}). Fires with (endpoint, response) once
        the response's headers arrived; the body is the caller's to read.
        """
        http = http or self._http

        def send(endpoint, remaining):
            return self._send_once(http, endpoint, method, path, data, call, remaining)
        return self._failover(call, send, tries)

    def _read(self, response, feed, describe, idle=-1):
        """
        Read the body into C{feed} as it arrives; fires when complete. Cancelling
        closes the connection.
        """
        def cancel(_):
            reader._fail(Failure(defer.CancelledError(describe)))
        finished = defer.Deferred(cancel)
        reader = _BodyReader(feed, finished, self._reactor,
                             self.timeout if idle == -1 else idle, describe)
        response.deliverBody(reader)
        return finished

    @inlineCallbacks
    def _request(self, call, method, path, data=None, ok=(200, 201), accept=()):
        """
        One call, its body read whole: fires with (index, code, message). An answer
        with a status in C{ok}, or an error answer whose errorCode is in
        C{accept}, is returned; any other raises the matching L{EtcdError}.
        """
        yield self._slots.acquire()
        try:
            endpoint, response = yield self._send(call, method, path, data)
            index = self._seen(response)
            describe = "etcd %s at %s" % (call, endpoint)
            chunks = []
            d = self._read(response, chunks.append, describe)
            d.addTimeout(self.timeout, self._reactor)
            try:
                yield d
            except defer.TimeoutError:
                raise Timeout(None, "%s: no whole answer within %.1f s"
                              % (describe, self.timeout))
            body = b"".join(chunks)
        finally:
            self._slots.release()
        code = response.code
        message = self._decode(call, endpoint, code, body)
        if code in ok:
            returnValue((index, code, message))
        if message is not None and message.get("errorCode") in accept:
            returnValue((index, code, message))
        raise v2wire.error_from_v2(code, message, call, endpoint)

    def _decode(self, call, endpoint, code, body):
        """The answer's JSON object; None for an error answer that is not JSON."""
        try:
            return v2wire.decode_json(body)
        except ValueError:
            if code == 404:
                raise EtcdError(None, "etcd %s at %s: HTTP 404 %r: this etcd does not"
                                " serve the v2 API (start it with --enable-v2=true)"
                                % (call, endpoint, body[:100]))
            if code in (200, 201):
                raise EtcdError(None, "etcd %s at %s: HTTP %d with a body that is not"
                                " a JSON object: %r" % (call, endpoint, code, body[:200]))
            return None

    @inlineCallbacks
    def _open_stream(self, call, path):
        """
        Open a watch stream (GET) on a connection of its own; fires with
        (endpoint, response) once the headers arrived with HTTP 200.
        """
        endpoint, response = yield self._send(
            call, "GET", path, http=self._stream_http, tries=len(self._endpoints))
        self._seen(response)
        if response.code != 200:
            body = yield treq.content(response)
            message = self._decode(call, endpoint, response.code, body)
            raise v2wire.error_from_v2(response.code, message, call, endpoint)
        returnValue((endpoint, response))

    def _long_poll(self, call, path, pooled=False):
        """
        One wait for an event (not streamed): fires with (store index when etcd
        took the wait, the answer's JSON object, error answers included) once etcd
        answers, which may be much later.  On a connection of its own, or with
        C{pooled} on a kept-alive one (for waits etcd answers at once, from its
        history).  Cancelling it closes its connection.
        """
        state = {}

        def opened(result):
            endpoint, response = result
            state["index"] = self._seen(response)
            chunks = []
            reading = self._read(response, chunks.append, "etcd %s at %s"
                                 % (call, endpoint), idle=None)
            state["reading"] = reading
            return reading.addCallback(lambda _: (
                state["index"], self._decode(call, endpoint, response.code,
                                             b"".join(chunks)) or {}))

        def cancel(_):
            for key in ("sending", "reading"):
                if key in state and not state[key].called:
                    state[key].cancel()
        done = defer.Deferred(cancel)
        http = self._http if pooled else self._stream_http
        state["sending"] = sending = self._send(call, "GET", path, http=http,
                                                tries=len(self._endpoints))
        sending.addCallback(opened).chainDeferred(done)
        return done

    # -- the API --------------------------------------------------------

    @inlineCallbacks
    def status(self):
        """
        The answering member's L{wire.Status}: its version (C{GET /version}), its
        id and its leader's (C{GET /v2/stats/self}, as decimal strings), the
        cluster id and the store's index (a read of L{status_key}).
        """
        index, code, version = yield self._request("status", "GET", "/version")
        index, code, stats = yield self._request("status", "GET", "/v2/stats/self")
        index, code, _ = yield self._request(
            "status", "GET", v2wire.key_path(self.status_key),
            accept=(v2wire.KEY_NOT_FOUND,))
        leader = (stats.get("leaderInfo") or {}).get("leader")
        returnValue(wire.Status(
            version.get("etcdserver", ""), self.cluster_id,
            v2wire.cluster_id(stats.get("id")), v2wire.cluster_id(leader), index))

    @inlineCallbacks
    def get(self, key, prefix=False, revision=None, limit=0, keys_only=False):
        """
        Read a key -> L{wire.RangeResult}; a missing key (or a directory) gives no
        kvs. With C{prefix}, every key under the directory C{key}, as L{get_all},
        then cut to C{limit}. v2 cannot read at an index: C{revision} is ignored.
        """
        if prefix:
            read = yield self.get_all(key)
            kvs = read.kvs
            more = bool(limit) and len(kvs) > limit
            if limit:
                kvs = kvs[:limit]
            if keys_only:
                kvs = [kv._replace(value=b"") for kv in kvs]
            returnValue(wire.RangeResult(kvs, read.revision, more, read.count))
        index, code, message = yield self._request(
            "get %r" % (key,), "GET", v2wire.key_path(key),
            accept=(v2wire.KEY_NOT_FOUND,))
        node = message.get("node")
        if code != 200 or node is None or node.get("dir"):
            returnValue(wire.RangeResult([], index, False, 0))
        kv = v2wire.node_kv(node)
        if keys_only:
            kv = kv._replace(value=b"")
        returnValue(wire.RangeResult([kv], index, False, 1))

    @inlineCallbacks
    def get_all(self, prefix, revision=None, page_size=5000, on_page=None, pause=0,
                expect=None):
        """
        Every key under the directory C{prefix}, in one recursive GET: fires with a
        L{wire.RangeResult} whose C{revision} is the answer's C{X-Etcd-Index}; a
        missing directory gives no kvs.

        v2 has neither paging nor reads at an index: C{revision} (and C{pause},
        which spaces a v3 read's pages, and C{expect}, which splits it) is
        ignored (the answer is the store as it is), and the one answer is parsed
        while it arrives, one leaf at a time, never held whole.  Only leaves are
        returned (directories are not keys).

        @param on_page: if given, called with lists of at most C{page_size}
            L{wire.KeyValue}s as they are decoded; the result's C{kvs} is then
            empty and its C{count} the number of keys read.  An exception from
            C{on_page} ends the read (and closes its connection) with that
            exception.
        """
        call = "get_all %r" % (prefix,)
        path = v2wire.key_path(prefix) + "?recursive=true&sorted=true"
        kvs = []
        batch = []

        if on_page is None:
            take = kvs.extend
        else:
            def take(decoded):
                batch.extend(decoded)
                while len(batch) >= page_size:
                    page = batch[:page_size]
                    del batch[:page_size]
                    on_page(page)
        parser = v2wire.SnapshotParser(take)
        yield self._slots.acquire()
        try:
            endpoint, response = yield self._send(call, "GET", path)
            index = self._seen(response)
            describe = "etcd %s at %s" % (call, endpoint)
            if response.code != 200:
                body = yield treq.content(response)
                message = self._decode(call, endpoint, response.code, body)
                if message is not None and message.get("errorCode") == \
                        v2wire.KEY_NOT_FOUND:
                    returnValue(wire.RangeResult([], index, False, 0))
                raise v2wire.error_from_v2(response.code, message, call, endpoint)
            yield self._read(response, parser.feed, describe)
        finally:
            self._slots.release()
        try:
            parser.close()
        except ValueError as e:
            raise EtcdError(None, "%s: %s" % (describe, e))
        if batch:
            page = list(batch)
            del batch[:]
            on_page(page)
        returnValue(wire.RangeResult(kvs, index, False, parser.count))

    def put(self, key, value, prev_kv=False, lease=0):
        """Write a key -> L{wire.PutResult}; v2 has no leases."""
        if lease:
            raise NotImplementedError("etcd v2 has no leases (put %r, lease %s)"
                                      % (key, lease))
        return self._put("put %r" % (key,), key, value, {}, prev_kv).addCallback(
            lambda result: wire.PutResult(result[0], result[1]))

    @inlineCallbacks
    def _put(self, call, key, value, query, prev_kv=False, accept=()):
        path = v2wire.key_path(key)
        if query:
            path += "?" + urlencode(query)
        data = urlencode({"value": wire.value_bytes(value)}).encode("ascii")
        index, code, message = yield self._request(call, "PUT", path, data,
                                                   accept=accept)
        if "errorCode" in message:
            returnValue((int(message.get("index", index)), None, False))
        node = message.get("node") or {}
        prev = message.get("prevNode") if prev_kv else None
        prev = v2wire.node_kv(prev) if prev and not prev.get("dir") else None
        returnValue((int(node.get("modifiedIndex", index)), prev, True))

    @inlineCallbacks
    def delete(self, key, prefix=False, prev_kv=False):
        """
        Delete a key -> L{wire.DeleteResult}; with C{prefix}, the directory C{key}
        and everything under it (v2 then says not how many keys: C{deleted} is 1).
        """
        path = v2wire.key_path(wire.key_bytes(key).rstrip(b"/") if prefix else key)
        if prefix:
            path += "?recursive=true"
        index, code, message = yield self._request(
            "delete %r" % (key,), "DELETE", path, accept=(v2wire.KEY_NOT_FOUND,))
        if "errorCode" in message:
            returnValue(wire.DeleteResult(index, 0, []))
        node = message.get("node") or {}
        prev = message.get("prevNode") if prev_kv else None
        prevs = [v2wire.node_kv(prev)] if prev and not prev.get("dir") else []
        returnValue(wire.DeleteResult(int(node.get("modifiedIndex", index)), 1, prevs))

    def put_if(self, key, value, mod_revision, guard=()):
        """
        Write C{key} only if its modifiedIndex is still C{mod_revision} (0: only if
        the key does not exist; a L{wire.IfValue}: only if it holds that value) ->
        L{wire.CasResult}; a failed compare (v2 errorCode 101, 105, 100) is
        C{succeeded=False} with etcd's index.

        @param guard: must be empty: v2 cannot make a write depend on another key.
        """
        _no_guard("put_if", key, guard)
        if isinstance(mod_revision, wire.IfValue):
            query = {"prevValue": mod_revision.value.decode("utf-8")}
        elif mod_revision:
            query = {"prevIndex": str(int(mod_revision))}
        else:
            query = {"prevExist": "false"}
        return self._put("put_if %r" % (key,), key, value, query,
                         accept=v2wire.CAS_FAILED).addCallback(
            lambda result: wire.CasResult(result[2], result[0]))

    def delete_if(self, key, mod_revision, guard=()):
        """
        Delete C{key} only if its modifiedIndex is still C{mod_revision} ->
        L{wire.CasResult}; a key already gone is C{succeeded=False}.
        """
        _no_guard("delete_if", key, guard)
        if not mod_revision:
            raise ValueError("delete_if %r: mod_revision must be the key's revision,"
                             " not %r" % (key, mod_revision))
        return self._delete_if(key, mod_revision)

    @inlineCallbacks
    def _delete_if(self, key, mod_revision):
        path = v2wire.key_path(key) + "?" + urlencode({"prevIndex": str(int(mod_revision))})
        index, code, message = yield self._request(
            "delete_if %r" % (key,), "DELETE", path, accept=v2wire.CAS_FAILED)
        if "errorCode" in message:
            returnValue(wire.CasResult(False, int(message.get("index", index))))
        node = message.get("node") or {}
        returnValue(wire.CasResult(True, int(node.get("modifiedIndex", index))))

    def watch(self, key, start_revision, on_event, prefix=True, prev_kv=False,
              progress_notify=True, idle_timeout=None, on_progress=None):
        """
        Watch the directory C{key} (recursively by default) from index
        C{start_revision} (None: from now) -> a started
        L{shim.etcd.v2watch.V2Watch}. v2 sends no progress notifications:
        C{progress_notify} and C{on_progress} do nothing.
        """
        watch = V2Watch(self, key, start_revision, on_event, prefix=prefix,
                        prev_kv=prev_kv, progress_notify=progress_notify,
                        idle_timeout=idle_timeout, on_progress=on_progress,
                        reactor=self._reactor)
        return self._run_watch(watch)

    #: v2 has no transactions: a write cannot carry a compare on another key (the
    #: election's, which lives in v3's store anyway).
    transactions = False

    def txn(self, compare=(), success=(), failure=()):
        raise NotImplementedError("etcd v2 has no transactions: use put_if/delete_if")

    def compact(self, revision, physical=True):
        raise NotImplementedError("etcd v2 keeps its last 1000 events itself: there is"
                                  " nothing to compact")

    def lease_grant(self, ttl):
        raise NotImplementedError("etcd v2 has no leases (only per-key TTLs)")

    def lease_keepalive(self, lease_id):
        raise NotImplementedError("etcd v2 has no leases (only per-key TTLs)")

    def lease_revoke(self, lease_id):
        raise NotImplementedError("etcd v2 has no leases (only per-key TTLs)")


def _no_guard(call, key, guard):
    if guard:
        raise ValueError("%s %r: etcd v2 cannot fence a write on other keys"
                         " atomically; guard must be empty" % (call, key))

