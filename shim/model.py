"""
The in-memory model of the net-l3vpn objects that proton keeps in etcd.

C{Model.ports}, C{Model.vpn_ports}, C{Model.vpn_instances} and C{Model.vpn_afconfigs}
are dicts keyed by the object's key name (the last part of its etcd key: a uuid, or a
route target for C{vpn_afconfigs}).  Their values are L{ModelObject}s: the decoded JSON
row, readable both as items and as attributes, with the etcd revision it was written at.
The model also keeps the two indexes the service asks on every service event: which
ports use a VPN, and which VPNs list a route target.

Nothing here does I/O; the service decides when the model changes.
"""

import json
import sys

from shim import keys
from shim.portstate import UNBOUND

#: The largest value the shim accepts for one object; a port row is about 1 KiB.
MAX_VALUE_SIZE = 256 * 1024

#: Values shorter than this are interned: "True", "ACTIVE", "1500", host names and the
#: like repeat across thousands of ports, and sharing them halves the model's memory.
_INTERN_BELOW = 24

_intern = sys.intern
_loads = json.loads


class BadValue(ValueError):
    """
    An etcd value the shim cannot use; the message says why.
    """


class ModelObject(dict):
    """
    One object of the model: a dict of attribute name to value, readable as attributes.

    @ivar revision: the etcd revision the object was written at.
    """

    __slots__ = ("revision",)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self):
        return "%s(%s)" % (self.__class__.__name__, dict.__repr__(self))


class Port(ModelObject):
    """
    A ProtonBasePort, with its binding state.

    @ivar binding: L{shim.portstate.UNBOUND}, C{BOUND} or C{INUSE}.
    @ivar result: while the port is Bound, the C{vif_type} and C{vif_details} (JSON
        text, as proton writes it) of the bind result this shim wrote; else C{None}.
    """

    __slots__ = ("binding", "result")


_CLASSES = {
    keys.PORT: Port,
    keys.VPN_PORT: ModelObject,
    keys.VPN_INSTANCE: ModelObject,
    keys.VPN_AFCONFIG: ModelObject,
}

#: Attributes the shim interprets, per table; each must be a string or null.
_STRING_ATTRIBUTES = {
    keys.PORT: ("host_id", "device_id"),
    keys.VPN_PORT: ("vpn_instance",),
    keys.VPN_INSTANCE: ("ipv4_family", "ipv6_family"),
    keys.VPN_AFCONFIG: (),
}


def decode(table, value, revision):
    """
    Turn an etcd value into a model object.

    @param table: the object type, one of L{shim.keys.TABLES}.
    @param value: the raw value (bytes).
    @param revision: the revision the value was written at.
    @rtype: L{ModelObject}
    @raise BadValue: the value is too large, not UTF-8, not JSON, not a JSON object, or an
        attribute the shim relies on is not a string or null.
    """
    if len(value) > MAX_VALUE_SIZE:
        raise BadValue("value of %d bytes is larger than %d" % (len(value), MAX_VALUE_SIZE))
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadValue("not UTF-8: %s" % (e,)) from None
    try:
        row = _loads(text)
    except ValueError as e:
        raise BadValue("not JSON: %s" % (e,)) from None
    if type(row) is not dict:
        raise BadValue("not a JSON object but %s" % (type(row).__name__,))
    for name in _STRING_ATTRIBUTES[table]:
        v = row.get(name)
        if v is not None and type(v) is not str:
            raise BadValue("attribute %r is %s, not a string" % (name, type(v).__name__))
    obj = _CLASSES[table](
        {
            _intern(k): (_intern(v) if type(v) is str and len(v) < _INTERN_BELOW else v)
            for k, v in row.items()
        }
    )
    obj.revision = revision
    if table == keys.PORT:
        obj.binding = UNBOUND
        obj.result = None
    return obj


def split_list(text):
    """
    The elements of a comma-separated attribute such as C{ipv4_family}: stripped, empty
    ones dropped.  C{None} is the empty list.
    """
    if not text:
        return []
    return [e for e in (part.strip() for part in text.split(",")) if e]


