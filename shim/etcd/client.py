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

from twisted.internet import defer, error as ierror
from twisted.internet.defer import inlineCallbacks, returnValue
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

import treq
from treq.client import HTTPClient

from shim.etcd import wire
from shim.etcd.errors import (
    AuthFailed, ConnectionFailed, EtcdError, NotFound, TLSFailed, Timeout,
    describe_failure, error_from_status, is_invalid_token)
from shim.etcd.watch import Watch

log = Logger()

_CONNECTION_ERRORS = (
    ierror.ConnectError, ierror.DNSLookupError, ierror.ConnectionLost,
    ierror.ConnectionDone, webclient.ResponseNeverReceived,
    webclient.RequestTransmissionFailed, webclient.ResponseFailed,
)

_PREFIXES = ("/v3", "/v3beta")

#: How etcd's gateway answers (HTTP 400, plain text) a client certificate with a
#: Common Name when client certificate authentication and RBAC are both on.
_GATEWAY_CN_REFUSAL = b"CommonName of client sending a request against gateway"


class _QuietFactory(_HTTP11ClientFactory):
    """
    Twisted's HTTP client factory without its "Starting factory" log line, which
    would otherwise be logged for every connection to etcd.
    """

    noisy = False


class _QuietPool(HTTPConnectionPool):
    """
    A connection pool whose connections are not announced in the log.
    """

    _factory = _QuietFactory


@implementer(IPolicyForHTTPS)
class _TLSPolicy(object):
    """
    HTTPS policy for etcd endpoints: verify the server against C{ca_file} (or the
    platform's trust store) and present a client certificate when given one.
    """

    def __init__(self, ca_file=None, cert_file=None, key_file=None):
        from twisted.internet import ssl
        self._trust = None
        if ca_file:
            with open(ca_file, "rb") as f:
                pem = f.read()
            certs = [ssl.Certificate.loadPEM(block)
                     for block in _pem_blocks(pem, b"CERTIFICATE")]
            if not certs:
                raise ValueError("ca_file %s holds no PEM certificate" % (ca_file,))
            self._trust = ssl.trustRootFromCertificates(certs)
        self._client_cert = None
        if cert_file:
            with open(cert_file, "rb") as f:
                cert_pem = f.read()
            key_pem = b""
            if key_file:
                with open(key_file, "rb") as f:
                    key_pem = f.read()
            self._client_cert = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        self._ssl = ssl

    def creatorForNetloc(self, hostname, port):
        kwargs = {}
        if self._trust is not None:
            kwargs["trustRoot"] = self._trust
        if self._client_cert is not None:
            kwargs["clientCertificate"] = self._client_cert
        return self._ssl.optionsForClientTLS(hostname.decode("ascii"), **kwargs)


def _pem_blocks(pem, kind):
    """Each PEM block of type C{kind} (e.g. b"CERTIFICATE") in C{pem}."""
    begin = b"-----BEGIN " + kind + b"-----"
    end = b"-----END " + kind + b"-----"
    blocks = []
    start = pem.find(begin)
    while start != -1:
        stop = pem.find(end, start)
        if stop == -1:
            break
        blocks.append(pem[start:stop + len(end)] + b"\n")
        start = pem.find(begin, stop)
    return blocks


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


