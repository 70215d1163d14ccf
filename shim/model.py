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

from shim.portstate import UNBOUND
from shim.schema import SEED

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


def decode(table, value, revision, schema=SEED):
    """
    Turn an etcd value into a model object.

    Any failure to decode is bad input, whatever raised it: a value too large, not
    UTF-8, not JSON, nested too deeply for the parser (C{RecursionError}), not a JSON
    object, or an attribute the shim relies on that is not a string or null.

    @param table: the object type, one of C{schema.tables}.
    @param value: the raw value (bytes).
    @param revision: the revision the value was written at.
    @param schema: the L{shim.schema.ApiModel} the table belongs to.
    @rtype: L{ModelObject}
    @raise BadValue: the value cannot be used; the message says why.
    """
    if value is None:
        raise BadValue("no value")
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
    except RecursionError:
        raise BadValue("JSON nested too deeply to decode") from None
    except Exception as e:
        raise BadValue("cannot decode: %r" % (e,)) from None
    if type(row) is not dict:
        raise BadValue("not a JSON object but %s" % (type(row).__name__,))
    for name in schema.strings.get(table, ()):
        v = row.get(name)
        if v is not None and type(v) is not str:
            raise BadValue("attribute %r is %s, not a string" % (name, type(v).__name__))
    cls = Port if table == schema.port else ModelObject
    obj = cls(
        {
            _intern(k): (_intern(v) if type(v) is str and len(v) < _INTERN_BELOW else v)
            for k, v in row.items()
        }
    )
    obj.revision = revision
    if cls is Port:
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
    Every object of the configured model generation the shim knows, as last applied.

    Each table is a dict keyed by the object's key name, also reachable by the
    attribute the schema names (C{model.ports}, C{model.vpn_ports}, ...).  The model
    keeps the indexes the controller asks on every change: which ports a service,
    a service binding or a route target concerns.
    """

    def __init__(self, schema=SEED):
        self.schema = schema
        self._tables = {}
        for table, attribute in schema.attributes.items():
            self._tables[table] = objects = {}
            setattr(self, attribute, objects)
        self.services = self._tables[schema.service]
        self.bindings = self._tables[schema.binding]
        self.route_targets = self._tables[schema.route_target]
        self.interfaces = (
            self._tables[schema.interface] if schema.interface is not None else None
        )
        # service id -> set of binding names naming it
        self._bindings_by_service = {}
        # route target name -> set of service ids listing it
        self._services_by_rt = {}
        # port uuid -> set of interface names whose port_id names it (1.x)
        self._interfaces_by_port = {}

    def table(self, table):
        """
        The dict holding objects of C{table}.
        """
        return self._tables[table]

    def get(self, table, name):
        return self._tables[table].get(name)

    def store(self, table, name, obj, revision):
        """
        Apply one change unless it is older than what the model has.

        @param obj: the new object, or C{None} for a deletion at C{revision}.
        @return: C{(applied, previous object or None)}.
        """
        prev = self._tables[table].get(name)
        if obj is None:
            if prev is None or (prev.revision and prev.revision > revision):
                return False, prev
            self.remove(table, name)
            return True, prev
        if prev is not None and prev.revision and prev.revision >= revision:
            return False, prev
        self.put(table, name, obj)
        return True, prev

    def put(self, table, name, obj):
        """
        Store C{obj} as the object C{name} of C{table}; return the one it replaces, or
        C{None}.
        """
        objects = self._tables[table]
        prev = objects.get(name)
        objects[name] = obj
        self._index(table, name, prev, obj)
        return prev

    def remove(self, table, name):
        """
        Forget the object C{name} of C{table}; return it, or C{None} if it was unknown.
        """
        prev = self._tables[table].pop(name, None)
        if prev is not None:
            self._index(table, name, prev, None)
        return prev

    def clear(self):
        """
        Forget every object (a replaced etcd cluster).
        """
        for objects in self._tables.values():
            objects.clear()
        self._bindings_by_service.clear()
        self._services_by_rt.clear()
        self._interfaces_by_port.clear()

    # -- relations

    def port_of_binding(self, name):
        """
        The uuid of the port a service binding (keyed by interface) belongs to, or
        C{None} while its interface is unknown.
        """
        if self.interfaces is None:
            return name
        interface = self.interfaces.get(name)
        if interface is None:
            return None
        return interface.get(self.schema.interface_port) or None

    def ports_of_interface(self, name):
        """
        The ports an interface change concerns (its port, before and after).
        """
        port = self.port_of_binding(name)
        return (port,) if port else ()

    def binding_names_of_port(self, uuid):
        """
        The names (interface ids) of the service bindings of port C{uuid}, present or
        not.
        """
        if self.interfaces is None:
            return (uuid,)
        return tuple(sorted(self._interfaces_by_port.get(uuid, ())))

    def bindings_of_port(self, uuid):
        """
        The service bindings of port C{uuid}: a dict of binding name to object.
        """
        bindings = self.bindings
        found = {}
        for name in self.binding_names_of_port(uuid):
            binding = bindings.get(name)
            if binding is not None:
                found[name] = binding
        return found

    def service_of_binding(self, binding):
        """
        The service id a binding names, or C{None}.
        """
        return binding.get(self.schema.binding_service) or None

    def services_of_port(self, uuid):
        """
        The ids of the services port C{uuid} is bound to through its bindings.
        """
        services = []
        for binding in self.bindings_of_port(uuid).values():
            service = self.service_of_binding(binding)
            if service and service not in services:
                services.append(service)
        return services

    def ports_using_service(self, service):
        """
        The uuids of the ports whose service bindings name C{service}.
        """
        ports = set()
        for name in self._bindings_by_service.get(service, ()):
            port = self.port_of_binding(name)
            if port:
                ports.add(port)
        return ports

    def services_listing_route_target(self, name):
        """
        The ids of the services whose family attributes list route target C{name} as
        an element.
        """
        return self._services_by_rt.get(name, ())

    def route_targets_of(self, service):
        """
        The route-target names a service object lists, in order.
        """
        return route_targets_of(self.schema, service)

    # The seed's names for the same relations.

    def ports_using_vpn(self, vpn):
        return self.ports_using_service(vpn)

    def vpns_listing_afconfig(self, name):
        return self.services_listing_route_target(name)

    def vpn_of_port(self, uuid):
        """
        The service (VPN) id port C{uuid} is bound to by its first binding, or C{None}.
        """
        services = self.services_of_port(uuid)
        return services[0] if services else None

    def counts(self):
        """
        The number of objects per table.
        """
        return {table: len(objects) for table, objects in self._tables.items()}

    # -- indexes

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
            members = index.get(k)
            if members is None:
                index[k] = {member}
            else:
                members.add(member)

    def _index(self, table, name, prev, new):
        schema = self.schema
        if table == schema.binding:
            field = schema.binding_service
            old = prev.get(field) if prev is not None else None
            cur = new.get(field) if new is not None else None
            if old != cur or prev is None or new is None:
                self._move(
                    self._bindings_by_service, name,
                    (old,) if old else (), (cur,) if cur else (),
                )
        elif table == schema.service:
            self._move(
                self._services_by_rt, name,
                set(route_targets_of(schema, prev)), set(route_targets_of(schema, new)),
            )
        elif table == schema.interface:
            field = schema.interface_port
            old = prev.get(field) if prev is not None else None
            cur = new.get(field) if new is not None else None
            self._move(
                self._interfaces_by_port, name,
                (old,) if old else (), (cur,) if cur else (),
            )


def route_targets_of(schema, service):
    """
    The route-target names listed by a service object's family attributes (none for
    C{None}), in order, without repeats.
    """
    if service is None:
        return ()
    found = []
    for family in schema.families:
        for rt in split_list(service.get(family)):
            if rt not in found:
                found.append(rt)
    return tuple(found)
