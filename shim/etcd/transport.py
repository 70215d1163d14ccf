"""
The HTTP plumbing both etcd clients stand on (L{shim.etcd.client.EtcdClient},
v3, and L{shim.etcd.v2.EtcdV2Client}): the list of endpoints and which one calls
go to now, TLS to https endpoints, a kept-alive connection pool for unary calls
bounded by a number of call slots, connections of their own for watches, the
failover from an endpoint that cannot be reached to the next, and the running
watches that C{close} stops.  What is said over the connections (the v3 gateway's
JSON, v2's keys API) is each client's own.
"""

from twisted.internet import defer, error as ierror
from twisted.internet.defer import inlineCallbacks, returnValue
from twisted.logger import Logger
from twisted.web import client as webclient
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from treq.client import HTTPClient

from shim.etcd.errors import ConnectionFailed, TLSFailed, Timeout, describe_failure

log = Logger()

#: The errors that mean an endpoint could not be reached (or dropped the connection
#: before answering): the next endpoint is tried.
CONNECTION_ERRORS = (
    ierror.ConnectError, ierror.DNSLookupError, ierror.ConnectionLost,
    ierror.ConnectionDone, webclient.ResponseNeverReceived,
    webclient.RequestTransmissionFailed, webclient.ResponseFailed,
)


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


def parse_endpoints(endpoints, who):
    """
    The endpoint URLs of C{endpoints} (a list, or one comma-separated str or bytes),
    without trailing slashes; C{ValueError} naming C{who} (the client) when there
    is none, or naming the endpoint that is not an http:// or https:// URL.
    """
    if isinstance(endpoints, (str, bytes)):
        endpoints = endpoints.decode() if isinstance(endpoints, bytes) else endpoints
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    endpoints = [e.rstrip("/") for e in endpoints]
    if not endpoints:
        raise ValueError("%s needs at least one endpoint" % (who,))
    for endpoint in endpoints:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("etcd endpoint %r must start with http:// or https://"
                             % (endpoint,))
    return endpoints


class Transport(object):
    """
    The endpoints, connections and watches of an etcd client; a client class
    derives from it and adds what it says to etcd.

    @ivar timeout: seconds a call may take, failover included.
    @ivar cluster_id: the cluster id (decimal str) of the last answer seen, or None
        before any (set by the client).
    """

    #: Unary calls in flight at once; more wait for a turn.  A burst of calls (say
    #: hundreds of bind results) then reuses this many kept-alive connections instead
    #: of opening, and closing again, one connection per call, which costs etcd and
    #: us more than the calls themselves.  Watches are not counted.
    maxConcurrentCalls = 32
    maxPersistentPerHost = 32

    def __init__(self, endpoints, timeout, ca_file, cert_file, key_file, reactor):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._endpoints = parse_endpoints(endpoints, type(self).__name__)
        if cert_file and not key_file:
            key_file = cert_file
        self.timeout = float(timeout)
        self._current = 0
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
        return "<%s %s>" % (type(self).__name__, ",".join(self._endpoints))

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

    def _connection_problem(self, failure, call, endpoint):
        """
        An errback for one request to C{endpoint}: running out of time becomes
        L{Timeout}, a failed TLS handshake L{TLSFailed}, another connection problem
        L{ConnectionFailed}; any other failure passes.
        """
        if failure.check(defer.TimeoutError, defer.CancelledError):
            raise Timeout(None, "etcd %s at %s: no answer within %.1f s"
                          % (call, endpoint, self.timeout))
        tls = tls_problem(failure.value)
        if tls is not None:
            raise TLSFailed(None, "etcd %s at %s: TLS handshake failed: %s"
                            % (call, endpoint, tls))
        if failure.check(*CONNECTION_ERRORS):
            raise ConnectionFailed(None, "etcd %s at %s: cannot reach etcd: %s"
                                   % (call, endpoint, describe_failure(failure)))
        return failure

    @inlineCallbacks
    def _failover(self, call, send, tries=None):
        """
        Send to the current endpoint, moving on to the next ones when an endpoint
        cannot be reached; by default the first one gets a second try at the end (a
        pooled connection the server closed fails once).  All tries together are
        bounded by C{timeout}.

        @param send: called with (endpoint, seconds left); returns a Deferred that
            fails with L{ConnectionFailed} when the endpoint cannot be reached,
            L{Timeout} when it does not answer in time (see L{_connection_problem}).
        @param tries: how many endpoints to try (None: every one, then the first
            again).
        @return: a Deferred firing with (endpoint, what C{send}'s Deferred fired
            with); with L{TLSFailed} when TLS failed with every endpoint (a
            configuration problem, not an outage), L{ConnectionFailed} when none
            could be reached.
        """
        deadline = self._reactor.seconds() + self.timeout
        count = len(self._endpoints)
        problems = []
        all_tls = True
        for attempt in range(count + 1 if tries is None else tries):
            index = (self._current + attempt) % count
            endpoint = self._endpoints[index]
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                raise Timeout(None, "etcd %s: no answer within %.1f s (%s)"
                              % (call, self.timeout, "; ".join(problems)))
            try:
                result = yield send(endpoint, remaining)
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
            returnValue((endpoint, result))
        # Every endpoint refusing our TLS is a configuration problem, not an outage.
        if all_tls and problems:
            raise TLSFailed(None, "etcd %s: TLS failed with every endpoint: %s"
                            % (call, "; ".join(dict.fromkeys(problems))))
        raise ConnectionFailed(None, "etcd %s: no endpoint reachable: %s"
                               % (call, "; ".join(problems)))

    def _run_watch(self, watch):
        """Start C{watch}, made for this client; C{close} stops it if still running."""
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


def tls_problem(error):
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
            found = tls_problem(getattr(reason, "value", reason))
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
