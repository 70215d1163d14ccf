"""
The shim daemon: the model kept in step with etcd, and the backend called on its changes.

L{ShimService} reads everything under C{/proton/} (and the bind results under
C{/controller/}) at one revision, builds the model, and watches C{/proton/} from the next
revision.  Each event is checked and decoded at once and then applied on its object's
queue (L{shim.serial.SerialQueues}): the model changes there, the port state machine
(L{shim.portstate}) decides, and the backend is called, so that everything about one port
happens in event order while different ports proceed concurrently.

When the watch ends it is resumed from the last revision seen.  When that revision has
been compacted away, when etcd's cluster id changes, and periodically, the service reads
everything again and turns the differences from its model into the same calls the missed
events would have caused.
"""

import json

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from shim import keys, portstate
from shim.backoff import Backoff
from shim.calls import BackendCaller
from shim.etcd import AuthFailed, EtcdClient, EtcdError, TLSFailed
from shim.metrics import Metrics
from shim.model import BadValue, Changes, Model, Port, decode
from shim.portstate import BIND, BOUND, UNBOUND
from shim.results import ResultWriter, result_controller
from shim.serial import SerialQueues

PUT = "PUT"
DELETE = "DELETE"

#: Errors that retrying cannot mend: at start-up they stop the shim.
FATAL_AT_START = (AuthFailed, TLSFailed)

#: Seconds after a port migrated to another controller's host before this shim
#: clears its old bind result: proton waits about 8 seconds for the new one.
RELEASE_DELAY = 10.0

#: Seconds that stopping waits for running callbacks and result writes.
STOP_TIMEOUT = 10.0


