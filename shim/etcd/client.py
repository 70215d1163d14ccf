"""
EtcdClient: unary calls to etcd's v3 JSON gateway over treq.

Unary calls share a persistent HTTP connection pool; each watch gets a
connection of its own (see L{shim.etcd.watch}). The client probes the gateway's
path prefix (C{/v3}, else C{/v3beta}) once, lazily; fails over to the next endpoint
when one cannot be reached (and stays there); bounds every call by C{timeout};
authenticates when given a user name and re-authenticates once when etcd rejects
the token; speaks TLS to https endpoints with an optional CA and client
certificate. The request/response encoding lives in L{shim.etcd.wire}.
"""

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks, returnValue
from twisted.logger import Logger
from twisted.python.failure import Failure

import treq

from shim.etcd import wire
from shim.etcd.errors import (
    AuthFailed, ConnectionFailed, EtcdError, NotFound, TLSFailed, Timeout,
    error_from_status, is_invalid_token)
from shim.etcd.transport import CONNECTION_ERRORS, Transport, tls_problem
from shim.etcd.watch import Watch

log = Logger()

_PREFIXES = ("/v3", "/v3beta")

#: How etcd's gateway answers (HTTP 400, plain text) a client certificate with a
#: Common Name when client certificate authentication and RBAC are both on.
_GATEWAY_CN_REFUSAL = b"CommonName of client sending a request against gateway"


class _Shared(object):
    """Run one asynchronous job at a time; concurrent callers share its result."""

    def __init__(self, job):
        self._job = job
        self._waiters = None

    def run(self):
        d = defer.Deferred()
        if self._waiters is None:
            self._waiters = [d]
            defer.maybeDeferred(self._job).addBoth(self._fire)
        else:
            self._waiters.append(d)
        return d

    def _fire(self, result):
        waiters, self._waiters = self._waiters, None
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        if isinstance(result, Failure):
            return None
        return result


#: Keys per page of L{EtcdClient.get_all}: a page's answer is decoded in one
#: reactor turn (about 10 ms for 500 ports), and held raw and decoded meanwhile.
PAGE_SIZE = 500

#: Keys decoded and handed over per reactor turn by L{EtcdClient.get_all}.
DIGEST = 100

#: A prefix of more keys than this is read in slices (L{EtcdClient.get_all}).
SLICE_AT = 10000

#: About how many keys a slice holds at most: etcd counts every key left in a
#: range for each page it serves, so a page costs it at most this many keys' count.
SLICE_KEYS = 2000

#: Slices are split on up to this many characters after the prefix (16 ** 3).
_MAX_DEPTH = 3

_HEX = "0123456789abcdef"


def _splits(depth):
    """Every string of C{depth} hex digits but the first, in order."""
    splits = [""]
    for _ in range(depth):
        splits = [s + c for s in splits for c in _HEX]
    return [s.encode("ascii") for s in splits[1:]]


_SPLITS = {depth: _splits(depth) for depth in range(1, _MAX_DEPTH + 1)}


def slice_bounds(raw, after, total):
    """
    Where to split a prefix C{raw} of about C{total} keys, past key C{after}: before
    each string of one to three hex digits after the prefix (the characters uuids
    start with), as many as make slices of about L{SLICE_KEYS} keys.  Any key falls
    in one of the ranges between the bounds, whatever it starts with.
    """
    depth = 1
    while depth < _MAX_DEPTH and total > SLICE_KEYS * 16 ** depth:
        depth += 1
    return [raw + split for split in _SPLITS[depth] if raw + split > after]