class EtcdClient(object):
    """
    A client of etcd's v3 JSON gateway. Every call returns a Deferred.

    @ivar cluster_id: the cluster id (decimal str) of the last response header
        seen, or None before any.
    """

    #: Unary calls in flight at once; more wait for a turn.  A burst of calls (say
    #: hundreds of bind results) then reuses this many kept-alive connections instead
    #: of opening, and closing again, one connection per call, which costs etcd and
    #: us more than the calls themselves.  Watches are not counted.
    maxConcurrentCalls = 32
    maxPersistentPerHost = 32

    def __init__(self, endpoints=("http://127.0.0.1:2379",), timeout=5.0,
                 username=None, password=None,
                 ca_file=None, cert_file=None, key_file=None, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        if isinstance(endpoints, (str, bytes)):
            endpoints = endpoints.decode() if isinstance(endpoints, bytes) else endpoints
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self._endpoints = [e.rstrip("/") for e in endpoints]
        if not self._endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        for endpoint in self._endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError("etcd endpoint %r must start with http:// or https://"
                                 % (endpoint,))
        if cert_file and not key_file:
            key_file = cert_file
        self.timeout = float(timeout)
        self._current = 0
        self._prefix = None
        self._probe = _Shared(self._probe_prefix)
        self._username = username
        self._password = password or ""
        self._token = None
        self._auth = _Shared(self._authenticate)
        self.cluster_id = None
        self._watches = set()

        kwargs = {}
        if ca_file or cert_file:
            kwargs["contextFactory"] = _TLSPolicy(ca_file, cert_file, key_file)
        self._pool = _QuietPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = self.maxPersistentPerHost
        self._pool.retryAutomatically = False
        self._slots = defer.DeferredSemaphore(self.maxConcurrentCalls)
        self._http = HTTPClient(Agent(reactor, pool=self._pool, **kwargs))
        self._stream_pool = _QuietPool(reactor, persistent=False)
        self._stream_http = HTTPClient(Agent(reactor, pool=self._stream_pool, **kwargs))

    def __repr__(self):
        return "<EtcdClient %s>" % (",".join(self._endpoints),)

    @property
    def endpoint(self):
        """The endpoint calls go to now."""
        return self._endpoints[self._current]

    def skip_endpoint(self, endpoint):
        """
        C{endpoint} let us down (a watch on it broke or went silent): if calls still
        go to it, send them to the next endpoint first from now on.
        """
        if len(self._endpoints) > 1 and self.endpoint == endpoint:
            self._current = (self._current + 1) % len(self._endpoints)

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

        def failed(f):
            if f.check(defer.TimeoutError, defer.CancelledError):
                raise Timeout(None, "etcd %s at %s: no answer within %.1f s"
                              % (call, endpoint, self.timeout))
            tls = _tls_problem(f.value)
            if tls is not None:
                raise TLSFailed(None, "etcd %s at %s: TLS handshake failed: %s"
                                % (call, endpoint, tls))
            if f.check(*_CONNECTION_ERRORS):
                raise ConnectionFailed(None, "etcd %s at %s: cannot reach etcd: %s"
                                       % (call, endpoint, describe_failure(f)))
            return f
        d.addErrback(failed)
        return d

    @inlineCallbacks
    def _post_failover(self, call, path, data, use_token=True):
        """
        POST to the current endpoint, moving on to the next ones when an endpoint
        cannot be reached (the first one gets a second try at the end: a pooled
        connection the server closed fails once). Fires with (endpoint, code, body).
        """
        deadline = self._reactor.seconds() + self.timeout
        count = len(self._endpoints)
        problems = []
        all_tls = True
        for attempt in range(count + 1):
            index = (self._current + attempt) % count
            endpoint = self._endpoints[index]
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                raise Timeout(None, "etcd %s: no answer within %.1f s (%s)"
                              % (call, self.timeout, "; ".join(problems)))
            try:
                code, body = yield self._post_once(endpoint, path, data, call,
                                                   remaining, use_token)
            except ConnectionFailed as e:
                problems.append(e.message)
                all_tls = all_tls and isinstance(e, TLSFailed)
                continue
            except Timeout:
                if count > 1:
                    # Try another member next time: this one may be stuck.
                    self._current = (index + 1) % count
                raise
            if index != self._current:
                log.info("etcd: switching to endpoint {endpoint} for {call}",
                         endpoint=endpoint, call=call)
                self._current = index
            returnValue((endpoint, code, body))
        # Every endpoint refusing our TLS is a configuration problem, not an outage.
        if all_tls:
            raise TLSFailed(None, "etcd %s: TLS failed with every endpoint: %s"
                            % (call, "; ".join(dict.fromkeys(problems))))
        raise ConnectionFailed(None, "etcd %s: no endpoint reachable: %s"
                               % (call, "; ".join(problems)))

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
            except _CONNECTION_ERRORS as e:
                tls = _tls_problem(e)
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
    def get_all(self, prefix, revision=None, page_size=5000, on_page=None):
        """
        Read a whole prefix in pages of C{page_size}, every page at the revision
        of the first (or C{revision}), so the result is one consistent snapshot.
        Fires with a L{wire.RangeResult} whose C{revision} is that revision.

        The request for the next page goes out before the current one is decoded,
        so that etcd prepares it while this process decodes: at 100,000 keys
        etcd's work and ours are each about half of the time.

        @param on_page: if given, called with each page (a list of L{wire.KeyValue},
            in key order) as soon as it is decoded, while etcd prepares the next
            one, so that a caller can digest a large prefix while it arrives; the
            result's C{kvs} is then empty and its C{count} the number of keys read.
            An exception from C{on_page} ends the read with that exception.
        """
        raw = wire.key_bytes(prefix)
        end = wire.prefix_end(raw)
        pinned = revision
        kvs = []
        count = 0
        call = "get_all %r" % (prefix,)
        take = on_page if on_page is not None else kvs.extend

        def fetch(start):
            return self._call(
                call, "/kv/range",
                wire.range_request(start, revision=pinned, limit=page_size,
                                   range_end=end))

        message = yield fetch(raw)
        while True:
            if not pinned:
                pinned = wire.header_revision(message)
            page = message.get("kvs") or ()
            count += len(page)
            following = None
            if page and message.get("more", False):
                following = fetch(wire.unb64(page[-1]["key"]) + b"\0")
                try:
                    # Let the reactor send the request before we decode.
                    yield _next_turn(self._reactor)
                    yield _next_turn(self._reactor)
                    take(wire.decode_kvs(page))
                except Exception:
                    failure = Failure()
                    # The caller gives up: let the read of the next page end (its
                    # answer dropped), so that nothing is left running.
                    yield following.addErrback(lambda _: None)
                    failure.raiseException()
            elif page or on_page is None:
                take(wire.decode_kvs(page))
            message = page = None
            if following is None:
                break
            message = yield following
        returnValue(wire.RangeResult(kvs, pinned, False, count))

    def put(self, key, value, prev_kv=False, lease=0):
        """Write a key -> L{wire.PutResult}."""
        return self._call("put %r" % (key,), "/kv/put",
                          wire.put_request(key, value, prev_kv, lease), wire.decode_put)

    def delete(self, key, prefix=False, prev_kv=False):
        """Delete a key (or a prefix) -> L{wire.DeleteResult}."""
        return self._call("delete %r" % (key,), "/kv/deleterange",
                          wire.delete_request(key, prefix, prev_kv), wire.decode_delete)

    def txn(self, compare=(), success=(), failure=()):
        """A transaction built with L{wire.Compare} and L{wire.Op} -> L{wire.TxnResult}."""
        return self._call("txn", "/kv/txn", wire.txn_request(compare, success, failure),
                          wire.decode_txn)

    def put_if(self, key, value, mod_revision, guard=()):
        """
        Write C{key} only if it is as the caller last saw it -> L{wire.CasResult}.

        @param mod_revision: the key's modification revision as last read or
            written; 0 means "only if the key does not exist".
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
        if mod_revision:
            compare = [wire.Compare.mod_revision(key, "==", mod_revision)]
        else:
            compare = [wire.Compare.version(key, "==", 0)]
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
        self._watches.add(watch)
        watch.done.addBoth(self._watch_done, watch)
        watch._start()
        return watch

    def _watch_done(self, result, watch):
        self._watches.discard(watch)
        return result

    def close(self):
        """Stop every watch and close pooled connections; fires when done."""
        ds = [watch.stop() for watch in list(self._watches)]
        ds.append(self._pool.closeCachedConnections())
        return defer.DeferredList(ds, consumeErrors=True).addCallback(lambda _: None)


def _tls_problem(error):
    """
    The reason, as a short text, when C{error} (a connection error, possibly wrapping
    others) is a failed TLS handshake; else None.  pyOpenSSL reports the handshake's
    failure as an C{OpenSSL.SSL.Error} inside the web client's
    C{ResponseNeverReceived}/C{RequestTransmissionFailed}; a name mismatch is
    service_identity's C{VerificationError}.
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        for reason in reasons:
            found = _tls_problem(getattr(reason, "value", reason))
            if found is not None:
                return found
        return None
    kind = type(error)
    if kind.__module__.startswith("OpenSSL"):
        details = error.args[0] if error.args else None
        if isinstance(details, list):
            texts = [item[-1] for item in details
                     if isinstance(item, tuple) and item and item[-1]]
            if texts:
                text = ", ".join(texts)
                hint = _TLS_HINTS.get(text)
                return "%s (%s)" % (text, hint) if hint else text
        return str(error) or kind.__name__
    if kind.__module__.startswith("service_identity"):
        return "the server's certificate does not name this endpoint's host: %s" % (
            error,)
    return None


_TLS_HINTS = {
    "certificate verify failed":
        "etcd's certificate is not signed by a trusted CA",
    "tls alert bad certificate":
        "etcd refused our client certificate, or wanted one",
    "tlsv13 alert certificate required":
        "etcd wants a client certificate",
    "tls alert certificate required":
        "etcd wants a client certificate",
    "tlsv1 alert unknown ca":
        "etcd does not trust the CA of the client certificate",
    "tls alert unknown ca":
        "etcd does not trust the CA of the client certificate",
}


def _next_turn(reactor):
    """A Deferred that fires on the reactor's next turn, after its I/O."""
    d = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d
