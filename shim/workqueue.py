"""
The work queue: which keys need a reconcile, in order, one worker per key.

In the style of client-go's workqueue: marking a key dirty is all an event, a
snapshot, a resync or a restart does.  The queue

  - de-duplicates: a key marked many times before its worker runs is reconciled once,
    so its memory grows with the number of keys, not of events;
  - never runs two workers on one key: a key marked while its worker runs is
    reconciled again after it;
  - requeues a failed key after its own capped exponential backoff, reset when it
    succeeds;
  - runs at most L{BATCH} synchronous reconciles, and L{SLICE} seconds of them, per
    reactor turn, so that a resync marking a million keys never holds the reactor
    (and the binds behind it) up;
  - keeps the keys a sweep marks (a snapshot, a resync: every port on our hosts)
    behind the keys events mark, so that a bind asked during a resync of a million
    ports is reconciled at once, not after them; and gives the reactor back after
    L{SWEEP_SLICE} seconds of swept keys, so that the few turns a bind needs
    (its event, its result's round trips) each wait little behind a sweep.

A reconcile is C{reconcile(key)}: it returns C{None} when the key is done, or the name
of what failed (a callback, or C{"write_result"}) when it must be tried again, or a
Deferred firing with either.  An exception is a defect: logged, and retried.
"""

import time
from collections import OrderedDict

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from shim import turns
from shim.backoff import Backoff

#: Synchronous reconciles per reactor turn, at most.
BATCH = 500

#: Seconds of reconciles per reactor turn, at most (looked at every L{_CHECK_EVERY}).
SLICE = 0.005
_CHECK_EVERY = 32
_SWEEP_CHECK_EVERY = 8

#: Seconds of swept keys' reconciles per reactor turn, at most: background work.
SWEEP_SLICE = turns.SLICE

_DONE = object()


