"""
Election: one acting shim per group, through an etcd v3 lease and a transaction.

Shims with the same C{controller_name} and the same C{host_list} form a group (see
L{election_key}). Each runs an L{Election} on the group's key. A candidate grants itself
a lease and, in one transaction, creates the key with that lease when it does not
exist: the one that creates it leads (acts), the others stand by, watching the key, and
campaign again as soon as it is deleted (the leader's lease expired or was revoked).

The leader keeps its lease alive every ttl/3 seconds, each keepalive with a time limit
of its own (ttl/3) and moving on to the next etcd endpoint after a failure. It tracks
the lease's deadline locally on a monotonic clock, counted from when the last
successful keepalive was I{sent}, so that L{Election.acting} is a plain comparison (no
round trip) that turns false no later than etcd lets the lease expire. This is the
fencing of the acting shim against its own stalls (GC, SIGSTOP, partition): the service
asks L{Election.acting} before every backend call and result write, and adds
L{Election.fence} to every result-writing transaction, so that a write only succeeds
while the key still exists with the creation revision it had when we won (the
L{Election.epoch}, also handed to backends so that a vendor can fence on its side).

The election speaks etcd's v3 API only (leases, transactions); etcd 3.x serves it even
to a shim whose data is on the v2 API. See docs/ha.md.
"""

import hashlib
import time

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger, LogLevel

from shim.backoff import Backoff
from shim.etcd import Compare, NotFound, Op, Timeout

log = Logger()

#: Where the election keys live: outside the result prefix (C{/controller/<api>/...}),
#: so that nothing reading bind results ever sees them.
ELECTION_PREFIX = "/controller/shim-election/"

#: The host_list value meaning "every host"; its own list for the election key.
ALL_HOSTS = "*"

LEADER = "leader"
STANDBY = "standby"


class NotLeader(Exception):
    """L{Election.fence} was asked for before this shim was ever elected."""


