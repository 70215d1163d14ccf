"""
Walks over the whole model, spread across reactor turns.

A snapshot of a million objects ends in walks over every object: deletions found,
bind results restored, every port on our hosts marked.  Done in one go, each holds the
reactor for seconds: binds wait, and the election's keepalive misses its lease.  A
L{walk} runs its step per item and gives the reactor back every L{SLICE} seconds, so
that events, binds and keepalives are served between slices.  A walk that fits in
one slice (a small site, a test) runs at once: its Deferred has fired on return.

Items may change between slices (the watch goes on during a background resync): a
step looks again at what it is about, not at what the walk began with.
"""

import time
from itertools import islice

from twisted.internet.defer import Deferred

#: Seconds of work before the reactor is given back.  Walks are background work: a
#: bind asked meanwhile needs a few reactor turns (its event, its result's round
#: trips), and waits for a slice at each.
SLICE = 0.002

#: Items between two looks at the time.
_CHECK_EVERY = 128


def walk(reactor, items, step, clock=time.perf_counter):
    """
    Call C{step(item)} for each of C{items}, a slice at a time.

    @param reactor: gives the next slice its turn (C{callLater(0, ...)}).
    @param items: an iterable, taken lazily: L{keys_of} a dict that may change
        meanwhile.
    @param step: called with each item; an exception ends the walk with it.
    @param clock: wall-clock seconds (the work's own time, not the reactor's).
    @return: a Deferred firing with C{None} after the last step.
    """
    items = iter(items)
    done = Deferred()

    def run():
        started = clock()
        count = 0
        try:
            for item in items:
                step(item)
                count += 1
                if count == _CHECK_EVERY:
                    count = 0
                    if clock() - started >= SLICE:
                        reactor.callLater(0, run)
                        return
        except BaseException:
            done.errback()
            return
        done.callback(None)

    run()
    return done


#: Keys drawn from a dict at a time by L{keys_of}.
_CHUNK = 256

#: Times L{keys_of} starts again past the keys drawn, after keys were added or
#: removed, before it takes the rest from a copy instead.
_RESUMES = 8


class Moves:
    """
    The counts of keys added to and removed from one dict, kept by the dict's owner
    where it adds and removes them: what lets L{keys_of} walk the dict while it
    changes.  Calling it gives C{(added, removed)}.
    """

    __slots__ = ("added", "removed")

    def __init__(self):
        self.added = 0
        self.removed = 0

    def __call__(self):
        return (self.added, self.removed)


def keys_of(mapping, moves, chunk=_CHUNK):
    """
    Each key of C{mapping}, a dict that may change while they are drawn, lazily: the
    keys to walk, without a copy of all of them.

    A copy of a million keys is one reactor turn of 20-50 ms, and as long again for
    the garbage collector's first look at it.  Keys are drawn C{chunk} at a time
    from the dict itself.  A value replaced changes nothing.  A key added goes last
    in the dict's order, and a key removed moves the keys after it back by one: when
    the counts moved, a new iterator skips the keys drawn less one per key removed
    (a few milliseconds at most; those few come again), up to L{_RESUMES} times;
    after that the keys left come from one copy, taken the same way.  A key removed
    after its chunk was drawn comes all the same, and a key added meanwhile may come
    or not: a walk's step looks again at what it is about, and what was added is
    newer than what the walk is for.

    @param moves: returns C{(keys added, keys removed)} so far: the L{Moves} the
        owner of C{mapping} keeps.
    """
    added, removed = moves()
    keys = iter(mapping)
    drawn = 0
    resumes = 0
    while True:
        now = moves()
        if now != (added, removed):
            drawn = max(0, drawn - (now[1] - removed))
            added, removed = now
            if resumes == _RESUMES:
                yield from tuple(islice(mapping, drawn, None))
                return
            resumes += 1
            keys = iter(mapping)
            # Past the keys drawn: at C speed, nothing kept.
            next(islice(keys, drawn, drawn), None)
        try:
            batch = list(islice(keys, chunk))
        except RuntimeError:
            # Changed in size behind the owner's counts: take every key again.
            yield from tuple(mapping)
            return
        if not batch:
            return
        drawn += len(batch)
        yield from batch


class NameSet:
    """
    A set of names (strings) kept as one dict per first character.

    A snapshot notes every name it reads, a million at a large site.  One set of
    them rehashes all its names each time it grows, in one go: tens of
    milliseconds, a reactor turn that holds binds up.  Split by first character
    (uuids: 16 parts), each part grows in steps a sixteenth as long.

    Each part is a dict of names to C{None}, not a set: a dict holding only strings
    is not tracked by the garbage collector, a set always is.  A full collection
    during a resync (binds leave objects behind, and after C{gc.freeze()} a few
    hundred new ones start one) would otherwise walk every name read so far: about
    100 ms at a million objects.
    """

    __slots__ = ("_parts",)

    def __init__(self):
        self._parts = {}

    def add(self, name):
        part = self._parts.get(name[:1])
        if part is None:
            part = self._parts[name[:1]] = {}
        part[name] = None

    def __contains__(self, name):
        part = self._parts.get(name[:1])
        return part is not None and name in part

    def __len__(self):
        return sum(len(part) for part in self._parts.values())

    def clear(self):
        self._parts.clear()
