"""
The port binding state machine of PROTOCOL.md section 2, free of I/O.

A port is C{Unbound}, C{Bound} (bound by this shim) or C{InUse} (bound by another
controller).  Given a port's state and what changed, L{on_port_event} says what to do as a
L{Transition}: the effects to carry out, in order, and the state that follows.  When the
effects include L{BIND}, the state that follows depends on the backend's answer and is
given by L{on_bind_outcome}.  Effects named after a callback call the backend;
L{WRITE_RESULT}, L{CLEAR_RESULT} (write C{{}}), L{RELEASE_RESULT} (write C{{}} once
proton's wait for another controller's answer is over) and L{DELETE_RESULT} act on the
port's bind result in etcd.  The service carries the effects out; nothing here waits,
writes or logs, so every transition is tested by a table (see C{test_portstate}).
"""

from collections import namedtuple

UNBOUND = "Unbound"
BOUND = "Bound"
INUSE = "InUse"

# Effects, named after the backend callback they call or the etcd write they make.
BIND = "bind_port"
UNBIND = "unbind_port"
MODIFY = "modify_port"
DELETE = "delete_port"
WRITE_RESULT = "write_result"
CLEAR_RESULT = "clear_result"
RELEASE_RESULT = "release_result"
DELETE_RESULT = "delete_result"

#: The attributes that make a port a bind request when both are non-empty.
BIND_ATTRIBUTES = ("host_id", "device_id")


class Transition(namedtuple("Transition", "state effects")):
    """
    What a port event leads to.

    @ivar state: the state after the effects; C{None} when the port is gone, or, when
        C{effects} contains L{BIND}, the state to assume until the bind's outcome is known.
    @ivar effects: a tuple of effect names, to be carried out in order.
    """


def is_bind_request(port):
    """
    Whether C{port} (a mapping, or C{None}) asks to be bound: both its C{host_id} and its
    C{device_id} are non-empty.
    """
    return (
        port is not None and bool(port.get("host_id")) and bool(port.get("device_id"))
    )


def _placement(port):
    return (port.get("host_id"), port.get("device_id"))


def on_port_event(state, prev, new, is_our_host):
    """
    Decide what a change of a port leads to.

    @param state: the port's state before the change (L{UNBOUND} for a new port).
    @param prev: the port's previous attributes, or C{None} if it did not exist.
    @param new: its new attributes, or C{None} if it was deleted.
    @param is_our_host: a callable telling whether a host is in this shim's host list.
    @rtype: L{Transition}
    """
    if new is None:
        if state == BOUND:
            return Transition(None, (DELETE, DELETE_RESULT))
        return Transition(None, ())

    if not is_bind_request(new):
        if state == BOUND:
            return Transition(UNBOUND, (UNBIND, CLEAR_RESULT))
        return Transition(UNBOUND, ())

    ours = is_our_host(new.get("host_id"))
    if state == BOUND:
        if not ours:
            # Migration to a host another controller serves.  Proton is waiting for
            # that controller's result on the same key and takes the first change it
            # sees, so our "{}" must not come first: it is written once proton's wait
            # is over, and only if the key still holds our result.
            return Transition(INUSE, (UNBIND, RELEASE_RESULT))
        if prev is not None and _placement(prev) != _placement(new):
            # Moved to another of our hosts, or to another device: bind afresh.  The old
            # result stays until the new one replaces it, so proton never sees "{}".
            return Transition(BOUND, (UNBIND, BIND))
        if prev is not None and prev != new:
            return Transition(BOUND, (MODIFY,))
        return Transition(BOUND, ())

    if ours:
        return Transition(UNBOUND, (BIND,))
    return Transition(INUSE, ())


def on_retry(state, port, is_our_host):
    """
    Decide whether a port whose bind was rejected or failed should be bound again, now
    that something it depends on (its VPNPort, its VpnInstance or a route target) changed.

    @rtype: L{Transition}
    """
    if (
        state == UNBOUND
        and is_bind_request(port)
        and is_our_host(port.get("host_id"))
    ):
        return Transition(UNBOUND, (BIND,))
    return Transition(state, ())


def on_bind_outcome(prior_state, accepted):
    """
    Decide what follows a call of C{bind_port}.

    @param prior_state: the port's state before the bind was decided.
    @param accepted: C{True} when the backend returned a non-empty result; C{False} when it
        rejected the port (an empty result) or failed.
    @rtype: L{Transition}
    """
    if accepted:
        return Transition(BOUND, (WRITE_RESULT,))
    if prior_state == BOUND:
        # A rebind that failed: the result we wrote before no longer holds.
        return Transition(UNBOUND, (CLEAR_RESULT,))
    return Transition(UNBOUND, ())