class ShimService(Service):
    """
    Keeps the model of the net-l3vpn objects in etcd and drives the backend from it.

    @ivar model: the L{Model}.
    @ivar revision: the last etcd revision seen (events and progress notifications).
    @ivar ready: C{True} after the first synchronisation and while the watch is live.
    @ivar not_ready_reason: why the service is not ready, when it is not.
    """

    log = Logger()

    def __init__(self, config, backend, reactor=None, client=None, metrics=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.model = Model()
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watch_model(self.model)
        self.metrics.revision.set_function(lambda: self.revision)
        self.client = client if client is not None else _client_for(config, reactor)
        self.backend = BackendCaller(
            backend, config.backend_timeout, reactor, self.metrics
        )
        self.results = ResultWriter(
            self.client, config.controller_name, reactor, self.metrics
        )
        self.queues = SerialQueues()
        self.revision = 0
        self.release_delay = RELEASE_DELAY
        self.ready = False
        self.not_ready_reason = "not started"
        self.cluster_id = None
        self._synchronised = False
        self._watch = None
        self._confirmed = False
        self._sleep = None
        self._loop = None
        self._resync_cause = None
        self._periodic = None
        self._ready_waiters = []
        #: Fires with the error when start-up fails for good (a wrong password, an
        #: untrusted certificate); the twistd plugin then exits non-zero.
        self.start_failed = Deferred()
        self._other_apis = set()
        self._restored = {}
        self._handlers = {
            keys.PORT: self._port_changed,
            keys.VPN_PORT: self._vpn_port_changed,
            keys.VPN_INSTANCE: self._vpn_instance_changed,
            keys.VPN_AFCONFIG: self._afconfig_changed,
        }

    # -- life cycle

    def startService(self):
        Service.startService(self)
        self.log.info(
            "shim {controller} starting: hosts {hosts}, etcd {endpoints}, backend "
            "{backend}",
            controller=self.config.controller_name,
            hosts=", ".join(self.config.host_list) or "*",
            endpoints=", ".join(self.config.etcd_endpoints),
            backend=self.config.backend,
        )
        self._loop = self._run()
        if self.config.resync_interval > 0:
            self._periodic = LoopingCall(self.request_resync, "periodic")
            self._periodic.clock = self.reactor
            self._periodic.start(self.config.resync_interval, now=False)

    @inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        self._set_not_ready("stopping")
        if self._periodic is not None and self._periodic.running:
            self._periodic.stop()
        if self._watch is not None:
            self._watch.stop()
        if self._sleep is not None:
            self._sleep.cancel()
        if self._loop is not None:
            yield self._loop
        # Let running callbacks and result writes finish, within limits.
        # The callbacks first: a bind that finishes asks for a result write.
        settled = self.queues.idle()
        settled.addCallback(lambda _: self.results.idle())
        settled.addTimeout(STOP_TIMEOUT, self.reactor)
        try:
            yield settled
        except Exception:
            self.log.warn(
                "stopping without waiting longer: {keys} objects still have callbacks "
                "running, {writes} bind results are unwritten",
                keys=len(self.queues), writes=len(self.results.pending),
            )
        self.results.stop()
        yield self.client.close()
        self.log.info("shim stopped at revision {revision}", revision=self.revision)

    def when_ready(self):
        """
        A Deferred that fires when the service is ready (at once if it is).
        """
        d = Deferred()
        if self.ready:
            d.callback(self)
        else:
            self._ready_waiters.append(d)
        return d

    def request_resync(self, cause):
        """
        Read everything from etcd again and repair any difference from the model.
        """
        self._resync_cause = cause
        if self._watch is not None:
            self._watch.stop()

    # -- following etcd

    @inlineCallbacks
    def _run(self):
        backoff = Backoff(initial=0.2, maximum=10.0)
        cause = "start"
        while self.running:
            if cause is None and self._resync_cause is not None:
                cause, self._resync_cause = self._resync_cause, None
            try:
                if cause is not None:
                    yield self._synchronise(cause)
                    cause = None
                if not self.running:
                    break
                ended = yield self._follow()
            except Exception as e:
                if not self.running:
                    break
                if not self._synchronised and isinstance(e, FATAL_AT_START):
                    self._set_not_ready("cannot start: %s" % (e,))
                    self.log.critical("cannot start: {error}", error=e)
                    self.start_failed.callback(e)
                    break
                delay = backoff.next_delay()
                if isinstance(e, EtcdError):
                    self._set_not_ready("etcd unavailable: %s" % (e,))
                    self.log.warn(
                        "etcd unavailable ({error}); retrying in {delay:.1f}s",
                        error=e, delay=delay,
                    )
                else:
                    # Not etcd's doing: a defect, logged with its traceback.
                    self._set_not_ready("synchronisation failed: %r" % (e,))
                    self.log.failure(
                        "synchronising with etcd failed; retrying in {delay:.1f}s",
                        Failure(), delay=delay,
                    )
                yield self._pause(delay)
                continue
            if self._confirmed:
                # Back off only while etcd cannot be reached: a watch etcd confirmed
                # was working, so the next one starts from the shortest delay.
                backoff.reset()
            if not self.running:
                break
            if self._resync_cause is not None:
                continue
            if ended.reason == "compacted":
                self.log.warn(
                    "the watch fell behind etcd's compaction at revision {compacted}",
                    compacted=ended.compact_revision,
                )
                cause = "compacted"
            elif self.client.cluster_id not in (None, self.cluster_id):
                self.log.warn(
                    "etcd's cluster id changed from {old} to {new}",
                    old=self.cluster_id, new=self.client.cluster_id,
                )
                cause = "cluster_changed"
            else:
                delay = backoff.next_delay()
                self.log.warn(
                    "the watch ended ({reason}: {error}); resuming from revision "
                    "{revision} in {delay:.1f}s",
                    reason=ended.reason, error=ended.error, revision=self.revision + 1,
                    delay=delay,
                )
                yield self._pause(delay)

    def _pause(self, delay):
        self._sleep = deferLater(self.reactor, delay, lambda: None)
        self._sleep.addErrback(lambda _: None)
        self._sleep.addBoth(self._woke)
        return self._sleep

    def _woke(self, _):
        self._sleep = None

    def _follow(self):
        """
        Watch C{/proton/} from the revision after the last one seen, until the watch ends.

        @return: a Deferred firing with the watch's L{WatchEnded}.
        """
        watch = self.client.watch(
            keys.PROTON_PREFIX,
            self.revision + 1,
            self._on_watch_event,
            prefix=True,
            prev_kv=False,
            progress_notify=True,
            idle_timeout=self.config.watch_idle_timeout or None,
            on_progress=self._on_progress,
        )
        self._watch = watch
        self._confirmed = False
        watch.started.addCallbacks(self._watching, lambda _: None)
        return watch.done.addBoth(self._watch_ended)

    def _watching(self, _):
        self._confirmed = True
        if self.client.cluster_id not in (None, self.cluster_id):
            self.log.warn(
                "etcd's cluster id changed from {old} to {new}",
                old=self.cluster_id, new=self.client.cluster_id,
            )
            self.request_resync("cluster_changed")
            return
        self._set_ready()

    def _watch_ended(self, ended):
        if ended.reason in ("connection_lost", "idle") and self._watch is not None:
            # Resume on the next endpoint first: this one may be the member that died.
            self.client.skip_endpoint(self._watch.endpoint)
        self._watch = None
        self._set_not_ready("watch ended: %s" % (ended.reason,))
        self.metrics.child(self.metrics.reconnects, ended.reason).inc()
        return ended

    def _on_watch_event(self, event):
        self.revision = event.mod_revision
        self.apply(event.type, event.key, event.value, event.mod_revision)

    def _on_progress(self, revision):
        if revision > self.revision:
            self.revision = revision

    @inlineCallbacks
    def _synchronise(self, cause):
        """
        Read C{/proton/} at one revision and bring the model to it.  The objects are
        read table by table, in the order of L{keys.TABLES} (what a port's bind
        depends on first), and each page is applied while etcd prepares the next one.
        At start-up the bind results are read first, at the same revision, to know
        which ports this shim had bound; on a resynchronisation they are read last,
        to write again those of Bound ports that went missing.
        """
        first = not self._synchronised
        started = self.reactor.seconds()
        self._set_not_ready("synchronising (%s)" % (cause,))
        status = yield self.client.status()
        if first:
            results = yield self.client.get_all(keys.RESULT_PREFIX)
            revision = results.revision
            ours = self._our_results(results.kvs)
        else:
            probe = yield self.client.get(
                keys.PROTON_PREFIX, prefix=True, limit=1, keys_only=True
            )
            revision = probe.revision
        if self.cluster_id is not None and status.cluster_id != self.cluster_id:
            # A restored cluster may number its revisions differently: compare values.
            for table in keys.TABLES:
                for obj in self.model.table(table).values():
                    obj.revision = 0
        self.cluster_id = status.cluster_id
        self.metrics.child(self.metrics.resyncs, cause).inc()
        # At start-up, the ports bound by us come back Bound, without a new bind_port,
        # when their row is applied.
        self._restored = dict(ours) if first else {}
        present = {}
        objects = 0
        for table in keys.TABLES:
            present[table] = names = set()
            read = yield self.client.get_all(
                keys.proton_key(table, ""), revision=revision,
                on_page=lambda page, table=table, names=names: self._reconcile_page(
                    table, page, names
                ),
            )
            objects += read.count
        self._reconcile_deletions(present, revision)
        if first:
            self._forget_departed_ports(ours, present[keys.PORT])
        else:
            # Read after the snapshot is applied, so that a port deleted or unbound
            # meanwhile does not get its result written again, and a result written
            # meanwhile is not taken for missing.
            results = yield self.client.get_all(keys.RESULT_PREFIX)
            self._repair_results(self._our_results(results.kvs))
        self.revision = revision
        self._synchronised = True
        self.log.info(
            "synchronised ({cause}): {objects} objects at revision {revision} in "
            "{elapsed:.2f}s, etcd {version}",
            cause=cause, objects=objects, revision=revision,
            elapsed=self.reactor.seconds() - started, version=status.version,
        )

    def _our_results(self, kvs):
        """
        The bind results that name this controller, by port uuid.
        """
        ours = {}
        for kv in kvs:
            uuid = keys.result_uuid(kv.key)
            if uuid is not None and result_controller(kv.value) == self.config.controller_name:
                ours[uuid] = kv.value
        return ours

    def _forget_departed_ports(self, ours, present):
        """
        At start-up, remove our bind results of ports that were deleted while the shim
        was away, and tell the backend they are gone.
        """
        for uuid in ours:
            if uuid not in present:
                self.log.info(
                    "port {uuid} was deleted while the shim was away; removing its "
                    "bind result", uuid=uuid,
                )
                self.queues.submit(uuid, self._forget_departed, uuid)

    def _forget_departed(self, uuid):
        self.results.remove(uuid)
        return self.backend.call(
            "delete_port", "port %s" % (uuid,), uuid, self.model, Port(id=uuid)
        )

    def _repair_results(self, ours):
        """
        Write again the bind results of Bound ports that went missing from etcd
        (C{ours}: the results naming this controller, by port uuid), leaving out those
        with a write or a callback under way.
        """
        for uuid, port in self.model.ports.items():
            if (
                port.binding == BOUND
                and uuid not in ours
                and uuid not in self.results.pending
                and not self.queues.busy(uuid)
            ):
                self.log.warn(
                    "the bind result of port {uuid} is missing from etcd; writing it "
                    "again", uuid=uuid,
                )
                self.results.publish(uuid, _result_of(port))

    def _reconcile_page(self, table, kvs, present):
        """
        Turn the differences between the model and a page of a snapshot of C{table}
        into the events that would have caused them: a PUT for each object that is new
        or changed.  The names seen are added to C{present}.
        """
        prefix = len(keys.proton_key(table, ""))
        objects = self.model.table(table)
        for kv in kvs:
            name = kv.key[prefix:]
            if not name or "/" in name:
                self.apply(PUT, kv.key, kv.value, kv.mod_revision)  # logs the bad key
                continue
            present.add(name)
            known = objects.get(name)
            if known is not None and known.revision == kv.mod_revision:
                continue
            if known is not None and not known.revision and _same(table, known, kv):
                # Renumbered by another cluster, unchanged: nothing to call.
                known.revision = kv.mod_revision
                continue
            self._apply_to(table, name, PUT, kv.key, kv.value, kv.mod_revision)

    def _reconcile_deletions(self, present, revision):
        """
        A DELETE, at the snapshot's C{revision}, for each object of the model that
        the snapshot does not have (ports first: they depend on the others).
        """
        for table in reversed(keys.TABLES):
            gone = [n for n in self.model.table(table) if n not in present[table]]
            for name in gone:
                self._apply_to(
                    table, name, DELETE, keys.proton_key(table, name), None, revision
                )

    # -- applying events

    def apply(self, kind, key, value, revision):
        """
        Check and decode one change of a key under C{/proton/} and queue it on its
        object.  A bad key or value is logged with the key, counted and skipped.
        """
        try:
            table, name = keys.parse_proton_key(key)
        except keys.OtherAPI as e:
            self._other_api(e)
            return
        except keys.BadKey as e:
            self._bad_input("bad_key", key, revision, e)
            return
        self._apply_to(table, name, kind, key, value, revision)

    def _apply_to(self, table, name, kind, key, value, revision):
        """
        L{apply} for a key already known to name object C{name} of C{table}.
        """
        if kind == DELETE:
            obj = None
        else:
            try:
                obj = decode(table, value, revision)
            except BadValue as e:
                self._bad_input("bad_value", key, revision, e)
                return
        self.metrics.child(self.metrics.events, table, kind).inc()
        if table == keys.PORT or table == keys.VPN_PORT:
            queue = name
        else:
            queue = (table, name)
        self.queues.submit(queue, self._handlers[table], name, obj, revision)

    def _bad_input(self, reason, key, revision, error):
        self.metrics.child(self.metrics.bad_values, reason).inc()
        self.log.warn(
            "skipping {key} at revision {revision}: {error}",
            key=key, revision=revision, error=error,
        )

    def _other_api(self, error):
        self.metrics.child(self.metrics.bad_values, "other_api").inc()
        if (error.api, error.table) not in self._other_apis:
            self._other_apis.add((error.api, error.table))
            self.log.info(
                "ignoring objects of {api}/{table}: not handled by this shim",
                api=error.api, table=error.table,
            )

    def _store(self, table, name, obj, revision):
        """
        Apply a change to the model unless it is older than what the model has.

        @return: C{(applied, previous object)}.
        """
        prev = self.model.get(table, name)
        if obj is None:
            if prev is None or prev.revision > revision:
                return False, prev
            self.model.remove(table, name)
            return True, prev
        if prev is not None and prev.revision >= revision and prev.revision:
            return False, prev
        self.model.put(table, name, obj)
        return True, prev

    def _port_changed(self, uuid, port, revision):
        applied, prev = self._store(keys.PORT, uuid, port, revision)
        if not applied:
            return None
        state = prev.binding if prev is not None else UNBOUND
        if prev is None and self._restored and uuid in self._restored:
            # Bound by us before a restart: Bound again, as it was.
            state = BOUND
            _merge_result(port, self._restored.pop(uuid))
            prev = port
        elif state == BOUND and port is not None:
            _keep_result(port, prev)
        transition = portstate.on_port_event(
            state, prev, port, self.config.is_our_host
        )
        if port is not None:
            port.binding = transition.state
            if state == BOUND and transition.state != BOUND:
                _forget_result(port)
        if not transition.effects:
            return None
        return self._carry_out(
            uuid, state, transition, prev, port, Changes.between(prev, port)
        )

    def _vpn_port_changed(self, uuid, binding, revision):
        applied, prev = self._store(keys.VPN_PORT, uuid, binding, revision)
        if not applied:
            return None
        port = self.model.ports.get(uuid)
        if port is None:
            return None
        if port.binding == BOUND:
            if binding is None:
                return self.backend.call(
                    "delete_service_binding", "port %s" % (uuid,), self.model, prev
                )
            return self.backend.call(
                "modify_service_binding", "port %s" % (uuid,), uuid, self.model,
                prev if prev is not None else {},
            )
        if binding is not None:
            return self._retry_bind(uuid)
        return None

    def _vpn_instance_changed(self, vpn, service, revision):
        applied, prev = self._store(keys.VPN_INSTANCE, vpn, service, revision)
        if not applied:
            return None
        if service is None:
            if self._used_by_bound_port(vpn):
                return self.backend.call(
                    "delete_service", "VPN %s" % (vpn,), vpn, self.model, prev
                )
            return None
        return self._service_touched(vpn, Changes.between(prev, service))

    def _afconfig_changed(self, name, afconfig, revision):
        applied, prev = self._store(keys.VPN_AFCONFIG, name, afconfig, revision)
        if not applied:
            return None
        changes = Changes.between(prev, afconfig)
        for vpn in self.model.vpns_listing_afconfig(name):
            self.queues.submit(
                (keys.VPN_INSTANCE, vpn), self._service_touched, vpn, changes
            )
        return None

    def _service_touched(self, vpn, changes):
        """
        A VPN or one of its route targets changed: tell the backend if a port bound by us
        uses the VPN, and bind again the ports using it whose bind was refused.
        """
        for uuid in self.model.ports_using_vpn(vpn):
            self.queues.submit(uuid, self._retry_bind, uuid)
        if vpn in self.model.vpn_instances and self._used_by_bound_port(vpn):
            return self.backend.call(
                "modify_service", "VPN %s" % (vpn,), vpn, self.model, changes
            )
        return None

    def _used_by_bound_port(self, vpn):
        ports = self.model.ports
        for uuid in self.model.ports_using_vpn(vpn):
            port = ports.get(uuid)
            if port is not None and port.binding == BOUND:
                return True
        return False

    def _retry_bind(self, uuid):
        port = self.model.ports.get(uuid)
        if port is None:
            return None
        transition = portstate.on_retry(port.binding, port, self.config.is_our_host)
        if not transition.effects:
            return None
        self.log.info("binding port {uuid} again", uuid=uuid)
        return self._carry_out(
            uuid, port.binding, transition, port, port, Changes.between(None, port)
        )

    # -- carrying out transitions

    def _carry_out(self, uuid, prior, transition, prev, port, changes, start=0):
        """
        Carry out a transition's effects in order from C{start}, waiting for each
        backend call that answers with a Deferred.

        @return: C{None} when every effect is done, or a Deferred firing when they are.
        """
        effects = transition.effects
        for i in range(start, len(effects)):
            done = self._effect(effects[i], uuid, prior, prev, changes)
            if isinstance(done, Deferred):
                return done.addCallback(
                    lambda _, i=i: self._carry_out(
                        uuid, prior, transition, prev, port, changes, i + 1
                    )
                )
        return None

    def _effect(self, effect, uuid, prior, prev, changes):
        """
        Carry out one effect of a port transition; return what the backend call
        returned, if any.
        """
        if effect == BIND:
            return self._bind(uuid, prior, changes)
        if effect == portstate.UNBIND:
            return self.backend.call(
                "unbind_port", "port " + uuid, uuid, self.model, changes
            )
        if effect == portstate.MODIFY:
            return self.backend.call(
                "modify_port", "port " + uuid, uuid, self.model, changes
            )
        if effect == portstate.DELETE:
            return self.backend.call(
                "delete_port", "port " + uuid, uuid, self.model, prev
            )
        if effect == portstate.CLEAR_RESULT:
            self.results.clear(uuid)
        elif effect == portstate.RELEASE_RESULT:
            self.results.clear(uuid, delay=self.release_delay)
        elif effect == portstate.DELETE_RESULT:
            self.results.remove(uuid)
        return None

    @inlineCallbacks
    def _bind(self, uuid, prior, changes):
        seen = self.reactor.seconds()
        ok, result = yield self.backend.call(
            "bind_port", "port %s" % (uuid,), uuid, self.model, changes
        )
        if ok and result and not isinstance(result, dict):
            self.log.error(
                "backend bind_port for port {uuid} returned {result!r}, not a dict; "
                "leaving the port unbound", uuid=uuid, result=result,
            )
            ok = False
        accepted = bool(ok and result)
        if ok and not result:
            self.log.info(
                "backend rejected the bind of port {uuid}; it is bound again when its "
                "VPN binding, VPN or route targets change", uuid=uuid,
            )
        outcome = portstate.on_bind_outcome(prior, accepted)
        port = self.model.ports.get(uuid)
        if port is not None:
            port.binding = outcome.state
            if accepted:
                _take_result(port, result)
            elif prior == BOUND:
                _forget_result(port)
        for effect in outcome.effects:
            if effect == portstate.WRITE_RESULT:
                self.results.publish(
                    uuid, result, on_written=lambda: self._bound(uuid, seen)
                )
            elif effect == portstate.CLEAR_RESULT:
                self.results.clear(uuid)

    def _bound(self, uuid, seen):
        elapsed = self.reactor.seconds() - seen
        self.metrics.bind_latency.observe(elapsed)
        self.log.info(
            "port {uuid} bound; result written {ms:.1f} ms after the request",
            uuid=uuid, ms=elapsed * 1000,
        )

    # -- readiness

    def _set_ready(self):
        if not self.ready:
            self.ready = True
            self.not_ready_reason = None
            self.metrics.ready.set(1)
            self.log.info(
                "shim ready: {objects} objects, watching from revision {revision}",
                objects=sum(self.model.counts().values()), revision=self.revision + 1,
            )
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(self)

    def _set_not_ready(self, reason):
        self.ready = False
        self.not_ready_reason = reason
        self.metrics.ready.set(0)


def _take_result(port, result):
    """
    Make C{result} (a bind result: C{vif_type}, C{vif_details}) the port's, and merge
    its vif attributes into the port as proton would write them.
    """
    port.result = {
        "vif_type": result.get("vif_type"),
        "vif_details": json.dumps(result.get("vif_details")),
    }
    port.update(port.result)


def _merge_result(port, value):
    """
    Make a bind result's raw value (as read from etcd) the port's.
    """
    _take_result(port, json.loads(value))


def _forget_result(port):
    """
    The port is no longer bound by us: clear its vif attributes in the model.
    """
    port.result = None
    port["vif_type"] = port["vif_details"] = None


def _same(table, known, kv):
    """
    Whether an etcd value holds the same object as the model's C{known} one (a Bound
    port's vif attributes, merged from its bind result, set aside).
    """
    try:
        obj = decode(table, kv.value, kv.mod_revision)
    except BadValue:
        return False
    if table == keys.PORT:
        _keep_result(obj, known)
    return obj == known


def _keep_result(port, prev):
    """
    A Bound port's new row: carry its bind result over, and fill in the vif attributes
    the row leaves empty from it.
    """
    result = port.result = prev.result if prev is not None else None
    if result:
        for name, value in result.items():
            if not port.get(name):
                port[name] = value


def _result_of(port):
    """
    The bind result a Bound port was given.
    """
    result = port.result or port
    details = result.get("vif_details")
    try:
        details = json.loads(details) if isinstance(details, str) else details
    except ValueError:
        pass
    return {"vif_type": result.get("vif_type"), "vif_details": details}


def _client_for(config, reactor):
    return EtcdClient(
        endpoints=list(config.etcd_endpoints),
        timeout=config.etcd_timeout,
        username=config.username,
        password=config.password,
        ca_file=config.ca_file,
        cert_file=config.cert_file,
        key_file=config.key_file,
        reactor=reactor,
    )