class Changes:
    """
    What changed in an object, as the backend callbacks receive it.

    @ivar new: attribute name to new value, for every attribute that changed (C{None} for
        an attribute that disappeared).
    @ivar prev: attribute name to previous value, for those attributes that existed before.
    """

    __slots__ = ("new", "prev")

    def __init__(self, new, prev):
        self.new = new
        self.prev = prev

    @classmethod
    def between(cls, prev, new):
        """
        The changes from C{prev} to C{new} (either may be C{None}: created or deleted).
        """
        prev = prev or {}
        new = new or {}
        if prev.keys() == new.keys():
            # The common case: an update that rewrites the same attributes.
            changed_new = {k: v for k, v in new.items() if prev[k] != v}
            return cls(changed_new, {k: prev[k] for k in changed_new})
        changed_new = {}
        changed_prev = {}
        for k, v in new.items():
            if k not in prev:
                changed_new[k] = v
            elif prev[k] != v:
                changed_new[k] = v
                changed_prev[k] = prev[k]
        for k, v in prev.items():
            if k not in new:
                changed_new[k] = None
                changed_prev[k] = v
        return cls(changed_new, changed_prev)

    def __bool__(self):
        return bool(self.new or self.prev)

    def __repr__(self):
        return "Changes(new=%r, prev=%r)" % (self.new, self.prev)


class Model:
    """
    Every net-l3vpn object the shim knows, as last applied.
    """

    def __init__(self):
        self.ports = {}
        self.vpn_ports = {}
        self.vpn_instances = {}
        self.vpn_afconfigs = {}
        self._tables = {
            keys.PORT: self.ports,
            keys.VPN_PORT: self.vpn_ports,
            keys.VPN_INSTANCE: self.vpn_instances,
            keys.VPN_AFCONFIG: self.vpn_afconfigs,
        }
        # vpn instance uuid -> set of port uuids whose VPNPort names it
        self._ports_by_vpn = {}
        # route target name -> set of vpn instance uuids listing it
        self._vpns_by_afconfig = {}

    def table(self, table):
        """
        The dict holding objects of C{table}.
        """
        return self._tables[table]

    def get(self, table, name):
        return self._tables[table].get(name)

    def put(self, table, name, obj):
        """
        Store C{obj} as the object C{name} of C{table}; return the one it replaces, or
        C{None}.
        """
        objects = self._tables[table]
        prev = objects.get(name)
        objects[name] = obj
        if table == keys.VPN_PORT:
            self._index_vpn_port(name, prev, obj)
        elif table == keys.VPN_INSTANCE:
            self._index_vpn_instance(name, prev, obj)
        return prev

    def remove(self, table, name):
        """
        Forget the object C{name} of C{table}; return it, or C{None} if it was unknown.
        """
        prev = self._tables[table].pop(name, None)
        if prev is not None:
            if table == keys.VPN_PORT:
                self._index_vpn_port(name, prev, None)
            elif table == keys.VPN_INSTANCE:
                self._index_vpn_instance(name, prev, None)
        return prev

    def ports_using_vpn(self, vpn):
        """
        The uuids of the ports whose VPNPort names VPN instance C{vpn}.
        """
        return self._ports_by_vpn.get(vpn, ())

    def vpns_listing_afconfig(self, name):
        """
        The uuids of the VPN instances whose C{ipv4_family} or C{ipv6_family} has route
        target C{name} as an element.
        """
        return self._vpns_by_afconfig.get(name, ())

    def vpn_of_port(self, uuid):
        """
        The VPN instance uuid a port is bound to by its VPNPort, or C{None}.
        """
        binding = self.vpn_ports.get(uuid)
        if binding is None:
            return None
        return binding.get("vpn_instance") or None

    def counts(self):
        """
        The number of objects per table.
        """
        return {table: len(objects) for table, objects in self._tables.items()}

    @staticmethod
    def _move(index, member, old_keys, new_keys):
        for k in old_keys:
            if k not in new_keys:
                members = index.get(k)
                if members is not None:
                    members.discard(member)
                    if not members:
                        del index[k]
        for k in new_keys:
            index.setdefault(k, set()).add(member)

    def _index_vpn_port(self, name, prev, new):
        if prev is None and new is not None:
            # The common case (every VPNPort at start-up): a new member, nothing to move.
            vpn = new.get("vpn_instance")
            if vpn:
                members = self._ports_by_vpn.get(vpn)
                if members is None:
                    self._ports_by_vpn[vpn] = {name}
                else:
                    members.add(name)
            return
        old = (prev.get("vpn_instance"),) if prev is not None else ()
        cur = (new.get("vpn_instance"),) if new is not None else ()
        self._move(
            self._ports_by_vpn, name, [k for k in old if k], [k for k in cur if k]
        )

    def _index_vpn_instance(self, name, prev, new):
        self._move(
            self._vpns_by_afconfig, name, _afconfigs_of(prev), _afconfigs_of(new)
        )


def _afconfigs_of(vpn):
    if vpn is None:
        return set()
    return set(split_list(vpn.get("ipv4_family"))) | set(
        split_list(vpn.get("ipv6_family"))
    )
