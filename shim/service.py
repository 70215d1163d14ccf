"""
The shim daemon: wires the follower, the controller and the result writer together.

  - L{shim.follower.Follower} keeps the model in step with etcd (snapshot, watch,
    resume, resyncs, readiness) and hands each change on;
  - L{shim.controller.Controller} marks the keys a change concerns and reconciles
    them on its L{shim.workqueue.WorkQueue}, calling the backend through
    L{shim.calls.BackendCaller};
  - L{shim.results.ResultWriter} writes bind results, compare-and-set;
  - with election on, L{shim.election.Election} decides whether this shim acts: a
    standby keeps its model live and its queue paused, calls no backend and writes
    nothing but its campaign.

L{ShimService} owns no decision of its own.
"""

import gc
import os
import socket

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from shim import __version__
from shim.calls import BackendCaller
from shim.controller import Controller
from shim.etcd import EtcdClient
from shim.follower import Follower
from shim.metrics import Metrics
from shim.model import Model
from shim.results import ResultWriter
from shim.schema import model_named
from shim.workqueue import WorkQueue

#: Seconds that stopping waits for running callbacks and result writes.
STOP_TIMEOUT = 10.0

#: Objects read at start-up from which the model is frozen out of the garbage
#: collector's reach (below, a full collection is quick anyway).
FREEZE_AT = 50000

SINGLE = "single"
LEADER = "leader"
STANDBY = "standby"


def release_free_memory():
    """
    Hand the C heap's free memory back to the system (glibc's C{malloc_trim}): after
    a snapshot of a large site, tens of megabytes of pages read and decoded are free
    but still resident.  Elsewhere than glibc, nothing.
    """
    try:
        import ctypes
        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return
    trim(0)