def election_key(controller_name, host_list):
    """
    The election key of the group of shims with this controller name and host list:
    C{/controller/shim-election/<controller_name>/<hash>}, the hash being the first 16
    hex digits of the SHA-256 of the sorted, de-duplicated host names (one per line).
    The order and repetitions of C{host_list} do not matter; C{*} (every host) is a list
    of its own.

    @param controller_name: the C{[shim] controller_name}.
    @param host_list: the host names (a sequence), or a comma-separated string.
    """
    if not controller_name or "/" in controller_name:
        raise ValueError("controller name %r cannot name an election key: it must be"
                         " non-empty and contain no '/'" % (controller_name,))
    if isinstance(host_list, str):
        host_list = host_list.split(",")
    hosts = sorted(set(host.strip() for host in host_list if host.strip()))
    if not hosts:
        raise ValueError("host list of controller %r is empty: no election key"
                         % (controller_name,))
    if ALL_HOSTS in hosts:
        hosts = [ALL_HOSTS]
    digest = hashlib.sha256("\n".join(hosts).encode("utf-8")).hexdigest()[:16]
    return "%s%s/%s" % (ELECTION_PREFIX, controller_name, digest)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Election(object):
    """
    One candidate of a group's election, with an explicit lifecycle: L{start}, then
    L{resign} (graceful: the lease is revoked, a standby takes over at once) or L{stop}
    (the lease is left to expire).

    @param client: a L{shim.etcd.EtcdClient}; best one of the election's own, so that
        keepalives never wait behind a burst of the service's calls.
    @param key: the group's key, from L{election_key}.
    @param identity: who we are, written as the key's value (C{host:pid}).
    @param ttl: the lease's time to live, whole seconds.
    @param on_elected: called with the epoch when this shim wins.
    @param on_lost: called with the reason (text) when this shim stops leading on its
        own (not on L{resign} or L{stop}).
    @param on_role: called with L{LEADER} or L{STANDBY} at each change of role (for
        the metrics).
    @param reactor: the reactor (timers, time limits).
    @param monotonic: the clock of the lease deadline, C{time.monotonic} by default.

    @ivar elections_won: how many times this shim became the leader.
    @ivar elections_lost: how many times it stopped leading other than by resigning.
    @ivar keepalives_failed: how many keepalives failed (no answer within their time
        limit, or an error), each followed at once by a try on the next endpoint.
    @ivar granted_ttl: the TTL etcd granted the last lease (may exceed C{ttl}: etcd
        raises a TTL below its minimum).
    @ivar leader_identity: the identity in the key when last seen, or None.
    @ivar stood_by: whether this shim has ever found another shim leading.
    @ivar other_groups: the election keys seen of other groups under the same
        controller name (each logged once as a warning).
    """

    #: Delay before the next endpoint's try after a failed keepalive.
    retry_delay = 0.05

    def __init__(self, client, key, identity, ttl=3, on_elected=None, on_lost=None,
                 on_role=None, reactor=None, monotonic=time.monotonic):
        if reactor is None:
            from twisted.internet import reactor
        if int(ttl) != ttl or ttl < 1:
            raise ValueError("election ttl must be a whole number of seconds >= 1,"
                             " not %r" % (ttl,))
        self._client = client
        self.key = key
        self._prefix = key.rsplit("/", 1)[0] + "/"
        self.identity = identity
        self.ttl = int(ttl)
        self._on_elected = on_elected
        self._on_lost = on_lost
        self._on_role = on_role
        self._reactor = reactor
        self._monotonic = monotonic

        self.elections_won = 0
        self.elections_lost = 0
        self.keepalives_failed = 0
        self.granted_ttl = None
        self.leader_identity = None
        self.stood_by = False

        self._running = False
        self._leading = False
        self._generation = 0
        self._lease_id = None
        self._epoch = None
        self._last_epoch = None
        self._deadline = 0.0
        self._watch = None
        self._timers = {}
        self._backoff = Backoff(initial=0.1, maximum=max(1.0, self.ttl / 3.0))
        self._keepalive_paused = False
        self._keepalive_failures = 0
        self._v2_only_logged = float("-inf")
        self.other_groups = set()
        self._waiting = []
        self._announced = None
        self._inflight = set()

    def __repr__(self):
        return "<Election %s %s as %s>" % (self.key, self.role, self.identity)

    # -- what the service reads -----------------------------------------------

    @property
    def role(self):
        """L{LEADER} while elected, else L{STANDBY}."""
        return LEADER if self._leading else STANDBY

    @property
    def epoch(self):
        """
        The election key's creation revision while this shim leads (a number that
        grows with every new term of the group), else None.
        """
        return self._epoch if self._leading else None

    @property
    def lease_id(self):
        """The lease of the current term while leading, else None."""
        return self._lease_id if self._leading else None

    @property
    def deadline(self):
        """The local lease deadline, on the monotonic clock (0 when not leading)."""
        return self._deadline if self._leading else 0.0

    def acting(self):
        """
        Whether this shim may act now: elected, and its lease's local deadline not
        passed. No round trip; call it before every backend call and result write.
        """
        return self._leading and self._monotonic() < self._deadline

    def fence(self):
        """
        The compares to add to a result-writing v3 transaction, so that it only
        succeeds while the election key still exists with this shim's epoch. After
        a loss they keep naming the last epoch (and so fail).

        @raise NotLeader: when this shim was never elected.
        """
        epoch = self._epoch if self._leading else self._last_epoch
        if epoch is None:
            raise NotLeader("election %s: no fence, %s was never elected"
                            % (self.key, self.identity))
        return [Compare.create_revision(self.key, "==", epoch)]

    def when_elected(self):
        """A Deferred firing with the epoch once this shim leads (at once if it does)."""
        if self._leading:
            return defer.succeed(self._epoch)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    # -- lifecycle ------------------------------------------------------------

    def start(self):
        """Begin campaigning."""
        if self._running:
            return
        self._running = True
        log.info("election {key}: campaigning as {identity} (ttl {ttl} s)",
                 key=self.key, identity=self.identity, ttl=self.ttl)
        self._campaign_soon(0)

    def stop(self):
        """
        Stop campaigning and keeping the lease alive, without revoking it: if this shim
        leads, the group is without a leader until the lease expires. Fires when done.
        """
        was_leading = self._halt()
        if was_leading:
            log.info("election {key}: stopped leading ({identity}); the lease is left"
                     " to expire", key=self.key, identity=self.identity)
            self._role_changed()
        return defer.gatherResults([self._stop_watch(), self._settled()]).addCallback(
            lambda _: None)

    def resign(self):
        """
        Hand over gracefully: stop campaigning and revoke the lease, which deletes the
        key, so that a standby takes over at once. Fires when the revoke is done (or
        failed: the lease then expires on its own; the failure is logged).
        """
        lease_id = self._lease_id
        was_leading = self._halt()
        stopped = self._stop_watch()
        if lease_id is None:
            return defer.gatherResults([stopped, self._settled()]).addCallback(
                lambda _: None)
        if was_leading:
            log.info("election {key}: resigning ({identity}): revoking the lease",
                     key=self.key, identity=self.identity)
            self._role_changed()
        self._revoke(lease_id)
        return defer.gatherResults([stopped, self._settled()]).addCallback(
            lambda _: None)

    # -- test hooks -------------------------------------------------------------

    def _pause_keepalive(self):
        """Test hook: send no more keepalives (as if this process had stalled)."""
        self._keepalive_paused = True

    # -- internals ------------------------------------------------------------

    def _halt(self):
        """Stop everything; whether we were leading."""
        was_leading = self._leading
        self._running = False
        self._leading = False
        self._epoch = None
        self._lease_id = None
        self._generation += 1
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        return was_leading

    def _stop_watch(self):
        watch, self._watch = self._watch, None
        if watch is None:
            return defer.succeed(None)
        return watch.stop().addCallback(lambda _: None)

    def _track(self, d):
        """Keep C{d} (a call to etcd) until it fires, so that stopping can wait for it."""
        self._inflight.add(d)

        def done(result):
            self._inflight.discard(d)
            return result
        return d.addBoth(done)

    @inlineCallbacks
    def _settled(self):
        """
        Fires once no call to etcd is in flight, however the calls end (one ending
        may start another: a lease granted after we stopped is revoked).
        """
        while self._inflight:
            waiters = []
            for d in list(self._inflight):
                waiter = defer.Deferred()
                d.addBoth(lambda result, waiter=waiter: (waiter.callback(None), result)[1])
                waiters.append(waiter)
            yield defer.DeferredList(waiters)

    def _within(self, d, seconds, call):
        """
        C{d}'s outcome, or L{Timeout} after C{seconds}, whichever comes first; at the
        time limit C{d} is cancelled and whatever it fires with later is dropped.
        (Cancelling alone is not a strict limit: the client may answer a
        cancelled call from its next endpoint, taking up to its own timeout.)
        """
        out = defer.Deferred()

        def expire():
            if not out.called:
                out.errback(Timeout(None, "etcd %s at %s: no answer within %.1f s"
                                    % (call, self._client.endpoint, seconds)))
            d.cancel()
        timer = self._reactor.callLater(seconds, expire)

        def done(result):
            if timer.active():
                timer.cancel()
            if not out.called:
                out.callback(result)
            return None
        self._track(d)
        d.addBoth(done)
        return self._track(out)

    def _later(self, name, delay, f, *args):
        old = self._timers.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        self._timers[name] = self._reactor.callLater(max(0.0, delay), f, *args)

    def _revoke(self, lease_id):
        """Revoke a lease, best effort, within the ttl; never fails."""
        d = self._within(self._client.lease_revoke(lease_id), self.ttl, "lease_revoke")

        def failed(f):
            if f.check(NotFound):
                return None     # already gone: expired, or revoked by someone else
            log.info("election {key}: revoking lease {lease} failed ({error}); it"
                     " expires on its own", key=self.key, lease=lease_id,
                     error=f.getErrorMessage() or f.type.__name__)
        return d.addCallbacks(lambda _: None, failed)

    def _role_changed(self):
        if self._on_role is not None:
            try:
                self._on_role(self.role)
            except Exception:
                log.failure("election {key}: the on_role hook failed", key=self.key)

    def _campaign_soon(self, delay):
        """
        Campaign after C{delay} seconds, dropping what the last try left running (its
        watch, its timers, answers still on their way).
        """
        if not self._running:
            return
        self._generation += 1
        for name, call in list(self._timers.items()):
            if call.active():
                call.cancel()
        self._timers.clear()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        self._later("campaign", delay, self._campaign)

    def _retry(self, what, error):
        delay = self._backoff.next_delay()
        if "no v3 JSON gateway" in error:
            # etcd 2.x: no leases, no transactions.  Say what to do, once a minute
            # at most (the backoff's cap is short).
            if self._reactor.seconds() >= self._v2_only_logged + 60:
                self._v2_only_logged = self._reactor.seconds()
                log.error("election {key}: etcd has no v3 API ({error}): the election"
                          " needs etcd 3.x; on etcd 2.x set [election] enabled = false"
                          " and run one shim per group (docs/ha.md). Not acting;"
                          " trying again.", key=self.key, error=error)
        else:
            log.warn("election {key}: {what} failed ({error}); campaigning again in"
                     " {delay:.1f} s", key=self.key, what=what, error=error, delay=delay)
        self._campaign_soon(delay)

    @inlineCallbacks
    def _campaign(self):
        """
        One try: grant a lease, then create the key with it unless it exists. Win and
        lead, or stand by watching the group's keys from the transaction's revision.
        """
        generation = self._generation
        sent = self._monotonic()
        try:
            lease = yield self._track(self._client.lease_grant(self.ttl))
        except Exception as e:
            if generation == self._generation:
                self._retry("granting a lease", _describe(e))
            return
        if generation != self._generation:
            self._revoke(lease.id)
            return
        if lease.ttl != self.granted_ttl and lease.ttl != self.ttl:
            log.warn("election {key}: asked etcd for a {ttl} s lease, granted {granted}"
                     " s (etcd raises a TTL below its minimum); failover takes longer",
                     key=self.key, ttl=self.ttl, granted=lease.ttl)
        self.granted_ttl = lease.ttl
        try:
            result = yield self._track(self._client.txn(
                compare=[Compare.create_revision(self.key, "==", 0)],
                success=[Op.put(self.key, self.identity, lease=lease.id),
                         Op.get(self._prefix, prefix=True)],
                failure=[Op.get(self._prefix, prefix=True)]))
        except Exception as e:
            self._revoke(lease.id)
            if generation == self._generation:
                self._retry("the campaign transaction", _describe(e))
            return
        if generation != self._generation:
            self._revoke(lease.id)
            return
        self._backoff.reset()
        group = result.responses[-1].kvs
        self._note_groups(kv.key for kv in group)
        if result.succeeded:
            self._won(lease, result.revision, sent)
        else:
            self._revoke(lease.id)
            owner = [kv for kv in group if kv.key == self.key]
            if owner and not owner[0].lease:
                # A key without a lease never expires: copied from another cluster or
                # written by hand, it would keep the group without a leader for ever.
                yield self._clear_stale(owner[0], generation)
                return
            self._stand_by(_text(owner[0].value) if owner else None, result.revision)

    @inlineCallbacks
    def _clear_stale(self, kv, generation):
        """
        Delete an election key that has no lease (only as it was read), and campaign
        again.
        """
        log.warn("election {key}: the key names {owner} but has no lease, so it would "
                 "never expire (restored or copied from elsewhere?); deleting it",
                 key=self.key, owner=_text(kv.value))
        try:
            yield self._track(self._client.txn(
                compare=[Compare.mod_revision(self.key, "==", kv.mod_revision)],
                success=[Op.delete(self.key)]))
        except Exception as e:
            if generation == self._generation:
                self._retry("deleting a key without a lease", _describe(e))
            return
        if generation == self._generation:
            self._campaign_soon(0)

    def _note_groups(self, keys):
        """Warn once about each other group under our controller name."""
        for key in keys:
            if key != self.key and key not in self.other_groups:
                self.other_groups.add(key)
                log.warn("election {key}: the controller name is shared with another"
                         " group ({other}, another host list); both act side by side",
                         key=self.key, other=key)

    def _won(self, lease, epoch, sent):
        self._leading = True
        self._keepalive_failures = 0
        self._lease_id = lease.id
        self._epoch = self._last_epoch = epoch
        self._deadline = sent + lease.ttl
        self.leader_identity = self.identity
        self.elections_won += 1
        log.info("election {key}: {identity} is now the leader (epoch {epoch}, lease"
                 " {lease:x}, ttl {ttl} s)", key=self.key, identity=self.identity,
                 epoch=epoch, lease=lease.id, ttl=lease.ttl)
        self._role_changed()
        self._watch_group(epoch + 1)
        self._schedule_deadline()
        # The first keepalive a full interval before the deadline, sooner when the
        # campaign itself was slow and ate into the lease.
        interval = self._interval()
        remaining = self._deadline - self._monotonic()
        self._later("keepalive", min(interval, max(0.0, remaining - interval)),
                    self._keepalive)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(epoch)
        if self._on_elected is not None:
            try:
                self._on_elected(epoch)
            except Exception:
                log.failure("election {key}: the on_elected hook failed", key=self.key)

    def _stand_by(self, owner, revision):
        self.stood_by = True
        self._note_owner(owner)
        self._watch_group(revision + 1)
        # A safety net behind the watch: a watch on a member cut off from the
        # cluster stays open and silent; this read fails there and moves us on.
        self._later("check", 2 * self.ttl, self._check_key)

    def _note_owner(self, owner):
        """Standing by: log who leads, once per change."""
        self.leader_identity = owner
        if owner is None or owner == self._announced:
            return
        if self._announced is None:
            log.info("election {key}: {identity} stands by; {owner} leads",
                     key=self.key, identity=self.identity, owner=owner)
        else:
            log.info("election {key}: {owner} leads now", key=self.key, owner=owner)
        self._announced = owner

    def _interval(self):
        return (self.granted_ttl or self.ttl) / 3.0

    def _watch_group(self, start_revision):
        generation = self._generation
        watch = self._client.watch(self._prefix, start_revision,
                                   lambda event: self._event(generation, event),
                                   prefix=True, prev_kv=False, progress_notify=False)
        self._watch = watch
        watch.started.addErrback(lambda f: None)
        watch.done.addCallback(self._watch_ended, watch, generation)

    def _watch_ended(self, ended, watch, generation):
        if generation != self._generation or watch is not self._watch:
            return
        self._watch = None
        if ended.reason == "stopped":
            return
        if watch.endpoint is not None:
            self._client.skip_endpoint(watch.endpoint)
        if self._leading:
            self._check_key()
        else:
            log.info("election {key}: watch ended ({reason}); campaigning again",
                     key=self.key, reason=ended.reason)
            self._campaign_soon(self._backoff.next_delay())

    def _event(self, generation, event):
        if generation != self._generation:
            return
        if event.key != self.key:
            self._note_groups([event.key])
            return
        if self._leading:
            if event.type == "DELETE":
                self._lose("the election key was deleted")
            elif _text(event.value) != self.identity:
                self._lose("the election key was overwritten by %s" % (_text(event.value),))
        elif event.type == "DELETE":
            log.debug("election {key}: key deleted; campaigning", key=self.key)
            self._campaign_soon(0)
        else:
            self._note_owner(_text(event.value))

    @inlineCallbacks
    def _check_key(self):
        """
        Read the key: standing by, campaign if it is gone; leading, lose unless it is
        still ours; on failure, move to the next endpoint and watch again.
        """
        generation = self._generation
        d = self._within(self._client.get(self.key), max(1.0, float(self.ttl)),
                         "get %s" % (self.key,))
        try:
            found = yield d
        except Exception as e:
            if generation != self._generation:
                return
            endpoint = self._watch.endpoint if self._watch is not None else None
            if endpoint is not None:
                self._client.skip_endpoint(endpoint)
            if self._leading:
                self._later("check", self.retry_delay * 10, self._check_key)
            else:
                self._retry("reading the election key", _describe(e))
            return
        if generation != self._generation:
            return
        kv = found.kvs[0] if found.kvs else None
        if self._leading:
            if kv is None or kv.create_revision != self._epoch:
                self._lose("the election key is gone or someone else's")
            elif self._watch is None:
                self._watch_group(found.revision + 1)
        elif kv is None:
            self._campaign_soon(0)
        else:
            self._later("check", 2 * self.ttl, self._check_key)

    def _schedule_deadline(self):
        self._later("deadline", self._deadline - self._monotonic(), self._check_deadline)

    def _check_deadline(self):
        """Lose once the local deadline has passed; true if it has."""
        if not self._leading:
            return True
        remaining = self._deadline - self._monotonic()
        if remaining <= 0:
            self._lose("no keepalive succeeded before the lease's deadline")
            return True
        if "deadline" not in self._timers or not self._timers["deadline"].active():
            self._later("deadline", max(remaining, self.retry_delay), self._check_deadline)
        return False

    @inlineCallbacks
    def _keepalive(self):
        generation = self._generation
        if self._check_deadline():
            return
        if self._keepalive_paused:
            self._later("keepalive", self._interval(), self._keepalive)
            return
        lease_id = self._lease_id
        endpoint = self._client.endpoint
        interval = self._interval()
        sent = self._monotonic()
        d = self._within(self._client.lease_keepalive(lease_id), interval,
                         "lease_keepalive")
        try:
            ttl = yield d
        except NotFound:
            if generation == self._generation:
                self._lose("etcd says the lease expired or was revoked", revoke=False)
            return
        except Exception as e:
            if generation != self._generation:
                return
            self._client.skip_endpoint(endpoint)
            # The first failure of a run is a warning; the quick retries that follow
            # (one per endpoint, until the deadline) are not.
            self._keepalive_failures += 1
            self.keepalives_failed += 1
            log.emit(LogLevel.warn if self._keepalive_failures == 1 else LogLevel.debug,
                     "election {key}: keepalive at {endpoint} failed ({error}); {left:.1f}"
                     " s left on the lease", key=self.key, endpoint=endpoint,
                     error=_describe(e), left=self._deadline - self._monotonic())
            self._later("keepalive", self.retry_delay, self._keepalive)
            return
        if generation != self._generation:
            return
        if self._check_deadline():
            return
        if self._keepalive_failures:
            log.info("election {key}: keepalive at {endpoint} succeeded again",
                     key=self.key, endpoint=endpoint)
            self._keepalive_failures = 0
        self._deadline = max(self._deadline, sent + ttl)
        self._schedule_deadline()
        self._later("keepalive", interval, self._keepalive)

    def _lose(self, reason, revoke=True):
        """Stop leading, revoke what is left of the lease, and campaign again."""
        if not self._leading:
            return
        lease_id = self._lease_id if revoke else None
        self._halt()
        self._running = True
        self.elections_lost += 1
        self._announced = self.identity
        log.warn("election {key}: {identity} lost the leadership ({reason}); standing by",
                 key=self.key, identity=self.identity, reason=reason)
        self._role_changed()
        if self._on_lost is not None:
            try:
                self._on_lost(reason)
            except Exception:
                log.failure("election {key}: the on_lost hook failed", key=self.key)
        # Campaign again one keepalive interval after the revoke: a healthy standby,
        # which campaigns as soon as it sees the key go, comes first.
        generation = self._generation
        d = self._revoke(lease_id) if lease_id is not None else defer.succeed(None)
        d.addCallback(lambda _: generation == self._generation
                      and self._campaign_soon(self._interval()))


def _describe(error):
    return getattr(error, "message", None) or str(error) or type(error).__name__
