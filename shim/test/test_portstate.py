"""
The port binding decisions (L{shim.portstate.decide}), row by row from a table.

A row gives what the backend was told (the placement it bound the port for, or
C{None}), the port as the model has it now, whether anything else about the port or its
result differs, and the L{Transition} expected: the state and the effects in order.
"""

from twisted.trial.unittest import SynchronousTestCase

from shim import portstate
from shim.portstate import (
    BIND,
    BOUND,
    CALLS,
    CLEAR_RESULT,
    DELETE,
    DELETE_RESULT,
    INUSE,
    MODIFY,
    RELEASE_RESULT,
    UNBIND,
    UNBOUND,
    WRITE_RESULT,
    Transition,
    decide,
)

OUR_HOSTS = {"compute1", "compute2"}


def ours(host):
    return host in OUR_HOSTS


def port(host="", device="", **attrs):
    p = {"id": "p1", "name": "port", "host_id": host, "device_id": device}
    p.update(attrs)
    return p


UNREQUESTED = port()
NULLS = port(host=None, device=None)
HOST_ONLY = port(host="compute1")
DEVICE_ONLY = port(device="vm1")
ON_OURS = port("compute1", "vm1")
ON_THEIRS = port("compute9", "vm1")

#: Placements the backend may have been told.
TOLD_HERE = ("compute1", "vm1")
TOLD_OTHER_HOST = ("compute2", "vm1")
TOLD_OTHER_DEVICE = ("compute1", "vm0")

# (told, port, port_changed, result_current, result_ours, expected state,
#  expected effects, what the row shows)
ROWS = [
    # The port is gone.
    (TOLD_HERE, None, False, True, True, None, (DELETE, DELETE_RESULT),
     "a port bound by us deleted: delete_port, then the result key"),
    (TOLD_HERE, None, False, True, False, None, (DELETE, DELETE_RESULT),
     "a port bound by us deleted, the result not naming us: delete_port all the same"),
    (None, None, False, True, True, None, (DELETE_RESULT,),
     "a port never told deleted while etcd has our result: the key goes"),
    (None, None, False, True, False, None, (),
     "a port never told deleted, no result of ours: nothing"),
    # No bind request.
    (TOLD_HERE, UNREQUESTED, False, True, True, UNBOUND, (UNBIND, CLEAR_RESULT),
     "unbind of a port bound by us"),
    (TOLD_HERE, NULLS, False, True, True, UNBOUND, (UNBIND, CLEAR_RESULT),
     "unbind by nulls"),
    (TOLD_HERE, HOST_ONLY, False, True, True, UNBOUND, (UNBIND, CLEAR_RESULT),
     "device cleared: no bind request any more"),
    (TOLD_HERE, DEVICE_ONLY, True, False, False, UNBOUND, (UNBIND, CLEAR_RESULT),
     "host cleared, whatever else differs"),
    (None, UNREQUESTED, False, True, True, UNBOUND, (CLEAR_RESULT,),
     "not told but our result is in etcd (we crashed mid-unbind): clear it"),
    (None, UNREQUESTED, False, True, False, UNBOUND, (),
     "a port without a bind request"),
    (None, NULLS, False, True, False, UNBOUND, (), "nulls are no request"),
    (None, HOST_ONLY, False, True, False, UNBOUND, (), "host without device"),
    (None, DEVICE_ONLY, False, True, False, UNBOUND, (), "device without host"),
    # Another controller's host.
    (TOLD_HERE, ON_THEIRS, False, True, True, INUSE, (UNBIND, RELEASE_RESULT),
     "migration away: unbind, release our result after proton's wait"),
    (TOLD_HERE, ON_THEIRS, True, False, False, INUSE, (UNBIND, RELEASE_RESULT),
     "migration away whatever else differs"),
    (None, ON_THEIRS, False, True, True, INUSE, (RELEASE_RESULT,),
     "not told, our result still there: released, not cleared at once"),
    (None, ON_THEIRS, False, True, False, INUSE, (),
     "a port bound by another controller"),
    # Our host, not told.
    (None, ON_OURS, False, True, False, UNBOUND, (BIND,), "bind request for our host"),
    (None, ON_OURS, False, True, True, UNBOUND, (BIND,),
     "bind request while a result of ours is there (restart without placement)"),
    (None, ON_OURS, True, False, False, UNBOUND, (BIND,),
     "bind request: the other flags do not matter"),
    # Our host, told another placement.
    (TOLD_OTHER_HOST, ON_OURS, False, True, True, BOUND, (UNBIND, BIND),
     "moved between two of our hosts: unbind, bind afresh, result kept meanwhile"),
    (TOLD_OTHER_DEVICE, ON_OURS, False, True, True, BOUND, (UNBIND, BIND),
     "attached to another device (a new VM)"),
    (TOLD_OTHER_HOST, ON_OURS, True, False, False, BOUND, (UNBIND, BIND),
     "moved, whatever else differs: the bind tells the backend everything"),
    # Our host, told this placement.
    (TOLD_HERE, ON_OURS, False, True, True, BOUND, (), "bound, nothing to do"),
    (TOLD_HERE, ON_OURS, True, True, True, BOUND, (MODIFY,),
     "another attribute changed: modify_port"),
    (TOLD_HERE, ON_OURS, False, False, True, BOUND, (WRITE_RESULT,),
     "result missing, foreign or asked for again: written"),
    (TOLD_HERE, ON_OURS, False, False, False, BOUND, (WRITE_RESULT,),
     "result naming another controller: written over"),
    (TOLD_HERE, ON_OURS, True, False, True, BOUND, (MODIFY, WRITE_RESULT),
     "both: modify_port first, then the result"),
]