class WorkQueue:
    """
    Dirty keys, reconciled one worker per key.

    @ivar paused: while C{True}, keys are marked but not reconciled (a standby).
    """

    log = Logger()

    def __init__(self, reconcile, clock, metrics=None,
                 backoff=lambda: Backoff(initial=0.1, maximum=30.0),
                 timer=time.perf_counter):
        self._reconcile = reconcile
        self._timer = timer
        self._clock = clock
        self._metrics = metrics
        self._new_backoff = backoff
        # key -> when it was first marked dirty, in marking order
        self._dirty = OrderedDict()
        # the same, for keys marked by a sweep: reconciled when _dirty is empty
        self._swept = OrderedDict()
        # keys of a sweep over every key, drawn when both are empty
        self._sweep = None
        self._running = set()
        # keys marked again while their worker ran
        self._again = {}
        self._backoffs = {}
        self._delayed = {}
        self._pump_call = None
        self._idle_waiters = []
        self.paused = False
        self._generation = 0

    # -- marking

    def mark(self, key):
        """
        Ask for C{key} to be reconciled (again).
        """
        if key in self._running:
            self._again.setdefault(key, self._clock.seconds())
            return
        if key in self._dirty:
            return
        # Out of the sweep lane, if a sweep had put it there (it keeps its age).
        marked = self._swept.pop(key, None) if self._swept else None
        if self._delayed:
            call = self._delayed.pop(key, None)
            if call is not None and call.active():
                # A change does not wait for the backoff of an earlier failure.
                call.cancel()
        self._dirty[key] = self._clock.seconds() if marked is None else marked
        self._schedule()

    def mark_all(self, keys):
        for key in keys:
            self.mark(key)

    def sweep_all(self, keys):
        """
        Reconcile each of C{keys} (an iterator, drawn lazily) once no other key
        waits: a sweep over a million ports never holds them all in the queue.  The
        iterator may yield C{None} to give the turn's budget back while it skips.
        A new sweep replaces one not yet done: it covers every key again.
        """
        self._sweep = iter(keys)
        self._schedule()

    def sweep(self, key):
        """
        Ask for C{key} to be reconciled once no key marked by L{mark} waits: a sweep
        over every key, which a change of any key overtakes.
        """
        if key in self._running:
            self._again.setdefault(key, self._clock.seconds())
            return
        if key in self._dirty or key in self._swept or key in self._delayed:
            # Already to be reconciled (a retry waiting for its backoff included).
            return
        self._swept[key] = self._clock.seconds()
        self._schedule()

    def __len__(self):
        """
        The keys dirty or being reconciled (not those waiting for a retry).
        """
        return (len(self._dirty) + len(self._swept)
                + len(self._running | self._again.keys()))

    def __contains__(self, key):
        return (key in self._dirty or key in self._swept or key in self._running
                or key in self._delayed)

    def busy(self, key):
        """
        Whether a worker for C{key} is running now.
        """
        return key in self._running

    def retrying(self, key):
        """
        Whether C{key} failed and waits for its backoff.
        """
        return key in self._delayed

    # -- state

    @property
    def depth(self):
        """
        The keys waiting for a worker (dirty, or waiting for a retry).
        """
        return (len(self._dirty) + len(self._swept) + len(self._delayed)
                + len(self._again))

    def oldest_age(self):
        """
        Seconds since the oldest dirty key was marked (0 when none is dirty).
        """
        now = self._clock.seconds()
        oldest = None
        for dirty in (self._dirty, self._swept):
            if dirty:
                t = next(iter(dirty.values()))
                if oldest is None or t < oldest:
                    oldest = t
        for t in self._again.values():
            if oldest is None or t < oldest:
                oldest = t
        return max(0.0, now - oldest) if oldest is not None else 0.0

    def idle(self):
        """
        A Deferred that fires when no key is dirty or being reconciled (keys waiting
        for a retry do not count; while paused, only the running workers count).
        """
        d = Deferred()
        if self._is_idle():
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def _is_idle(self):
        if self.paused:
            # Paused (a standby, or stopping): what is marked waits; only the workers
            # running now keep the queue busy.
            return not self._running
        return (not self._dirty and not self._swept and self._sweep is None
                and not self._running and not self._again)

    # -- control

    def pause(self):
        self.paused = True
        if self._is_idle():
            self._wake_idle()

    def resume(self):
        self.paused = False
        self._schedule()

    def discard(self):
        """
        Drop every queued key and pending retry: what they were about belongs to a
        model that no longer holds (a replaced etcd cluster).  Running workers finish,
        and their keys are not requeued.
        """
        self._generation += 1
        self._dirty.clear()
        self._swept.clear()
        self._sweep = None
        self._again.clear()
        for call in self._delayed.values():
            if call.active():
                call.cancel()
        self._delayed.clear()
        self._backoffs.clear()
        self._wake_idle()

    def stop(self):
        """
        Reconcile nothing more: cancel the pending pump and retries.
        """
        self.paused = True
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        for call in self._delayed.values():
            if call.active():
                call.cancel()
        self._delayed.clear()

    # -- running

    def _schedule(self):
        if self.paused or not (self._dirty or self._swept or self._sweep):
            return
        if self._pump_call is None or not self._pump_call.active():
            self._pump_call = self._clock.callLater(0, self._pump)

    def _pump(self):
        self._pump_call = None
        budget = BATCH
        started = self._timer()
        while budget > 0 and not self.paused:
            if (BATCH - budget) % _CHECK_EVERY == 0 and budget < BATCH and (
                    self._timer() - started >= SLICE):
                break
            if self._dirty:
                key, _ = self._dirty.popitem(last=False)
            elif budget < BATCH and (BATCH - budget) % _SWEEP_CHECK_EVERY == 0 and (
                    self._timer() - started >= SWEEP_SLICE):
                break
            elif self._swept:
                key, _ = self._swept.popitem(last=False)
            elif self._sweep is not None:
                budget -= 1
                key = next(self._sweep, _DONE)
                if key is _DONE:
                    self._sweep = None
                elif key is not None:
                    self.sweep(key)
                continue
            else:
                break
            budget -= 1
            self._run(key)
        if (self._dirty or self._swept or self._sweep) and not self.paused:
            self._schedule()
        elif self._is_idle():
            self._wake_idle()

    def _run(self, key):
        self._running.add(key)
        generation = self._generation
        try:
            outcome = self._reconcile(key)
        except Exception:
            self.log.failure("reconciling {key} raised", key=_show(key))
            outcome = "internal"
        if isinstance(outcome, Deferred):
            if not outcome.called:
                outcome.addErrback(self._raised, key)
                outcome.addCallback(self._finished, key, generation)
                return
            outcome.addErrback(self._raised, key)
            result = []
            outcome.addCallback(result.append)
            outcome = result[0] if result else None
        self._finished(outcome, key, generation)

    def _raised(self, failure, key):
        self.log.failure("reconciling {key} failed", failure, key=_show(key))
        return "internal"

    def _finished(self, outcome, key, generation):
        self._running.discard(key)
        if generation != self._generation:
            # Discarded meanwhile: the outcome belongs to the old cluster and is not
            # retried; a mark made since (the new snapshot's) is kept.
            again = self._again.pop(key, None)
            if again is not None and key not in self._dirty:
                self._dirty[key] = again
            if self._dirty or self._swept or self._sweep:
                self._schedule()
            elif self._is_idle():
                self._wake_idle()
            return
        again = self._again.pop(key, None)
        if outcome is None:
            self._backoffs.pop(key, None)
            if again is not None:
                self._dirty[key] = again
                self._schedule()
        else:
            backoff = self._backoffs.get(key)
            if backoff is None:
                backoff = self._backoffs[key] = self._new_backoff()
            delay = backoff.next_delay()
            retries = getattr(self._metrics, "retries", None)
            if retries is not None:
                self._metrics.child(retries, outcome).inc()
            if again is not None:
                # Something changed while it failed: try again now.
                self._dirty[key] = again
                self._schedule()
            else:
                self._delayed[key] = self._clock.callLater(delay, self._retry, key)
        if self._is_idle():
            self._wake_idle()

    def _retry(self, key):
        self._delayed.pop(key, None)
        if key not in self._dirty and key not in self._running:
            self._swept.pop(key, None)
            self._dirty[key] = self._clock.seconds()
            self._schedule()

    def _wake_idle(self):
        if self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)


def _show(key):
    if isinstance(key, tuple):
        return "%s %s" % key
    return str(key)


