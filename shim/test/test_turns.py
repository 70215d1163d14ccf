"""
L{shim.turns.walk}: a walk over many items, a slice per reactor turn.
"""

import gc

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from shim import turns
from shim.test.test_workqueue import TurnClock
from shim.turns import Moves, NameSet, keys_of, walk


class SteppedTime:
    """
    A wall clock that moves on by C{step} seconds each time it is read.
    """

    def __init__(self, step):
        self.now = 0.0
        self.step = step

    def __call__(self):
        self.now += self.step
        return self.now


class WalkTests(SynchronousTestCase):
    def test_small_walk_at_once(self):
        """
        A walk whose work fits in one slice runs at once: its Deferred has fired on
        return, and nothing is left for the reactor.
        """
        clock = Clock()
        seen = []
        d = walk(clock, range(1000), seen.append, clock=SteppedTime(0.0))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(seen, list(range(1000)))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_long_walk_in_slices(self):
        """
        A walk that outlasts a slice gives the reactor back and goes on in the next
        turn, in order, until every item is stepped.
        """
        clock = TurnClock()
        seen = []
        # Each look at the time finds a slice gone by: one check per slice.
        items = list(range(1000))
        d = walk(clock, items, seen.append, clock=SteppedTime(turns.SLICE))
        self.assertNoResult(d)
        turns_taken = 1
        while clock.getDelayedCalls():
            self.assertLess(len(seen), len(items))
            clock.turn()
            turns_taken += 1
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(seen, items)
        self.assertGreater(turns_taken, 2)

    def test_items_taken_lazily(self):
        """
        The items are drawn as the walk goes: an item added to a list before the walk
        reaches it is stepped too.
        """
        clock = Clock()
        items = [1, 2]
        seen = []

        def step(item):
            seen.append(item)
            if item == 1:
                items.append(3)

        self.successResultOf(walk(clock, items, step))
        self.assertEqual(seen, [1, 2, 3])

    def test_step_raises(self):
        """
        An exception from a step ends the walk with it.
        """
        clock = Clock()
        seen = []

        def step(item):
            if item == 3:
                raise ValueError("item 3")
            seen.append(item)

        failure = self.failureResultOf(walk(clock, range(10), step), ValueError)
        self.assertEqual(str(failure.value), "item 3")
        self.assertEqual(seen, [0, 1, 2])


class NameSetTests(SynchronousTestCase):
    def test_set_of_names(self):
        """
        L{NameSet} holds names as a set does, whatever they start with, the empty
        name included.
        """
        names = NameSet()
        for name in ["0abc", "0abd", "f", "", "é", "0abc"]:
            names.add(name)
        self.assertEqual(len(names), 5)
        for name in ["0abc", "0abd", "f", "", "é"]:
            self.assertIn(name, names)
        for name in ["0ab", "1abc", "ff", "e"]:
            self.assertNotIn(name, names)
        names.clear()
        self.assertEqual(len(names), 0)
        self.assertNotIn("f", names)

    def test_untracked_by_the_collector(self):
        """
        The names a L{NameSet} holds are in containers the garbage collector does
        not track: a full collection during a snapshot does not walk them.
        """
        names = NameSet()
        for n in range(1000):
            names.add("%x%031x" % (n % 16, n))
        parts = list(names._parts.values())
        self.assertEqual(len(parts), 16)
        for part in parts:
            self.assertFalse(gc.is_tracked(part))


class KeysOfTests(SynchronousTestCase):
    """
    L{keys_of}: the keys of a dict that changes while they are drawn.
    """

    def setUp(self):
        self.table = {"k%03d" % (n,): n for n in range(100)}
        self.moves = Moves()

    def keys(self, chunk=10):
        return keys_of(self.table, self.moves, chunk=chunk)

    def add(self, key):
        self.table[key] = -1
        self.moves.added += 1

    def remove(self, key):
        del self.table[key]
        self.moves.removed += 1

    def test_unchanged(self):
        """
        Every key once, in the dict's order; a value replaced meanwhile changes
        nothing.
        """
        drawn = []
        for key in self.keys():
            drawn.append(key)
            if key == "k050":
                self.table["k010"] = "replaced"
                self.table["k090"] = "replaced"
        self.assertEqual(drawn, list(self.table))

    def test_added(self):
        """
        Keys added while the keys are drawn: every key once, in order, the new ones
        too (drawn past the keys drawn before, without a copy).
        """
        drawn = []
        for key in self.keys():
            drawn.append(key)
            if key == "k015":
                self.add("new1")
            if key == "k055":
                self.add("new2")
        self.assertEqual(drawn, ["k%03d" % (n,) for n in range(100)]
                         + ["new1", "new2"])

    def test_added_often(self):
        """
        Keys added before every chunk: after a few times the keys left come from a
        copy, each once.
        """
        drawn = []
        for n, key in enumerate(self.keys()):
            drawn.append(key)
            if n % 10 == 0:
                self.add("new%d" % (n,))
        originals = ["k%03d" % (n,) for n in range(100)]
        self.assertEqual([k for k in drawn if k.startswith("k")], originals)
        self.assertEqual(len(drawn), len(set(drawn)))
        self.assertEqual(set(drawn) - set(self.table), set())

    def test_removed(self):
        """
        Keys removed while the keys are drawn: every key left comes at least once,
        a removed one not after its chunk was drawn, and only a few come again.
        """
        drawn = []
        for key in self.keys():
            drawn.append(key)
            if key == "k025" and "k040" in self.table:
                self.remove("k040")
                self.remove("k003")
        self.assertEqual(set(drawn), set(self.table) | {"k003"})
        self.assertNotIn("k040", drawn)
        # Drawn again: at most one key per key removed, not every key.
        self.assertLessEqual(len(drawn) - len(set(drawn)), 2)
        self.assertEqual(drawn.index("k003"), 3)

    def test_changed_behind_the_counts(self):
        """
        A dict changed in size without the owner's counts moving: every key again,
        not an error.
        """
        drawn = []
        for key in self.keys():
            drawn.append(key)
            if key == "k025" and "k050" in self.table:
                del self.table["k050"]
        # the chunk of k020-k029 was drawn before the change
        self.assertEqual(drawn[:30], ["k%03d" % (n,) for n in range(30)])
        self.assertEqual(drawn[30:], list(self.table))
        self.assertNotIn("k050", drawn)

    def test_empty(self):
        self.table.clear()
        self.assertEqual(list(self.keys()), [])
