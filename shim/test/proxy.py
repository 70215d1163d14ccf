"""
A loopback TCP proxy that a test can break on purpose.

L{FaultProxy} listens on a free port of 127.0.0.1 and forwards every connection to a
target (an etcd client port), byte for byte.  A test points the shim at the proxy
and then makes the network misbehave between the shim and etcd:

  - L{FaultProxy.cut} drops every connection and refuses new ones (the port is
    closed), as when a link goes down; L{FaultProxy.restore} listens again on the
    same port and forwards to the (possibly changed) target;
  - L{FaultProxy.pause} stops forwarding without closing anything, as when packets
    are silently lost; L{FaultProxy.resume} delivers what was held and goes on.
"""

from twisted.internet import protocol, reactor as default_reactor
from twisted.internet.defer import maybeDeferred

from shim.test.etcdserver import free_port


class _Upstream(protocol.Protocol):
    """
    The proxy's connection to the target, paired with one accepted connection.
    """

    def __init__(self, downstream):
        self.downstream = downstream

    def connectionMade(self):
        self.downstream.upstream_ready(self)

    def dataReceived(self, data):
        self.downstream.transport.write(data)

    def connectionLost(self, reason):
        self.downstream.upstream_lost()


class _UpstreamFactory(protocol.ClientFactory):
    def __init__(self, downstream):
        self.downstream = downstream

    def buildProtocol(self, addr):
        return _Upstream(self.downstream)

    def clientConnectionFailed(self, connector, reason):
        self.downstream.upstream_lost()


class _Downstream(protocol.Protocol):
    """
    A connection accepted by the proxy: holds what it receives until the connection
    to the target is made, then forwards both ways.
    """

    def __init__(self, proxy):
        self.proxy = proxy
        self.upstream = None
        self._held = []
        # a request held back (FaultProxy.hold_requests) until this call runs
        self._holding = None

    def connectionMade(self):
        self.proxy._connections.add(self)
        if self.proxy.paused:
            self.transport.pauseProducing()
        host, port = self.proxy.target
        self.proxy.reactor.connectTCP(host, port, _UpstreamFactory(self))

    def upstream_ready(self, upstream):
        self.upstream = upstream
        if self.proxy.paused:
            upstream.transport.pauseProducing()
        if self._holding is None:
            self._forward_held()

    def _forward_held(self):
        held, self._held = self._held, []
        for data in held:
            self.upstream.transport.write(data)

    def _release(self):
        self._holding = None
        if self.upstream is not None:
            self._forward_held()

    def upstream_lost(self):
        if self.transport.connected:
            self.transport.loseConnection()

    def dataReceived(self, data):
        marker = self.proxy.held_marker
        if self._holding is None and marker is not None and marker in data:
            self._holding = self.proxy.reactor.callLater(
                self.proxy.held_for, self._release)
        if self.upstream is None or self._holding is not None:
            self._held.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason):
        self.proxy._connections.discard(self)
        if self._holding is not None:
            self._holding.cancel()
            self._holding = None
        if self.upstream is not None:
            self.upstream.transport.loseConnection()

    def abort(self):
        """
        Drop both sides at once, without a graceful close.
        """
        self.transport.abortConnection()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()

    def pause(self):
        self.transport.pauseProducing()
        if self.upstream is not None:
            self.upstream.transport.pauseProducing()

    def resume(self):
        self.transport.resumeProducing()
        if self.upstream is not None:
            self.upstream.transport.resumeProducing()


class FaultProxy(protocol.Factory):
    """
    Forward connections on C{127.0.0.1:port} to C{target}; break them on demand.

    @ivar target: C{(host, port)} connections are forwarded to; may be changed while
        the proxy is cut, to move the shim to another etcd.
    @ivar port: the port the proxy listens on (the same across cut and restore).
    @ivar accepted: how many connections the proxy accepted so far.
    """

    def __init__(self, target, port=None, reactor=None):
        self.reactor = reactor or default_reactor
        self.target = target
        self.port = port or free_port()
        self.paused = False
        self.held_marker = None
        self.held_for = 0
        self.accepted = 0
        self._connections = set()
        self._listening = None

    @property
    def url(self):
        """The proxy's address as an etcd endpoint URL."""
        return "http://127.0.0.1:%d" % (self.port,)

    def buildProtocol(self, addr):
        self.accepted += 1
        return _Downstream(self)

    def start(self):
        """Start listening; returns the proxy."""
        self._listening = self.reactor.listenTCP(self.port, self, interface="127.0.0.1")
        return self

    def cut(self):
        """
        Drop every connection and stop listening, so that new connections are refused.
        Fires when the port is closed.
        """
        for connection in list(self._connections):
            connection.abort()
        listening, self._listening = self._listening, None
        if listening is None:
            return maybeDeferred(lambda: None)
        return maybeDeferred(listening.stopListening)

    def restore(self):
        """Listen again on the same port (after L{cut})."""
        if self._listening is None:
            self.start()

    def pause(self):
        """Stop forwarding: connections stay open, nothing gets through."""
        self.paused = True
        for connection in self._connections:
            connection.pause()

    def resume(self):
        """Forward again, delivering what was held back."""
        self.paused = False
        for connection in list(self._connections):
            connection.resume()

    def hold_requests(self, marker, seconds):
        """
        Hold each request whose bytes contain C{marker} (and what follows it on
        its connection) for C{seconds} before forwarding it: an etcd slow to
        answer one kind of request, say a watch (C{b"wait=true"} over v2).
        C{None} stops holding new ones.
        """
        self.held_marker = marker
        self.held_for = seconds

    def stop(self):
        """Drop everything and close the port, for a test's cleanup."""
        self.paused = False
        return self.cut()