class DecideTests(SynchronousTestCase):
    """
    Every row of L{ROWS}, and every state and effect reached by some row.
    """

    def test_table(self):
        failures = []
        for (told, p, changed, current, result_ours, state, effects,
             what) in ROWS:
            got = decide(told, p, ours, port_changed=changed,
                         result_current=current, result_ours=result_ours)
            if got != Transition(state, effects):
                failures.append("%s: got %r, expected %r" % (
                    what, got, Transition(state, effects)))
        self.assertEqual(failures, [])

    def test_table_covers_everything(self):
        """
        The table reaches every state and every effect.
        """
        self.assertEqual({row[5] for row in ROWS}, {None, UNBOUND, BOUND, INUSE})
        self.assertEqual(
            {e for row in ROWS for e in row[6]},
            {BIND, UNBIND, MODIFY, DELETE, WRITE_RESULT, CLEAR_RESULT, RELEASE_RESULT,
             DELETE_RESULT},
        )
        self.assertEqual(CALLS, {BIND, UNBIND, MODIFY, DELETE})

    def test_defaults(self):
        """
        Left out, C{port_changed} is false, C{result_current} true and C{result_ours}
        false: a bound port with nothing to do.
        """
        self.assertEqual(decide(TOLD_HERE, ON_OURS, ours), Transition(BOUND, ()))
        self.assertEqual(decide(None, None, ours), Transition(None, ()))

    def test_star_host_list(self):
        """
        With C{host_list = *} every host is ours.
        """
        self.assertEqual(decide(None, ON_THEIRS, lambda host: True),
                         Transition(UNBOUND, (BIND,)))

    def test_pure(self):
        """
        Deciding changes nothing in the port it is given.
        """
        p = dict(ON_OURS)
        decide(TOLD_OTHER_HOST, p, ours, True, False, True)
        self.assertEqual(p, ON_OURS)


class BindRequestTests(SynchronousTestCase):
    def test_requests(self):
        self.assertTrue(portstate.is_bind_request(ON_OURS))
        for p in (None, UNREQUESTED, NULLS, HOST_ONLY, DEVICE_ONLY, {}):
            self.assertFalse(portstate.is_bind_request(p), p)

    def test_placement(self):
        self.assertEqual(portstate.placement(ON_OURS), ("compute1", "vm1"))
        self.assertEqual(portstate.placement(UNREQUESTED), (None, None))
        self.assertEqual(portstate.placement(NULLS), (None, None))
        self.assertEqual(portstate.placement({}), (None, None))
