"""
The controller: reconciles each port, and each service, with what the backend was told.

Events, snapshots, resyncs and restarts only mark keys dirty (L{Controller.changed},
L{Controller.snapshot_applied}); the L{shim.workqueue.WorkQueue} runs one worker per
key.  A worker compares the current model with what the backend has been told for
that key (L{Told}) and makes the calls that close the difference:

  - a port key (C{("port", uuid)}) is decided by L{shim.portstate.decide}: bind,
    unbind, modify or delete the port, then bring its service bindings in line
    (C{modify_service_binding}, C{delete_service_binding}) and its bind result in
    etcd.  After each backend call the port is decided again from the model as it is
    then, so whatever changed during the call is taken into account.
  - a service key (C{("service", id)}) calls C{modify_service} when a port bound by us
    was told an older version of the service or of one of its route targets, and
    C{delete_service} when the service is gone.

What the backend has been told is recorded per port: the placement it was bound for,
the port as last told (C{changes.prev}), the bind result written, its service
bindings, and the version of each service and route target it heard about.  A failed
or malformed backend answer leaves the record as it was, and the key is retried with
backoff: what was not done is done later, whatever caused the attempt.

Order between a service and its ports: a service's callbacks may overlap a bind of a
port that uses it.  The bind records the service version the backend was given when
the bind started; once it completes, the port's reconcile sees that the backend heard
an older version and marks the service, whose worker calls C{modify_service} (or
C{delete_service}).
"""

import sys

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from shim import bindresult, portstate
from shim.bindresult import MalformedAnswer
from shim.model import Changes, Port
from shim.portstate import BOUND, UNBOUND
from shim.schema import VIF_ATTRIBUTES, VOLATILE
from shim.turns import Moves, NameSet, keys_of, walk

#: Seconds after a port migrated to another controller's host before this shim
#: clears its old bind result: proton waits about 8 seconds for the new one.
RELEASE_DELAY = 10.0

#: Backend calls in one pass over a port before the key is requeued: a port whose
#: model keeps changing under its calls cannot hold a worker for ever.
MAX_STEPS = 8

PORT = "port"
SERVICE = "service"

#: What a step of a port's reconcile returns when nothing is left to do.
_DONE = object()

#: Port attributes whose change is not a change of the port for C{modify_port}.
_NOT_A_CHANGE = VOLATILE | frozenset(VIF_ATTRIBUTES)


class Told:
    """
    What the backend has been told about one port bound by this shim.

    One per bound port, hundreds of thousands of them on a large site: the
    placement is the result's, and the bindings and services are kept as flat
    tuples (a port has one or two), not dicts.

    @ivar port: the port object as last told (the C{changes.prev} of the next call).
    @ivar result: the L{shim.bindresult.BindResult} published for it.
    @ivar result_revision: the etcd revision our result was last written at (0 when
        unknown).
    @ivar bindings: binding name and binding object last told, in turn, in one
        flat tuple (L{_pairs}).
    @ivar services: service id and the version last told (L{Controller.version}),
        in turn, in one flat tuple.
    """

    __slots__ = ("port", "result", "result_revision", "bindings", "services",
                 "asked_again")

    def __init__(self, port, result, bindings, services=()):
        self.port = port
        self.result = result
        self.result_revision = 0
        self.bindings = bindings
        self.services = services
        self.asked_again = False

    @property
    def placement(self):
        """
        C{(host_id, device_id)} the port was bound for: its result's.
        """
        result = self.result
        return (result.host_id, result.device_id) if result is not None else None


def _pairs(flat):
    """
    The C{(name, value)} pairs of a flat tuple C{(name, value, name, value, ...)}:
    a port's few bindings and services kept as one tuple, not a dict or a tuple of
    tuples each.
    """
    return zip(flat[::2], flat[1::2])


def _flat(pairs):
    """
    A flat tuple of C{(name, value)} pairs.
    """
    return tuple([item for pair in pairs for item in pair])


def _get(flat, name):
    """
    The value paired with C{name} in a flat tuple, or C{None}.
    """
    for key, value in _pairs(flat):
        if key == name:
            return value
    return None


