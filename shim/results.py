"""
Writing bind results to C{/controller/net-l3vpn/ProtonBasePort/<uuid>}.

Proton waits about 8 seconds for a port's bind result, so a failed write is retried until
it succeeds, and only the latest wish for a port is ever written: if the port is unbound
while the result write is still being retried, the result is dropped and C{{}} is written
instead, never the stale result over it.  Clearing and deleting are compare-and-set: they
happen only while the result in etcd names this shim's controller, so a shim that loses a
port in a migration never wipes the result the gaining shim has just written.
"""

import json

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from shim import keys
from shim.backoff import Backoff
from shim.etcd import Compare, Op

PUBLISH = "publish"
CLEAR = "clear"
REMOVE = "remove"

EMPTY = b"{}"


def encode_result(result, controller):
    """
    The JSON bytes of a bind result: C{vif_type}, C{vif_details} and C{controller}.
    """
    value = {
        "vif_type": result.get("vif_type"),
        "vif_details": result.get("vif_details"),
        "controller": controller,
    }
    return json.dumps(value, sort_keys=True).encode("utf-8")


def result_controller(value):
    """
    The C{controller} named in a bind result's raw value, or C{None} when the value is
    not a JSON object naming one.
    """
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    if type(decoded) is dict:
        name = decoded.get("controller")
        if type(name) is str:
            return name
    return None


class ResultWriter:
    """
    Keeps each port's bind result in etcd as the service last asked, retrying failures.

    @ivar pending: port uuid to the latest operation asked and not yet done.
    @ivar delayed: port uuid to the delayed call of a clear asked with a delay.
    """

    log = Logger()

    def __init__(self, client, controller, clock, metrics=None, backoff=Backoff):
        self._client = client
        self._controller = controller
        self._clock = clock
        self._metrics = metrics
        self._backoff = backoff
        self.pending = {}
        self._running = set()
        self.delayed = {}
        # port uuid -> the Deferred of the pause before its next write attempt
        self._pauses = {}
        self._idle_waiters = []
        self._stopped = False

    def publish(self, uuid, result, on_written=None):
        """
        Write C{result} (a dict with C{vif_type} and C{vif_details}) as port C{uuid}'s bind
        result, naming this controller.  C{on_written} is called once it is in etcd.
        """
        self._want(uuid, (PUBLISH, encode_result(result, self._controller), on_written))

    def clear(self, uuid, delay=0):
        """
        Replace port C{uuid}'s bind result with C{{}}, if it names this controller.

        @param delay: seconds to wait first; any other wish for the port meanwhile
            replaces this one.
        """
        if delay:
            self._cancel_delayed(uuid)
            self.delayed[uuid] = self._clock.callLater(
                delay, self._want, uuid, (CLEAR, None, None)
            )
            return
        self._want(uuid, (CLEAR, None, None))

    def remove(self, uuid):
        """
        Delete port C{uuid}'s bind result key, if the result names this controller.
        """
        self._want(uuid, (REMOVE, None, None))

    def idle(self):
        """
        A Deferred that fires when no write is pending (or the writer is stopped).
        """
        d = Deferred()
        if not self.pending or self._stopped:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def stop(self):
        """
        Give up retrying: pending writes are abandoned after their current attempt,
        waits before the next attempt and delayed clears are dropped.
        """
        self._stopped = True
        for uuid in list(self.delayed):
            self._cancel_delayed(uuid)
        for pause in list(self._pauses.values()):
            pause.cancel()

    def _cancel_delayed(self, uuid):
        call = self.delayed.pop(uuid, None)
        if call is not None and call.active():
            call.cancel()

    def _want(self, uuid, operation):
        self._cancel_delayed(uuid)
        self.pending[uuid] = operation
        if uuid not in self._running:
            self._running.add(uuid)
            self._write(uuid)

    @inlineCallbacks
    def _write(self, uuid):
        backoff = self._backoff()
        try:
            while True:
                operation = self.pending.get(uuid)
                if operation is None or self._stopped:
                    return
                kind, value, on_written = operation
                try:
                    yield self._perform(uuid, kind, value)
                except Exception as e:
                    self._count(kind, "error")
                    delay = backoff.next_delay()
                    self.log.warn(
                        "writing the bind result of port {uuid} ({operation}) failed: "
                        "{error}; retrying in {delay:.2f}s",
                        uuid=uuid, operation=kind, error=e, delay=delay,
                    )
                    pause = self._pauses[uuid] = deferLater(
                        self._clock, delay, lambda: None
                    )
                    try:
                        yield pause
                    except CancelledError:
                        return
                    finally:
                        self._pauses.pop(uuid, None)
                    continue
                self._count(kind, "ok")
                backoff.reset()
                if self.pending.get(uuid) is operation:
                    del self.pending[uuid]
                if on_written is not None:
                    on_written()
        finally:
            self._running.discard(uuid)
            if not self.pending or self._stopped:
                waiters, self._idle_waiters = self._idle_waiters, []
                for d in waiters:
                    d.callback(None)

    def _perform(self, uuid, kind, value):
        key = keys.result_key(uuid)
        if kind == PUBLISH:
            return self._client.put(key, value)
        return self._compare_and_set(key, kind)

    @inlineCallbacks
    def _compare_and_set(self, key, kind):
        """
        Clear or delete C{key} in one transaction that holds only while the value read is
        still there and names this controller; read again when something came between.
        """
        while True:
            found = yield self._client.get(key)
            if not found.kvs:
                return
            kv = found.kvs[0]
            if result_controller(kv.value) != self._controller:
                return
            if kind == CLEAR and kv.value == EMPTY:
                return
            change = Op.put(key, EMPTY) if kind == CLEAR else Op.delete(key)
            outcome = yield self._client.txn(
                compare=[Compare.mod_revision(key, "==", kv.mod_revision)],
                success=[change],
            )
            if outcome.succeeded:
                return

    def _count(self, kind, outcome):
        if self._metrics is not None:
            self._metrics.child(self._metrics.result_writes, kind, outcome).inc()
