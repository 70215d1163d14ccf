"""
The port binding decisions of PROTOCOL.md section 2, free of I/O.

A port's reconcile compares the current model with what the backend was last told
about the port, and L{decide} says what closes the difference, as a L{Transition}: the
port's binding state and the effects to carry out, in order.  The controller carries
out the first backend call, records what the backend now knows, and decides again, so
that whatever changed meanwhile is taken into account; a port is done when L{decide}
has nothing left to do.

A port is C{Unbound}, C{Bound} (bound by this shim) or C{InUse} (bound by another
controller).  Effects named after a callback call the backend; L{WRITE_RESULT},
L{CLEAR_RESULT} (write C{{}}), L{RELEASE_RESULT} (write C{{}} once proton's wait for
another controller's answer is over) and L{DELETE_RESULT} act on the port's bind
result in etcd.  Nothing here waits, writes or logs, so every decision is tested by a
table (see C{test_portstate}).
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

#: The effects that call the backend.
CALLS = frozenset([BIND, UNBIND, MODIFY, DELETE])

#: The attributes that make a port a bind request when both are non-empty.
BIND_ATTRIBUTES = ("host_id", "device_id")


class Transition(namedtuple("Transition", "state effects")):
    """
    What a port's reconcile leads to.

    @ivar state: the port's binding state; C{None} when the port is gone.  When
        C{effects} holds L{BIND}, the state until the bind's outcome is known.
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


def placement(port):
    """
    A port's C{(host_id, device_id)}.
    """
    return (port.get("host_id") or None, port.get("device_id") or None)


def decide(told, port, is_our_host, port_changed=False, result_current=True,
           result_ours=False):
    """
    Decide what brings the backend and the bind result in line with a port.

    @param told: the placement C{(host_id, device_id)} the backend was told the port
        is bound for, or C{None} when the backend holds no binding of it.
    @param port: the port as the model has it now, or C{None} if it was deleted.
    @param is_our_host: a callable telling whether a host is in this shim's host list.
    @param port_changed: whether attributes of the port other than its placement
        differ from what the backend was told.
    @param result_current: whether etcd holds (or is being given) this shim's result
        for the told placement, and proton has not asked again.
    @param result_ours: whether the bind result in etcd names this shim.
    @rtype: L{Transition}
    """
    if port is None:
        if told is not None:
            return Transition(None, (DELETE, DELETE_RESULT))
        if result_ours:
            return Transition(None, (DELETE_RESULT,))
        return Transition(None, ())

    if not is_bind_request(port):
        if told is not None:
            return Transition(UNBOUND, (UNBIND, CLEAR_RESULT))
        if result_ours:
            return Transition(UNBOUND, (CLEAR_RESULT,))
        return Transition(UNBOUND, ())

    if not is_our_host(port.get("host_id")):
        # Another controller's host.  Proton is waiting for that controller's result
        # on the same key and takes the first change it sees, so our "{}" must not
        # come first: it is written once proton's wait is over, and only if the key
        # still holds our result.
        if told is not None:
            return Transition(INUSE, (UNBIND, RELEASE_RESULT))
        if result_ours:
            return Transition(INUSE, (RELEASE_RESULT,))
        return Transition(INUSE, ())

    if told is None:
        return Transition(UNBOUND, (BIND,))
    if told != placement(port):
        # Moved to another of our hosts, or to another device: bind afresh.  The old
        # result stays until the new one replaces it, so proton never sees "{}".
        return Transition(BOUND, (UNBIND, BIND))
    effects = ()
    if port_changed:
        effects += (MODIFY,)
    if not result_current:
        effects += (WRITE_RESULT,)
    return Transition(BOUND, effects)