def _without(flat, name):
    """
    A flat tuple without C{name} and its value.
    """
    return _flat([pair for pair in _pairs(flat) if pair[0] != name])


def _with(flat, name, value):
    """
    A flat tuple with C{name} paired with C{value}.
    """
    return _without(flat, name) + (name, value)


class Controller:
    """
    Reconciles ports and services with the backend and the bind results in etcd.

    @ivar told: port uuid to its L{Told}, for every port the backend holds as bound
        by us.
    """

    log = Logger()

    def __init__(self, model, backend, writer, queue_factory, config, clock, metrics,
                 acting=lambda: True, epoch=lambda: None):
        self.model = model
        self.schema = model.schema
        self.backend = backend
        self.writer = writer
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.acting = acting
        self.epoch = epoch
        self.release_delay = RELEASE_DELAY
        self.told = {}
        # ports told added and removed so far (see _told_names)
        self._told_moves = Moves()
        # service id -> the uuids of ports whose Told lists it
        self._service_users = {}
        # port uuid -> when its bind request was first seen, for the latency metric
        self._bind_seen = {}
        # port uuid -> the placement whose bind the backend rejected
        self._rejected = {}
        # service id -> its last version, shared by every Told that heard it
        self._version_of = {}
        # vif_details JSON text -> (dict, text) shared by the bind results that have it
        self._details = {}
        self.queue = queue_factory(self._reconcile)
        #: True while a full snapshot is being applied.
        self.snapshotting = False
        # The result keys the last read found (over v2), and the revision it read
        # at, until the watch catches up.
        self._precreate_after = None
        # The walk creating the missing result keys; a full read begun ends it.
        self._precreating = None
        self._results_seen = NameSet()
        #: Whether result keys are created as {} when ports appear: a work-around
        #: for the wait-index bug of proton's v2 client (docs/real-proton.md).  Over
        #: v3 it would only make a proton that waits from the key's revision start
        #: its watch in the past, which etcd serves from its 100 ms sync loop.
        self.precreate_results = getattr(config, "etcd_api", "v3") == "v2"
        self._is_our_host = config.is_our_host

    # -- marking

    def changed(self, table, name, prev, obj):
        """
        The model changed: C{prev} was replaced by C{obj} (either may be C{None}).
        Mark the keys the change concerns.
        """
        schema = self.schema
        mark = self._mark_port
        if self.snapshotting:
            # The sweep after the snapshot reconciles every port that can need it.
            mark = _ignore
        if table == schema.port:
            if obj is not None:
                self._port_row(name, prev, obj)
                if prev is None and not self.snapshotting and self.precreate_results:
                    # A new port: its result key is created as {} now (proton's
                    # wait-index bug); a snapshot creates those it found missing.
                    self.writer.precreate(name, first=True)
            else:
                self._bind_seen.pop(name, None)
            mark(name)
        elif table == schema.binding:
            for port in self.model.ports_of_interface(name):
                mark(port)
        elif table == schema.interface:
            for o in (prev, obj):
                if o is not None:
                    port = o.get(schema.interface_port)
                    if port:
                        mark(port)
        elif table == schema.service:
            self._service_changed(name)
        elif table == schema.route_target:
            for service in self.model.services_listing_route_target(name):
                self._service_changed(service)

    def _mark_port(self, uuid):
        # Something the port depends on changed: a refused bind is tried again.
        self._rejected.pop(uuid, None)
        self.queue.mark((PORT, uuid))

    def _service_changed(self, service):
        self.queue.mark((SERVICE, service))
        # A port whose bind was refused is tried again when its service changes.
        for port in self.model.ports_using_service(service):
            if port not in self.told:
                self._mark_port(port)

    def _port_row(self, uuid, prev, port):
        """
        A new row of port C{uuid}: note whether proton asked again, and carry our
        bind result's vif attributes into the model's port.
        """
        told = self.told.get(uuid)
        if prev is not None:
            # The state stays what it was until the reconcile decides again.
            port.binding = prev.binding
        if told is None:
            if (
                not self.snapshotting
                and portstate.is_bind_request(port)
                and self._is_our_host(port.get("host_id"))
                and uuid not in self._bind_seen
            ):
                self._bind_seen[uuid] = self.clock.seconds()
            return
        if (
            told.result is not None
            and port.revision > told.result_revision
            and portstate.placement(port) == told.placement
            and not told.result.answered(port)
        ):
            # Proton wrote the port again without our answer: it timed out, or Nova
            # asked again.  Publish the result again, as a new revision.
            told.asked_again = True
            self._bind_seen.setdefault(uuid, self.clock.seconds())
        if told.result is not None:
            _merge(port, told.result)

    def snapshot_started(self, full=True):
        """
        A snapshot is about to be read.

        @param full: a full resynchronisation (not beside the watch): its ports are
            not new ports, and nothing is decided until it is applied.
        """
        if full:
            self.snapshotting = True
            # The read finds again every key a walk, or the writer, would still
            # create: none is written before the watch after it has caught up.
            self._precreating = None
            self.writer.drop_precreates()
        self._results_seen = NameSet()

    def snapshot_results(self, kvs, restore):
        """
        A page of the bind results a snapshot read (after every table): what etcd
        holds is noted, the results naming us are restored when C{restore}, and
        their ports marked.

        @param kvs: C{[KeyValue]} under the result prefix.
        @param restore: whether this is the first snapshot since start-up (or a
            takeover): the bind results naming us are taken to be what the backend
            holds.
        """
        schema = self.schema
        name = self.config.controller_name
        writer = self.writer
        told = self.told
        seen = self._results_seen
        sweep = self.queue.sweep
        key_of = self.model.key_of
        ports = self.model.ports
        is_ours = self._is_our_host
        ours = {}
        for kv in kvs:
            uuid = schema.result_uuid(kv.key)
            if uuid is None:
                continue
            uuid = key_of(schema.port, uuid)
            seen.add(uuid)
            if restore:
                controller, result = bindresult.read(kv.value)
            else:
                controller = bindresult.controller_of(kv.value)
            mine = controller == name
            if (mine or uuid in told) and uuid not in writer.pending:
                writer.note(uuid, kv.mod_revision, kv.value, mine)
            if mine:
                if restore:
                    if result is not None:
                        ours[uuid] = result
                elif uuid not in told:
                    port = ports.get(uuid)
                    if port is None or not is_ours(port.get("host_id")):
                        # Ours, of a port gone or moved: removed or released.  The
                        # sweep after the snapshot reaches the others.
                        sweep((PORT, uuid))
        if ours:
            self._restore(ours)

    @inlineCallbacks
    def snapshot_applied(self, first, revision=None, full=True):
        """
        A snapshot has been applied to the model: every port on our hosts, and every
        port the backend holds as bound, is reconciled (refused and failed binds
        tried again, missing or foreign results repaired), by a sweep behind the
        ports that changes mark.  The walks over the model run a slice per reactor
        turn.  Over v2, the result keys the read found missing are created too,
        once etcd holds the watch past its history (L{caught_up}).

        @param first: whether it was the first since start-up (or a takeover).
        @param revision: the revision the snapshot read the results at: a result
            written after it is newer than the snapshot, not missing from it.
        @param full: whether it was a full read (the watch stopped), not a read
            beside the live watch.
        @return: a Deferred firing when the sweep is queued.
        """
        seen, self._results_seen = self._results_seen, NameSet()
        if full:
            self.snapshotting = False
        self._rejected.clear()
        writer = self.writer
        told = self.told

        def missing(uuid):
            if uuid in told and uuid not in seen and uuid not in writer.pending:
                if revision is not None and writer.revision(uuid) > revision:
                    # Written after the read (a bind during a resync): not missing.
                    return
                # Our result went missing: the reconcile writes it again.
                writer.note(uuid, 0, None)

        yield walk(self.clock, self._told_names(), missing)
        if self.precreate_results:
            # The result keys found missing are created once the watch has
            # caught up (at once when it had).
            self._precreate_after = (seen, revision)
        else:
            seen.clear()
        self.queue.sweep_all(self._sweep(self.model.names(self.schema.port),
                                         self._told_names()))

    def caught_up(self):
        """
        etcd holds the watch past its history: over v2, create the result key (as
        C{{}}) of each port the last read found without one.  Not sooner: etcd's
        v2 history holds 1000 events of its whole store, and these writes would
        push a watch that starts from the read's index, or catches up, out of it
        (see L{shim.service.ShimService.caught_up}).  The walk ends,
        and the keys it left with the writer are dropped, when a full read
        begins: that read finds the keys again, and its own catch-up creates
        those still missing.

        @return: a Deferred firing when every key missing was asked for (or the
            walk ended).
        """
        after, self._precreate_after = self._precreate_after, None
        if after is None:
            return succeed(None)
        seen, revision = after
        writer = self.writer
        ports = self.model.ports
        self._precreating = this = object()

        def names():
            for uuid in self.model.names(self.schema.port):
                if self._precreating is not this:
                    return
                yield uuid

        def precreate(uuid):
            if uuid not in seen and uuid in ports:
                writer.precreate_missing(uuid, revision)

        done = walk(self.clock, names(), precreate)
        done.addBoth(lambda outcome: (seen.clear(), outcome)[1])
        return done

    def _sweep(self, port_names, told_names):
        """
        The keys of a sweep after a snapshot: every port bound by us or on our
        hosts, then every port told and gone.  Any other port needs nothing of us
        (its result, if it names us, was swept when read): its state is decided
        here, without effects.  C{None} now and then while it skips other ports, so
        that the queue's turn stays short.
        """
        ports = self.model.ports
        told = self.told
        is_ours = self._is_our_host
        skipped = 0
        for uuid in port_names:
            port = ports.get(uuid)
            if uuid in told or (port is not None and is_ours(port.get("host_id"))):
                yield (PORT, uuid)
            else:
                if port is not None:
                    port.binding = portstate.decide(None, port, is_ours).state
                skipped += 1
                if skipped == 64:
                    skipped = 0
                    yield None
        for uuid in told_names:
            if uuid not in ports:
                yield (PORT, uuid)

    def _restore(self, ours):
        """
        After a restart or a takeover: the backend is taken to hold what the results
        naming us say.  Service-level callbacks are not replayed.  What this shim
        told the backend itself before (it acted, stood by, and acts again) is kept
        where no result says otherwise: a port it bound that is gone meanwhile still
        gets its C{delete_port}.

        @param ours: port uuid to the L{bindresult.BindResult} naming us.
        """
        for uuid, result in ours.items():
            told = self.told.get(uuid)
            if told is not None and told.result is not None and told.result == result:
                continue
            port = self.model.ports.get(uuid)
            current = portstate.placement(port) if port is not None else (None, None)
            placement = result.placement
            if placement is None or placement == current:
                # Bound for the current placement (a result without one was written
                # by an earlier version); the port's own strings are kept, once.
                placement = current
            result = self._shared(result.for_placement(result.controller, *placement))
            if port is not None and current == placement:
                told_port = port
            else:
                # changes.prev is the placement recorded in the result.
                told_port = Port(port or {"id": uuid})
                told_port.revision = 0
                told_port.binding = BOUND
                told_port.result = None
                told_port["host_id"], told_port["device_id"] = placement
            told = Told(told_port, result, _flat(self.model.bindings_of_port(uuid).items()))
            told.result_revision = self.writer.revision(uuid)
            self._set_told(uuid, told)
            told.services = self._versions(uuid)
            if port is not None:
                port.binding = BOUND
                port.result = result
                _merge(port, result)

    # -- the versions of services

    def version(self, service):
        """
        The version of a service the backend hears of: its object and the objects of
        its route targets, as the model has them now.
        """
        model = self.model
        obj = model.services.get(service)
        if obj is None:
            self._version_of.pop(service, None)
            return None
        rts = model.route_targets
        # One tuple per service version, shared by the ports that heard it: with
        # hundreds of thousands of bound ports, one per port would cost megabytes.
        known = self._version_of.get(service)
        if known is not None and known[0] is obj and all(
                rts.get(rt) is o for rt, o in known[1]):
            return known
        version = (obj, tuple((rt, rts.get(rt)) for rt in model.route_targets_of(obj)))
        self._version_of[service] = version
        return version

    def _shared(self, result):
        """
        C{result} with its C{vif_details} (and their JSON text) shared with the equal
        results seen before: a backend answers most binds alike.
        """
        result.vif_type = sys.intern(result.vif_type)
        if result.controller == self.config.controller_name:
            result.controller = self.config.controller_name
        text = result.details_text
        shared = self._details.get(text)
        if shared is None:
            if len(self._details) < 1024:
                self._details[text] = (result.vif_details, text)
        else:
            result.vif_details, result._details_text = shared
        return result

    def _versions(self, uuid):
        return _flat([(s, self.version(s)) for s in self.model.services_of_port(uuid)])

    def _set_told(self, uuid, told):
        old = self.told.get(uuid)
        if old is not None:
            self._unuse(uuid, old)
        if told is None:
            if old is not None:
                del self.told[uuid]
                self._told_moves.removed += 1
            return
        if old is None:
            self._told_moves.added += 1
        self.told[uuid] = told

    def _told_names(self):
        """The uuids of the ports told, drawn lazily (see L{shim.turns.keys_of})."""
        return keys_of(self.told, self._told_moves)

    def _use(self, uuid, told, versions):
        self._unuse(uuid, told)
        told.services = versions
        for s in versions[::2]:
            self._service_users.setdefault(s, set()).add(uuid)

    def _unuse(self, uuid, told):
        for s in told.services[::2]:
            users = self._service_users.get(s)
            if users is not None:
                users.discard(uuid)
                if not users:
                    del self._service_users[s]

    # -- reconciling

    def _reconcile(self, key):
        kind, name = key
        if not self.acting():
            return None
        if kind == PORT:
            return self._reconcile_port(name)
        return self._reconcile_service(name)

    @inlineCallbacks
    def _reconcile_port(self, uuid):
        for _ in range(MAX_STEPS):
            if not self.acting():
                return None
            step = self._port_step(uuid)
            if step is _DONE:
                return None
            failed = yield step
            if failed:
                return failed
        self.queue.mark((PORT, uuid))
        return None

    def _port_step(self, uuid):
        """
        Decide port C{uuid} once and start the first backend call that the decision
        needs, after doing the result writes that come before it.

        @return: L{_DONE} when nothing is left to do, else a Deferred (or value)
            firing with C{None} to decide again, or the name of a failed call.
        """
        model = self.model
        port = model.ports.get(uuid)
        told = self.told.get(uuid)
        writer = self.writer
        if told is None and port is None and not writer.names_us(uuid):
            writer.remove_empty(uuid)
        ours = writer.names_us(uuid)
        changed = told is not None and port is not None and _differs(told.port, port)
        current = True
        if told is not None and told.result is not None:
            current = (
                not told.asked_again and self.writer.holds(uuid, told.result.encode())
            )
        transition = portstate.decide(
            told.placement if told is not None else None, port, self._is_our_host,
            port_changed=changed, result_current=current, result_ours=ours,
        )
        if port is not None:
            port.binding = transition.state
        effects = transition.effects
        if portstate.BIND in effects and port is not None:
            if self._rejected.get(uuid) == portstate.placement(port):
                # Refused for this placement, and nothing it depends on changed since
                # (a change clears the refusal).
                effects = effects[:effects.index(portstate.BIND)]
                if port is not None and told is None:
                    port.binding = UNBOUND
        for effect in effects:
            if effect in portstate.CALLS:
                return self._call(effect, uuid, port, told)
            self._result_effect(effect, uuid, told)
        if told is not None and port is not None and port.binding == BOUND:
            return self._sync_services(uuid, port, told)
        return _DONE

    def _result_effect(self, effect, uuid, told):
        writer = self.writer
        if effect == portstate.WRITE_RESULT:
            again, told.asked_again = told.asked_again, False
            writer.publish(
                uuid, told.result,
                on_written=lambda revision: self._written(uuid, told, revision),
                again=again,
            )
        elif effect == portstate.CLEAR_RESULT:
            writer.clear(uuid)
        elif effect == portstate.RELEASE_RESULT:
            if uuid not in writer.delayed:
                writer.clear(uuid, delay=self.release_delay)
        elif effect == portstate.DELETE_RESULT:
            writer.remove(uuid)

    def _written(self, uuid, told, revision):
        told.result_revision = max(told.result_revision, revision or 0)
        seen = self._bind_seen.pop(uuid, None)
        if seen is not None:
            elapsed = self.clock.seconds() - seen
            self.metrics.bind_latency.observe(elapsed)
            self.log.info(
                "port {uuid} bound; result written {ms:.1f} ms after the request",
                uuid=uuid, ms=elapsed * 1000,
            )

    def _call(self, effect, uuid, port, told):
        if effect == portstate.BIND:
            return self._bind(uuid, port)
        if effect == portstate.UNBIND:
            changes = Changes.between(told.port, port)
            return self._told_call(
                "unbind_port", uuid, (uuid, self.model, changes),
                lambda: self._unbound(uuid, port),
            )
        if effect == portstate.MODIFY:
            changes = Changes.between(_comparable(told.port), _comparable(port))
            return self._told_call(
                "modify_port", uuid, (uuid, self.model, changes),
                lambda: setattr(told, "port", port),
            )
        # DELETE
        return self._told_call(
            "delete_port", uuid, (uuid, self.model, told.port),
            lambda: self._unbound(uuid, None),
        )

    def _unbound(self, uuid, port):
        told = self.told.get(uuid)
        self._set_told(uuid, None)
        if port is not None:
            port.result = None
            result = told.result if told is not None else None
            if result is not None:
                # Clear the vif attributes we merged in; what proton wrote itself
                # (1.x's unbind writes vif_details "{}") stays as etcd has it.
                for name, value in result.vif_attributes().items():
                    if port.get(name) == value:
                        port[name] = None

    def _told_call(self, callback, uuid, args, then):
        """
        Call C{callback}; when it succeeds, C{then()} records what the backend now
        knows.  A Deferred (or value) firing with C{None}, or the callback's name when
        it failed.
        """
        outcome = self.backend.call(callback, "port %s" % (uuid,), *args)

        def done(answer):
            ok, _ = answer
            if not ok:
                return callback
            then()
            return None

        if isinstance(outcome, Deferred):
            return outcome.addCallback(done)
        return done(outcome)

    @inlineCallbacks
    def _bind(self, uuid, port):
        self.writer.cancel(uuid)
        self._bind_seen.setdefault(uuid, self.clock.seconds())
        placement = portstate.placement(port)
        versions = self._versions(uuid)
        bindings = self.model.bindings_of_port(uuid)
        ok, answer = yield self.backend.call(
            "bind_port", "port %s" % (uuid,), uuid, self.model,
            Changes.between(None, port),
        )
        if not ok:
            return "bind_port"
        try:
            result = bindresult.from_answer(answer)
        except MalformedAnswer as e:
            self.backend.malformed("bind_port", "port %s" % (uuid,), answer, e)
            return "bind_port"
        if result is None:
            self.log.info(
                "backend rejected the bind of port {uuid}; it is bound again when its "
                "service binding, service or route targets change, or at the next "
                "resync", uuid=uuid,
            )
            self._rejected[uuid] = placement
            self._bind_seen.pop(uuid, None)
            if self.writer.names_us(uuid):
                self.writer.clear(uuid)
            return None
        self._rejected.pop(uuid, None)
        result = self._shared(
            result.for_placement(self.config.controller_name, *placement))
        long = result.too_long_for_proton()
        if long:
            self.log.warn(
                "the bind result of port {uuid} has {fields}, longer than proton 1.x's "
                "database columns (vif_type 32, vif_details 128): it breaks proton on "
                "MySQL", uuid=uuid,
                fields=", ".join("%s of %d characters" % kv for kv in sorted(long.items())),
            )
        told = Told(port, result, _flat(bindings.items()))
        self._set_told(uuid, told)
        self._use(uuid, told, versions)
        current = self.model.ports.get(uuid)
        if current is not None:
            current.result = result
            current.binding = BOUND
            _merge(current, result)
        self._result_effect(portstate.WRITE_RESULT, uuid, told)
        return None

    def _sync_services(self, uuid, port, told):
        """
        Bring a bound port's service bindings in line, and mark its services whose
        version the backend has not heard.
        """
        model = self.model
        current = model.bindings_of_port(uuid)
        for name, binding in current.items():
            prev = _get(told.bindings, name)
            if prev is None or _differs(prev, binding):
                return self._told_call(
                    "modify_service_binding", uuid,
                    (uuid, model, prev if prev is not None else {}),
                    lambda name=name, binding=binding: self._bound_to(
                        uuid, told, name, binding),
                )
        for name, prev in _pairs(told.bindings):
            if name not in current:
                return self._told_call(
                    "delete_service_binding", uuid, (model, prev),
                    lambda name=name: self._bound_to(uuid, told, name, None),
                )
        for service, version in _pairs(told.services):
            if not _same_version(version, self.version(service)):
                self.queue.mark((SERVICE, service))
        return _DONE

    def _bound_to(self, uuid, told, name, binding):
        if binding is None:
            told.bindings = _without(told.bindings, name)
        else:
            told.bindings = _with(told.bindings, name, binding)
        # The backend read the port's services with the binding.
        self._use(uuid, told, self._versions(uuid))

    def _reconcile_service(self, service):
        users = self._service_users.get(service)
        if not users:
            return None
        model = self.model
        current = self.version(service)
        about = "service %s" % (service,)
        if current is None:
            prev = None
            for uuid in users:
                version = _get(self.told[uuid].services, service)
                if version is not None:
                    prev = version[0]
                    break
            outcome = self.backend.call(
                "delete_service", about, service, model, prev)
            return _then(outcome, "delete_service",
                         lambda: self._heard(service, users, None, drop=True))
        stale = [
            u for u in users
            if not _same_version(_get(self.told[u].services, service), current)
        ]
        if not stale:
            return None
        old = _get(self.told[stale[0]].services, service)
        changes = _service_changes(old, current)
        outcome = self.backend.call("modify_service", about, service, model, changes)
        return _then(outcome, "modify_service",
                     lambda: self._heard(service, stale, current))

    def _heard(self, service, users, version, drop=False):
        for uuid in list(users):
            told = self.told.get(uuid)
            if told is None:
                continue
            if drop:
                told.services = _without(told.services, service)
            else:
                told.services = _with(told.services, service, version)
        if drop:
            self._service_users.pop(service, None)