class EtcdClient(Transport):
    """
    A client of etcd's v3 JSON gateway. Every call returns a Deferred.
    Endpoints, TLS, connections and failover are L{Transport}'s.

    @ivar cluster_id: the cluster id (decimal str) of the last response header
        seen, or None before any.
    """

    def __init__(self, endpoints=("http://127.0.0.1:2379",), timeout=5.0,
                 username=None, password=None,
                 ca_file=None, cert_file=None, key_file=None, reactor=None):
        Transport.__init__(self, endpoints, timeout, ca_file, cert_file, key_file,
                           reactor)
        self._prefix = None
        self._probe = _Shared(self._probe_prefix)
        self._username = username
        self._password = password or ""
        self._token = None
        self._auth = _Shared(self._authenticate)

    # -- plumbing -------------------------------------------------------

    def _headers(self, use_token=True):
        # The Accept header marks the request as the gateway's: without it, etcd
        # (3.4, 3.5) runs a request that has no token as the user named by its own
        # server certificate's Common Name (see docs/security.md).
        headers = {b"Content-Type": [b"application/json"],
                   b"Accept": [b"application/json"]}
        if use_token and self._token is not None:
            headers[b"Authorization"] = [self._token]
        return headers

    def _post_once(self, endpoint, path, data, call, timeout, use_token):
        """
        POST to one endpoint; fires with (HTTP code, body bytes). Connection
        problems become L{ConnectionFailed}, running out of time L{Timeout}.
        """
        slots = self._slots

        def send(_):
            sent = self._http.post(endpoint + path, data=data,
                                   headers=self._headers(use_token))
            sent.addCallback(lambda response: treq.content(response).addCallback(
                lambda body: (response.code, body)))
            return sent.addBoth(release)

        def release(result):
            slots.release()
            return result

        # Waiting for a turn counts against the time limit, and a cancelled wait
        # leaves the queue.
        d = slots.acquire()
        d.addCallback(send)
        d.addTimeout(timeout, self._reactor)
        d.addErrback(self._connection_problem, call, endpoint)
        return d

    def _post_failover(self, call, path, data, use_token=True):
        """
        POST to the current endpoint, moving on to the next ones when an endpoint
        cannot be reached (see L{Transport._failover}). Fires with (endpoint, code,
        body).
        """
        def send(endpoint, remaining):
            return self._post_once(endpoint, path, data, call, remaining, use_token)
        d = self._failover(call, send)
        return d.addCallback(lambda sent: (sent[0],) + tuple(sent[1]))

    def _decode(self, call, endpoint, code, body):
        """The response dict of a call, or the matching L{EtcdError}."""
        try:
            message = wire.decode_json(body)
        except ValueError:
            if code == 400 and _GATEWAY_CN_REFUSAL in body:
                raise TLSFailed(None, "etcd %s at %s: etcd refuses our client certificate"
                                " because it has a Common Name: with --client-cert-auth"
                                " and authentication on, etcd's gateway only accepts"
                                " client certificates without one" % (call, endpoint))
            raise EtcdError(None, "etcd %s at %s: HTTP %d with a body that is not a"
                            " JSON object: %r" % (call, endpoint, code, body[:200]))
        fields = wire.error_fields(message)
        if fields is not None:
            raise error_from_status(fields[0], fields[1], call, endpoint)
        if code != 200:
            raise EtcdError(None, "etcd %s at %s: HTTP %d: %r"
                            % (call, endpoint, code, body[:200]))
        header = message.get("header")
        if header is not None:
            cluster_id = header.get("cluster_id")
            if cluster_id:
                self.cluster_id = cluster_id
        return message

    @inlineCallbacks
    def _probe_prefix(self):
        """Find the gateway's path prefix: /v3 (etcd 3.4+), else /v3beta."""
        for prefix in _PREFIXES:
            endpoint, code, body = yield self._post_failover(
                "probe", prefix + "/maintenance/status", b"{}", use_token=False)
            if code != 404:
                self._prefix = prefix
                returnValue(prefix)
        raise EtcdError(None, "etcd at %s: no v3 JSON gateway (tried %s)"
                        % (self.endpoint, ", ".join(_PREFIXES)))

    @inlineCallbacks
    def _authenticate(self):
        """Get a fresh token for our user."""
        self._token = None
        call = "authenticate as user %r" % (self._username,)
        endpoint, code, body = yield self._post_failover(
            call, self._prefix + "/auth/authenticate",
            wire.encode(wire.authenticate_request(self._username, self._password)),
            use_token=False)
        message = self._decode(call, endpoint, code, body)
        token = message.get("token")
        if not token:
            raise AuthFailed(None, "etcd authenticate at %s: no token in answer for"
                             " user %r" % (endpoint, self._username))
        self._token = token.encode("ascii")
        returnValue(self._token)

    @inlineCallbacks
    def _prepare(self):
        """Make sure the prefix is known and (with a user) we hold a token."""
        if self._prefix is None:
            yield self._probe.run()
        if self._username is not None and self._token is None:
            yield self._auth.run()

    def _token_rejected(self, token):
        """etcd rejected C{token}: forget it so the next call authenticates."""
        if self._token == token:
            self._token = None

    @inlineCallbacks
    def _call(self, call, path, body, decode=None):
        """One unary call: prepare, POST with failover, decode, re-auth once."""
        if self._prefix is None or (self._username is not None and self._token is None):
            yield self._prepare()
        data = wire.encode(body)
        retried = False
        while True:
            token = self._token
            endpoint, code, raw = yield self._post_failover(call, self._prefix + path, data)
            try:
                message = self._decode(call, endpoint, code, raw)
            except AuthFailed as e:
                if self._username is None or retried or not is_invalid_token(e):
                    raise
                log.info("etcd: token rejected for {call}, authenticating again",
                         call=call)
                retried = True
                self._token_rejected(token)
                yield self._prepare()
                continue
            returnValue(decode(message) if decode is not None else message)

    @inlineCallbacks
    def _open_stream(self, call, path, data):
        """
        Open a streaming POST (a watch) on a connection of its own; fires with
        (endpoint, response) once the response headers arrived with HTTP 200.
        """
        yield self._prepare()
        problems = []
        count = len(self._endpoints)
        for attempt in range(count):
            index = (self._current + attempt) % count
            endpoint = self._endpoints[index]
            d = self._stream_http.post(endpoint + self._prefix + path, data=data,
                                       headers=self._headers(), unbuffered=True)
            d.addTimeout(self.timeout, self._reactor)
            try:
                response = yield d
            except defer.TimeoutError:
                raise Timeout(None, "etcd %s at %s: no answer within %.1f s"
                              % (call, endpoint, self.timeout))
            except CONNECTION_ERRORS as e:
                tls = tls_problem(e)
                if tls is not None:
                    e = "TLS handshake failed: %s" % (tls,)
                problems.append("%s: %s" % (endpoint, e))
                continue
            if response.code != 200:
                body = yield treq.content(response)
                self._decode(call, endpoint, response.code, body)
                raise EtcdError(None, "etcd %s at %s: HTTP %d"
                                % (call, endpoint, response.code))
            self._current = index
            returnValue((endpoint, response))
        raise ConnectionFailed(None, "etcd %s: no endpoint reachable: %s"
                               % (call, "; ".join(problems)))

    def _header_seen(self, header):
        """A watch message's header: remember the cluster id."""
        cluster_id = header.get("cluster_id")
        if cluster_id:
            self.cluster_id = cluster_id

    # -- the API --------------------------------------------------------

    def status(self):
        """The answering member's L{wire.Status}."""
        return self._call("status", "/maintenance/status", {}, wire.decode_status)

    def get(self, key, prefix=False, revision=None, limit=0, keys_only=False):
        """Read a key (or a prefix) -> L{wire.RangeResult}."""
        return self._call("get %r" % (key,), "/kv/range",
                          wire.range_request(key, prefix, revision, limit, keys_only),
                          wire.decode_range)

    @inlineCallbacks
    def get_all(self, prefix, revision=None, page_size=None, on_page=None, pause=0,
                expect=None):
        """
        Read a whole prefix in pages of C{page_size}, every page at the revision
        of the first (or C{revision}), so the result is one consistent snapshot.
        Fires with a L{wire.RangeResult} whose C{revision} is that revision.

        Without C{page_size}, pages are of L{PAGE_SIZE} keys, so that each is
        digested in a short reactor turn.  etcd counts every key left in a range
        for each page it serves, holding its index meanwhile (writes wait): at half
        a million keys, about 50 ms a page.  So a prefix of more than L{SLICE_AT}
        keys is read as consecutive key ranges split on the characters after the
        prefix (L{slice_bounds}), each range counted on its own.  Its first page,
        over the whole prefix, says how many keys there are, unless the caller
        says it already (C{expect}): a first page of half a million keys holds
        etcd's writes for 50-200 ms.

        The request for the next page goes out before the current one is decoded,
        so that etcd prepares it while this process decodes: at 100,000 keys
        etcd's work and ours are each about half of the time.

        @param on_page: if given, called with each page (a list of L{wire.KeyValue},
            in key order; up to L{DIGEST} keys, a reactor turn each) as soon as it is
            decoded, while etcd prepares the next one, so that a caller can digest a
            large prefix while it arrives; the
            result's C{kvs} is then empty and its C{count} the number of keys read.
            An exception from C{on_page} ends the read with that exception.
        @param pause: when not 0, a read in the background: each page is asked
            for C{pause} seconds after the last one was digested, not before, so
            that etcd and this process leave room for other work.
        @param expect: about how many keys the prefix holds, when known (the
            last read of it): the read is split from its first page.
        """
        raw = wire.key_bytes(prefix)
        end = wire.prefix_end(raw)
        pinned = revision
        kvs = []
        count = 0
        call = "get_all %r" % (prefix,)
        take = on_page if on_page is not None else kvs.extend
        size = page_size or PAGE_SIZE
        # The ranges left after the one being read, in key order.
        ranges = []

        def fetch(start, stop):
            return self._call(
                call, "/kv/range",
                wire.range_request(start, revision=pinned, limit=size,
                                   range_end=stop))

        def sliced(after, total):
            # The ranges past C{after}, and where the range being read stops.
            bounds = slice_bounds(raw, after, total) + [end]
            return list(zip(bounds[:-1], bounds[1:])), bounds[0]

        stop = end
        split = page_size is None and expect is not None and expect > SLICE_AT
        if split:
            ranges, stop = sliced(raw, expect)
        message = yield fetch(raw, stop)
        if page_size is None and not split:
            total = int(message.get("count") or 0)
            if total > SLICE_AT and message.get("kvs"):
                # The first page's range goes on to the first bound only.
                ranges, stop = sliced(
                    wire.unb64(message["kvs"][-1]["key"]) + b"\0", total)
        while True:
            if not pinned:
                pinned = wire.header_revision(message)
            page = message.get("kvs") or ()
            count += len(page)
            if page and message.get("more", False):
                following = (wire.unb64(page[-1]["key"]) + b"\0", stop)
            elif ranges:
                following = ranges.pop(0)
            else:
                if page:
                    yield self._digest(page, take)
                break
            if pause:
                yield self._digest(page, take)
                page = ()
                yield _sleep(self._reactor, pause)
            stop = following[1]
            following = fetch(*following)
            try:
                # Let the reactor send the request before we decode.
                yield _next_turn(self._reactor)
                yield _next_turn(self._reactor)
                yield self._digest(page, take)
            except Exception:
                failure = Failure()
                # The caller gives up: let the read of the next page end (its
                # answer dropped), so that nothing is left running.
                yield following.addErrback(lambda _: None)
                failure.raiseException()
            message = page = None
            message = yield following
        returnValue(wire.RangeResult(kvs, pinned, False, count))

    @inlineCallbacks
    def _digest(self, page, take):
        """
        Decode a page and hand it to C{take} in chunks of L{DIGEST} keys, a reactor
        turn each: decoding and applying a page of ports takes tens of milliseconds,
        which a bind would wait for.
        """
        for i in range(0, len(page), DIGEST):
            if i:
                yield _next_turn(self._reactor)
            take(wire.decode_kvs(page[i:i + DIGEST]))

    def put(self, key, value, prev_kv=False, lease=0):
        """Write a key -> L{wire.PutResult}."""
        return self._call("put %r" % (key,), "/kv/put",
                          wire.put_request(key, value, prev_kv, lease), wire.decode_put)

    def delete(self, key, prefix=False, prev_kv=False):
        """Delete a key (or a prefix) -> L{wire.DeleteResult}."""
        return self._call("delete %r" % (key,), "/kv/deleterange",
                          wire.delete_request(key, prefix, prev_kv), wire.decode_delete)

    #: Writes can carry compares on other keys (the election's fence).
    transactions = True

    def txn(self, compare=(), success=(), failure=()):
        """A transaction built with L{wire.Compare} and L{wire.Op} -> L{wire.TxnResult}."""
        return self._call("txn", "/kv/txn", wire.txn_request(compare, success, failure),
                          wire.decode_txn)

    def put_if(self, key, value, mod_revision, guard=()):
        """
        Write C{key} only if it is as the caller last saw it -> L{wire.CasResult}.

        @param mod_revision: the key's modification revision as last read or
            written; 0 means "only if the key does not exist"; a L{wire.IfValue}
            "only if the key holds this value".
        @param guard: more conditions (built with L{wire.Compare}) that must hold
            too, in the same transaction (for instance on another key).
        @return: a Deferred firing with C{CasResult(succeeded, revision)}; a failed
            compare is C{succeeded=False}, not an error.
        """
        return self._cas("put_if %r" % (key,), key, mod_revision, guard,
                         wire.Op.put(key, value))

    def delete_if(self, key, mod_revision, guard=()):
        """
        Delete C{key} only if its modification revision is still C{mod_revision}
        (and every C{guard} holds) -> L{wire.CasResult}.
        """
        if not mod_revision:
            raise ValueError("delete_if %r: mod_revision must be the key's revision,"
                             " not %r" % (key, mod_revision))
        return self._cas("delete_if %r" % (key,), key, mod_revision, guard,
                         wire.Op.delete(key))

    def _cas(self, call, key, mod_revision, guard, op):
        compare = [wire.cas_compare(key, mod_revision)]
        compare.extend(guard)
        return self._call(call, "/kv/txn", wire.txn_request(compare, [op]),
                          lambda message: wire.CasResult(
                              bool(message.get("succeeded", False)),
                              wire.header_revision(message)))

    def compact(self, revision, physical=True):
        """Compact the history up to C{revision}; fires with the header revision."""
        return self._call("compact %s" % (revision,), "/kv/compaction",
                          wire.compaction_request(revision, physical),
                          wire.header_revision)

    def lease_grant(self, ttl):
        """A new lease -> L{wire.Lease}(id, ttl)."""
        return self._call("lease_grant", "/lease/grant", wire.lease_grant_request(ttl),
                          wire.decode_lease_grant)

    def lease_keepalive(self, lease_id):
        """Renew a lease once -> its new TTL; L{NotFound} if it expired or is unknown."""
        call = "lease_keepalive %s" % (lease_id,)

        def ttl(message):
            value = wire.as_int(message.get("TTL"))
            if value <= 0:
                raise NotFound(None, "etcd %s at %s: lease not found or expired"
                               % (call, self.endpoint))
            return value
        return self._call(call, "/lease/keepalive", wire.lease_id_request(lease_id), ttl)

    def lease_revoke(self, lease_id):
        """Revoke a lease (its keys are deleted); fires with the header revision."""
        return self._call("lease_revoke %s" % (lease_id,), "/lease/revoke",
                          wire.lease_id_request(lease_id), wire.header_revision)

    def watch(self, key, start_revision, on_event, prefix=True, prev_kv=True,
              progress_notify=True, idle_timeout=None, on_progress=None):
        """
        Watch C{key} (a prefix by default) from C{start_revision} (None: from
        now) -> a started L{Watch}. See L{shim.etcd.watch.Watch}.
        """
        watch = Watch(self, key, start_revision, on_event, prefix=prefix,
                      prev_kv=prev_kv, progress_notify=progress_notify,
                      idle_timeout=idle_timeout, on_progress=on_progress,
                      reactor=self._reactor)
        return self._run_watch(watch)


def _sleep(reactor, seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _next_turn(reactor):
    """A Deferred that fires on the reactor's next turn, after its I/O."""
    d = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d
