"""
The port binding state machine, walked transition by transition from a table.
"""

from twisted.trial.unittest import SynchronousTestCase

from shim import portstate
from shim.portstate import (
    BIND,
    BOUND,
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
ON_OURS_RENAMED = port("compute1", "vm1", name="renamed")
ON_OUR_OTHER_HOST = port("compute2", "vm1")
ON_OURS_OTHER_DEVICE = port("compute1", "vm2")
ON_THEIRS = port("compute9", "vm1")
ON_THEIRS_RENAMED = port("compute9", "vm1", name="renamed")

# (state before, prev, new, expected state, expected effects, what it shows)
PORT_EVENTS = [
    # New ports.
    (UNBOUND, None, UNREQUESTED, UNBOUND, (), "a new port without a bind request"),
    (UNBOUND, None, ON_OURS, UNBOUND, (BIND,), "a new port asking for our host"),
    (UNBOUND, None, ON_THEIRS, INUSE, (), "a new port bound by another controller"),
    # Unbound.
    (UNBOUND, UNREQUESTED, ON_OURS, UNBOUND, (BIND,), "bind request for our host"),
    (UNBOUND, UNREQUESTED, ON_THEIRS, INUSE, (), "bind request for another host"),
    (UNBOUND, UNREQUESTED, HOST_ONLY, UNBOUND, (), "host without device is no request"),
    (UNBOUND, UNREQUESTED, DEVICE_ONLY, UNBOUND, (), "device without host is no request"),
    (UNBOUND, UNREQUESTED, NULLS, UNBOUND, (), "nulls are no request"),
    (UNBOUND, ON_OURS, ON_OURS_RENAMED, UNBOUND, (BIND,), "rejected port, changed again"),
    (UNBOUND, UNREQUESTED, None, None, (), "an unbound port deleted"),
    # InUse.
    (INUSE, ON_THEIRS, UNREQUESTED, UNBOUND, (), "unbind of a port bound elsewhere"),
    (INUSE, ON_THEIRS, NULLS, UNBOUND, (), "unbind by nulls of a port bound elsewhere"),
    (INUSE, ON_THEIRS, ON_OURS, UNBOUND, (BIND,), "migration to our host"),
    (INUSE, ON_THEIRS, ON_THEIRS_RENAMED, INUSE, (), "change of a port bound elsewhere"),
    (INUSE, ON_THEIRS, None, None, (), "a port bound elsewhere deleted"),
    # Bound.
    (BOUND, ON_OURS, UNREQUESTED, UNBOUND, (UNBIND, CLEAR_RESULT), "unbind"),
    (BOUND, ON_OURS, NULLS, UNBOUND, (UNBIND, CLEAR_RESULT), "unbind by nulls"),
    (BOUND, ON_OURS, HOST_ONLY, UNBOUND, (UNBIND, CLEAR_RESULT), "device cleared"),
    (BOUND, ON_OURS, ON_THEIRS, INUSE, (UNBIND, RELEASE_RESULT), "migration away"),
    (BOUND, ON_OURS, ON_OUR_OTHER_HOST, BOUND, (UNBIND, BIND), "moved to our other host"),
    (BOUND, ON_OURS, ON_OURS_OTHER_DEVICE, BOUND, (UNBIND, BIND), "attached elsewhere"),
    (BOUND, ON_OURS, ON_OURS_RENAMED, BOUND, (MODIFY,), "another attribute changed"),
    (BOUND, ON_OURS, dict(ON_OURS), BOUND, (), "rewritten unchanged"),
    (BOUND, ON_OURS, None, None, (DELETE, DELETE_RESULT), "a bound port deleted"),
]


class PortEventTests(SynchronousTestCase):
    """
    Every row of L{PORT_EVENTS}, and every effect and state reached by some row.
    """

    def test_table(self):
        failures = []
        for state, prev, new, expected_state, expected_effects, what in PORT_EVENTS:
            got = portstate.on_port_event(state, prev, new, ours)
            if got != Transition(expected_state, expected_effects):
                failures.append(
                    "%s: %s -> got %r, expected %r"
                    % (what, state, got, (expected_state, expected_effects))
                )
        self.assertEqual(failures, [])

    def test_table_covers_everything(self):
        """
        The table reaches every state from every state and every port-event effect.
        """
        pairs = {(row[0], row[3]) for row in PORT_EVENTS}
        effects = {e for row in PORT_EVENTS for e in row[4]}
        self.assertEqual(
            effects,
            {BIND, UNBIND, MODIFY, DELETE, CLEAR_RESULT, RELEASE_RESULT, DELETE_RESULT},
        )
        self.assertTrue({(UNBOUND, INUSE), (INUSE, UNBOUND), (BOUND, UNBOUND),
                         (BOUND, INUSE), (BOUND, BOUND), (UNBOUND, None),
                         (INUSE, None), (BOUND, None)} <= pairs)

    def test_star_host_list(self):
        """
        With C{host_list = *} every host is ours.
        """
        got = portstate.on_port_event(UNBOUND, None, ON_THEIRS, lambda host: True)
        self.assertEqual(got, Transition(UNBOUND, (BIND,)))


class BindOutcomeTests(SynchronousTestCase):
    def test_accepted(self):
        self.assertEqual(
            portstate.on_bind_outcome(UNBOUND, True), Transition(BOUND, (WRITE_RESULT,))
        )

    def test_rejected(self):
        self.assertEqual(portstate.on_bind_outcome(UNBOUND, False), Transition(UNBOUND, ()))

    def test_rebind_accepted(self):
        self.assertEqual(
            portstate.on_bind_outcome(BOUND, True), Transition(BOUND, (WRITE_RESULT,))
        )

    def test_rebind_rejected(self):
        """
        A port moved between two of our hosts whose new bind fails loses the old result.
        """
        self.assertEqual(
            portstate.on_bind_outcome(BOUND, False), Transition(UNBOUND, (CLEAR_RESULT,))
        )


class RetryTests(SynchronousTestCase):
    ROWS = [
        (UNBOUND, ON_OURS, Transition(UNBOUND, (BIND,)), "rejected bind retried"),
        (UNBOUND, UNREQUESTED, Transition(UNBOUND, ()), "nothing asked"),
        (UNBOUND, ON_THEIRS, Transition(UNBOUND, ()), "not our host"),
        (BOUND, ON_OURS, Transition(BOUND, ()), "already bound"),
        (INUSE, ON_THEIRS, Transition(INUSE, ()), "bound elsewhere"),
    ]

    def test_table(self):
        for state, p, expected, what in self.ROWS:
            self.assertEqual(portstate.on_retry(state, p, ours), expected, what)


class BindRequestTests(SynchronousTestCase):
    def test_requests(self):
        self.assertTrue(portstate.is_bind_request(ON_OURS))
        for p in (None, UNREQUESTED, NULLS, HOST_ONLY, DEVICE_ONLY, {}):
            self.assertFalse(portstate.is_bind_request(p), p)