class ShimService(Service):
    """
    The shim: the model of proton's objects in etcd, and the backend driven from it.

    @ivar model: the L{shim.model.Model}.
    @ivar role: C{"single"} (election off), C{"leader"} or C{"standby"}.
    """

    log = Logger()

    def __init__(self, config, backend, reactor=None, client=None, metrics=None,
                 election_client=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.schema = model_named(getattr(config, "api_model", "net-l3vpn"))
        self.model = Model(self.schema)
        self.model.epoch = None
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watch_model(self.model)
        self._own_client = client is None
        self.client = client if client is not None else _client_for(config, reactor)
        self.backend = BackendCaller(
            backend, config.backend_timeout, reactor, self.metrics,
            bind_timeout=getattr(config, "bind_timeout", None),
        )
        self.election = None
        self.role = SINGLE
        self._election_client = election_client
        self._stepping_down = None
        self._looked_elsewhere = False
        self._looking = None
        self._frozen = False
        # After a full read the queue waits for the watch that follows it (watching).
        self._until_watching = False
        # Elections won so far, and how many the read under way began after.
        self._elections = 0
        self._read_after = 0
        # After a takeover the queue waits for a snapshot that restores the bind
        # results as what the backend holds, begun after this many elections
        # (None: waits for none).
        self._restore_after = None
        self.writer = self.results = ResultWriter(
            self.client, self.schema, config.controller_name, reactor, self.metrics,
            acting=self.acting, fence=self._fence,
            on_conflict=lambda uuid: self.controller.queue.mark(("port", uuid)),
        )
        self.controller = Controller(
            self.model, self.backend, self.writer,
            lambda reconcile: WorkQueue(reconcile, reactor, self.metrics),
            config, reactor, self.metrics, acting=self.acting,
        )
        self.queue = self.controller.queue
        self.follower = Follower(
            self.client, self.model, self, reactor, self.metrics,
            resync_interval=config.resync_interval,
            watch_idle_timeout=config.watch_idle_timeout,
        )
        self.start_failed = self.follower.start_failed
        self.metrics.revision.set_function(lambda: self.follower.revision)
        if hasattr(self.metrics, "describe_shim"):
            from shim.metrics import group_of
            self.metrics.describe_shim(
                __version__, config.controller_name,
                getattr(config, "etcd_api", "v3"), self.schema.name,
                group=group_of(config.host_list),
            )
        if config.election_enabled and (client is None or election_client is not None):
            self._make_election()
        for name, getter in (
            ("queue_depth", lambda: self.queue.depth),
            ("queue_oldest", self.queue.oldest_age),
            ("writes_pending", lambda: len(self.writer.pending)),
        ):
            gauge = getattr(self.metrics, name, None)
            if gauge is not None:
                gauge.set_function(getter)

    # -- what the follower reports (the sink)

    def changed(self, table, name, prev, obj):
        self.controller.changed(table, name, prev, obj)

    def snapshot_started(self, full=True):
        if full:
            self.queue.pause()
            self._until_watching = True
        # Which election this read begins after (reads never overlap).
        self._read_after = self._elections
        self.controller.snapshot_started(full)

    def snapshot_results(self, kvs, restore):
        self.controller.snapshot_results(kvs, restore)

    @inlineCallbacks
    def snapshot_applied(self, first, revision=None, full=True):
        if (first and self._own_client and not self._looked_elsewhere
                and not any(self.model.counts().values())):
            self._looked_elsewhere = True
            self._looking = self._look_at_other_api()
        yield self.controller.snapshot_applied(first, revision, full)
        if (first and self._restore_after is not None
                and self._read_after >= self._restore_after):
            # Begun late enough, it holds every result the last leader wrote.
            self._restore_after = None
        if first and not self._frozen and sum(self.model.counts().values()) >= FREEZE_AT:
            # The model read at start-up lives as long as the process: moved out of
            # the collector's generations, a full collection no longer walks millions
            # of rows in the middle of a bind (0.6 s at a million objects).
            self._frozen = True
            gc.collect()
            gc.freeze()
            # The snapshot's pages are freed: give the heap they took back.
            release_free_memory()
        if not full and self.follower.caught_up:
            self.caught_up()
        if not self._until_watching:
            self._resume_work()

    def watching(self):
        """
        A watch is open at etcd (after a full read, or resumed).  After a full
        read, the writes it calls for (the sweep's) go from now on.  Over v2 etcd
        keeps the last 1000 events of its whole store, and a watch from the
        read's index opened after more writes than that is answered "event index
        cleared": written sooner, the shim's own writes would have it read
        everything again, and again for as long as they last.
        """
        if self._until_watching:
            self._until_watching = False
            self._resume_work()

    def caught_up(self):
        """
        etcd holds the watch past its history (or the follower's LIVE_WAIT
        passed): over v2 the result keys the last read found missing, by the
        thousand at a large site, are created from now on.  A watch that opened
        behind (proton wrote during the read) catches up one long-poll per event,
        and so many writes sooner would push it out of etcd's 1000 events; the
        binds themselves do not wait for this.
        """
        self.controller.caught_up().addErrback(
            lambda failure: self.log.failure(
                "creating the missing result keys failed", failure))

    def _resume_work(self):
        if self.acting() and self.running and self._restore_after is None:
            self.queue.resume()

    def cluster_changed(self):
        self.queue.discard()
        self.writer.cluster_changed()

    @inlineCallbacks
    def _look_at_other_api(self):
        """
        At start with nothing under C{/proton/}: when the other etcd API's store holds
        proton's objects, say which setting to change (proton-server writes over v2).
        """
        config = self.config
        api = getattr(config, "etcd_api", "v3")
        other = "v3" if api == "v2" else "v2"
        kwargs = dict(
            endpoints=list(config.etcd_endpoints), timeout=config.etcd_timeout,
            username=config.username, password=config.password,
            ca_file=config.ca_file, cert_file=config.cert_file,
            key_file=config.key_file, reactor=self.reactor,
        )
        if other == "v2":
            from shim.etcd.v2 import EtcdV2Client
            client = EtcdV2Client(status_key="/proton/", **kwargs)
        else:
            client = EtcdClient(**kwargs)
        try:
            self._looking_get = client.get(
                self.schema.proton_key(self.schema.port, ""), prefix=True, limit=1)
            found = yield self._looking_get
            if found.kvs or found.count:
                self.log.warn(
                    "nothing under /proton/ over etcd's {api} API, but the {other} API "
                    "holds proton's objects: set [etcd] api = {other} (every Gluon "
                    "proton-server writes over v2)", api=api, other=other,
                )
        except Exception as e:
            self.log.debug("looking at etcd's {other} API: {error}", other=other, error=e)
        finally:
            yield client.close()

    # -- the follower's state, for tests and operations

    @property
    def revision(self):
        return self.follower.revision

    @property
    def ready(self):
        return self.follower.ready

    @property
    def not_ready_reason(self):
        return self.follower.not_ready_reason

    @property
    def cluster_id(self):
        return self.follower.cluster_id

    @property
    def last_resync(self):
        return self.follower.last_resync

    @property
    def queue_depth(self):
        return self.queue.depth

    @property
    def release_delay(self):
        return self.controller.release_delay

    @release_delay.setter
    def release_delay(self, seconds):
        self.controller.release_delay = seconds

    def when_ready(self):
        return self.follower.when_ready()

    def request_resync(self, cause, full=False):
        """
        Read everything from etcd again and reconcile every port on our hosts.
        """
        self.follower.request_resync(cause, full=full)

    def apply(self, kind, key, value, revision):
        """
        Apply one change of a key under C{/proton/}, as the watch would.
        """
        self.follower.apply(kind, key, value, revision)

    # -- the election

    def _make_election(self):
        from shim.election import Election, election_key
        if self._election_client is None:
            config = self.config
            # A client of its own, v3 whatever the data's API: keepalives never wait
            # behind a burst of the service's calls, and v3 leases cost v2's event
            # history nothing.
            self._election_client = EtcdClient(
                endpoints=list(config.etcd_endpoints),
                timeout=max(1.0, config.election_ttl / 3.0),
                username=config.username, password=config.password,
                ca_file=config.ca_file, cert_file=config.cert_file,
                key_file=config.key_file, reactor=self.reactor,
            )
        self.election = Election(
            self._election_client,
            election_key(self.config.controller_name, self.config.host_list),
            identity(), ttl=self.config.election_ttl,
            on_elected=self._elected, on_lost=self._lost, on_role=self._role,
            reactor=self.reactor,
        )
        self.role = STANDBY
        self.queue.pause()

    def _role(self, role):
        self.role = role

    def _elected(self, epoch):
        """
        This shim won: reconcile everything from etcd's results, then act.
        """
        self.role = LEADER
        self.model.epoch = epoch
        self.metrics.child(self.metrics.elections, "won").inc()
        # The election logs the change of role: one line.
        self.log.debug(
            "acting for {controller} (epoch {epoch}): reconciling every port from the "
            "bind results in etcd", controller=self.config.controller_name, epoch=epoch,
        )
        # Nothing is decided before a snapshot has restored what the backend
        # holds, one begun from now unless no other shim led: a read under way
        # may have missed the last leader's last results.
        self._elections += 1
        if self.follower.synchronised or self.election.stood_by:
            # Another shim led: the start-up read may have missed its last results.
            self._restore_after = self._elections
            self.follower.request_resync("takeover", restore=True)
        else:
            # No other shim led since start-up: the start-up read, under way,
            # restores and resumes (read again, every start with a shim elected
            # during its read would wait for a second read of everything).
            self._restore_after = self._read_after

    def _lost(self, reason):
        """
        This shim stopped acting: it calls nothing and writes nothing more, and keeps
        its model live as a standby.
        """
        self.role = STANDBY
        self.model.epoch = None
        self.metrics.child(self.metrics.elections, "lost").inc()
        self.log.debug("standing by: no longer acting ({reason})", reason=reason)
        self.queue.pause()
        self.writer.cancel_all()

    def step_down(self):
        """
        Hand the acting role to a standby (an operator's request): resign, and campaign
        again once another shim had the time to take over.
        """
        if self.election is None:
            raise RuntimeError("election is off")
        was = self.role
        self.queue.pause()
        self.writer.cancel_all()
        d = self.election.resign()
        self.role = STANDBY
        self.model.epoch = None
        self.log.info("stepping down ({role}): a standby takes over", role=was)

        def again(_):
            if self.running:
                self._stepping_down = self.reactor.callLater(
                    self.config.election_ttl, self._campaign_again)
        return d.addCallback(again)

    def _campaign_again(self):
        self._stepping_down = None
        if self.running:
            self.election.start()

    # -- acting

    def acting(self):
        """
        Whether this shim may call the backend and write results now: always without
        election; with it, only an elected leader whose lease has not run out (a
        local check, no round trip).
        """
        return self.election is None or self.election.acting()

    def _fence(self):
        """
        The compares every result write carries where the client has transactions
        (v3): the election key still ours.  On v2 results and the election live in
        separate stores, and a write is fenced by the local lease deadline only
        (docs/ha.md).
        """
        if self.election is None or not getattr(self.client, "transactions", True):
            return ()
        return self.election.fence()

    # -- life cycle

    def startService(self):
        Service.startService(self)
        self.log.info(
            "shim {controller} starting: hosts {hosts}, etcd {endpoints} ({api}), "
            "model {model}, backend {backend}",
            controller=self.config.controller_name,
            hosts=", ".join(self.config.host_list) or "*",
            endpoints=", ".join(self.config.etcd_endpoints),
            api=getattr(self.config, "etcd_api", "v3"), model=self.schema.name,
            backend=self.config.backend,
        )
        self.follower.start()
        if self.election is not None:
            self.election.start()

    @inlineCallbacks
    def stopService(self):
        """
        Stop taking new work, let the calls and result writes in flight finish (still
        holding the lease, for a bounded time), then resign so that a standby takes
        over at once.
        """
        Service.stopService(self)
        self.queue.pause()
        if self._stepping_down is not None and self._stepping_down.active():
            self._stepping_down.cancel()
        if self._looking is not None:
            # The look at the other API, if still waiting on an unreachable etcd.
            get = getattr(self, "_looking_get", None)
            if get is not None and not get.called:
                get.cancel()
            yield self._looking
        yield self.follower.stop()
        # The callbacks first: a bind that finishes asks for a write.
        settled = self.queue.idle()
        settled.addCallback(lambda _: self.writer.idle())
        settled.addTimeout(STOP_TIMEOUT, self.reactor)
        try:
            yield settled
        except Exception:
            self.log.warn(
                "stopping without waiting longer: {keys} keys still being reconciled, "
                "{writes} bind results unwritten",
                keys=self.queue.depth, writes=len(self.writer.pending),
            )
        self.queue.stop()
        self.writer.stop()
        if self.election is not None:
            yield self.election.resign()
            yield self._election_client.close()
        yield self.client.close()
        self.log.info("shim stopped at revision {revision}", revision=self.revision)


def identity():
    """
    This process's name in an election: host and process id.
    """
    return "%s:%d" % (socket.gethostname(), os.getpid())


def _client_for(config, reactor):
    kwargs = dict(
        endpoints=list(config.etcd_endpoints),
        timeout=config.etcd_timeout,
        username=config.username,
        password=config.password,
        ca_file=config.ca_file,
        cert_file=config.cert_file,
        key_file=config.key_file,
        reactor=reactor,
    )
    if getattr(config, "etcd_api", "v3") == "v2":
        from shim.etcd.v2 import EtcdV2Client
        # status() reads a key: one the shim's v2 role may read.
        return EtcdV2Client(status_key="/proton/", **kwargs)
    return EtcdClient(**kwargs)