def _ignore(_):
    pass


def _then(outcome, callback, record):
    def done(answer):
        ok, _ = answer
        if not ok:
            return callback
        record()
        return None

    if isinstance(outcome, Deferred):
        return outcome.addCallback(done)
    return done(outcome)


def _merge(port, result):
    """
    Make C{result} the port's, with its vif attributes merged into the row as proton
    writes them.
    """
    port.result = result
    port.update(result.vif_attributes())


def _comparable(obj):
    """
    An object's attributes without those whose change the backend need not hear.
    """
    if obj is None:
        return None
    return {k: v for k, v in obj.items() if k not in _NOT_A_CHANGE}


def _differs(a, b):
    """
    Whether two rows differ in anything but proton's time stamps and our own vif
    attributes.
    """
    if a is b:
        return False
    for k in a.keys() | b.keys():
        if k in _NOT_A_CHANGE:
            continue
        if a.get(k) != b.get(k):
            return True
    return False


def _same_version(a, b):
    if a is b:
        return True
    if a is None or b is None:
        return False
    (obj_a, rts_a), (obj_b, rts_b) = a, b
    if len(rts_a) != len(rts_b) or _differs(obj_a, obj_b):
        return False
    for (name_a, rt_a), (name_b, rt_b) in zip(rts_a, rts_b):
        if name_a != name_b:
            return False
        if rt_a is None or rt_b is None:
            if rt_a is not rt_b:
                return False
        elif _differs(rt_a, rt_b):
            return False
    return True


def _service_changes(old, current):
    """
    The changes C{modify_service} receives: of the service object when it changed,
    else of the first route target that did.
    """
    if old is None:
        return Changes.between(None, _comparable(current[0]))
    changes = Changes.between(_comparable(old[0]), _comparable(current[0]))
    if changes:
        return changes
    before = dict(old[1])
    for name, rt in current[1]:
        prev = before.get(name)
        if prev is None and rt is None:
            continue
        if prev is None or rt is None or _differs(prev, rt):
            return Changes.between(_comparable(prev), _comparable(rt))
    return changes

