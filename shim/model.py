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
from collections.abc import KeysView, MutableMapping

from shim.portstate import UNBOUND
from shim.schema import SEED
from shim.turns import Moves, keys_of

#: The largest value the shim accepts for one object; a port row is about 1 KiB.
MAX_VALUE_SIZE = 256 * 1024

#: Values shorter than this are interned: "ACTIVE", "DOWN", "normal" and the like
#: repeat across thousands of ports.  Longer ones are interned only for the
#: attributes in L{_SHARED_ATTRIBUTES}: a MAC or an IP address is one port's own, and
#: interning it would only add an entry to the interpreter's table.
_INTERN_BELOW = 8

_intern = sys.intern
_loads = json.loads


class BadValue(ValueError):
    """
    An etcd value the shim cannot use; the message says why.
    """


class Shape:
    """
    The attribute names of a row, in order, shared by every row that has them: a
    table's rows nearly always have one shape, so a row holds only its values.

    @ivar names: the attribute names, a tuple.
    @ivar index: attribute name to its position in a row's values.
    """

    __slots__ = ("names", "index", "_with", "_without")

    def __init__(self, names):
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        self._with = {}
        self._without = {}

    def adding(self, name):
        """
        The shape of a row of this shape with C{name} added at the end.
        """
        shape = self._with.get(name)
        if shape is None:
            shape = shape_of(self.names + (name,))
            if len(self._with) < _MAX_SHAPES:
                self._with[name] = shape
        return shape

    def removing(self, name):
        """
        The shape of a row of this shape without C{name}.
        """
        shape = self._without.get(name)
        if shape is None:
            shape = shape_of(tuple(n for n in self.names if n != name))
            if len(self._without) < _MAX_SHAPES:
                self._without[name] = shape
        return shape


#: Shapes kept for sharing; past this many (rows of ever new attribute sets), a new
#: shape is made per row rather than kept for ever.
_MAX_SHAPES = 1024

_shapes = {}


def shape_of(names):
    """
    The shared L{Shape} of the attribute names C{names} (a tuple).
    """
    shape = _shapes.get(names)
    if shape is None:
        names = tuple(_intern(n) if type(n) is str else n for n in names)
        shape = Shape(names)
        if len(_shapes) < _MAX_SHAPES:
            _shapes[names] = shape
    return shape


_NO_VALUE = object()


class ModelObject:
    """
    One object of the model: attribute name to value, readable both as a mapping
    (C{obj["host_id"]}, C{obj.get(...)}, C{dict(obj)}, C{obj.items()}, iteration,
    C{==} with a dict) and as attributes (C{obj.host_id}).

    A row is its L{Shape} (the attribute names, shared by the rows that have the
    same) and a tuple of values: about half the memory of a dict per row, which
    counts with a million objects.  A write (rare: the controller merges its bind
    result's vif attributes) replaces the tuple.

    @ivar revision: the etcd revision the object was written at (0 when unknown).
    """

    __slots__ = ("_shape", "_values", "revision")

    def __init__(self, *args, **kwargs):
        row = dict(*args, **kwargs)
        self._shape = shape_of(tuple(row))
        self._values = tuple([_share(k, v) for k, v in row.items()])
        self.revision = 0

    @classmethod
    def _of(cls, shape, values, revision):
        """
        An object of C{shape} holding C{values} (a tuple).
        """
        obj = cls.__new__(cls)
        obj._shape = shape
        obj._values = values
        obj.revision = revision
        return obj

    # -- reading

    def __getattr__(self, name):
        if name[:1] == "_":
            # Our own slots, while unset (copying), and Python's protocols.
            raise AttributeError(name)
        try:
            return self._values[self._shape.index[name]]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name):
        return self._values[self._shape.index[name]]

    def get(self, name, default=None):
        i = self._shape.index.get(name)
        return default if i is None else self._values[i]

    def __contains__(self, name):
        return name in self._shape.index

    def __iter__(self):
        return iter(self._shape.names)

    def __len__(self):
        return len(self._values)

    def keys(self):
        """
        The attribute names, as a set-like view (as C{dict.keys()}).
        """
        return _KeysView(self)

    def values(self):
        return list(self._values)

    def items(self):
        """
        C{(name, value)} pairs, in order (a list).
        """
        return list(zip(self._shape.names, self._values))

    def copy(self):
        """
        A plain dict of the attributes.
        """
        return dict(zip(self._shape.names, self._values))

    def __copy__(self):
        obj = self.__class__._of(self._shape, self._values, self.revision)
        for name in self.__class__.__slots__ if self.__class__ is not ModelObject else ():
            setattr(obj, name, getattr(self, name))
        return obj

    def __eq__(self, other):
        if isinstance(other, ModelObject):
            if self._shape is other._shape:
                return self._values == other._values
            return self.copy() == other.copy()
        if isinstance(other, dict):
            return self.copy() == other
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def __repr__(self):
        return "%s(%r)" % (self.__class__.__name__, self.copy())

    # -- writing (the controller merges its bind result's vif attributes)

    def __setitem__(self, name, value):
        i = self._shape.index.get(name)
        if i is None:
            self._shape = self._shape.adding(name)
            self._values += (_share(name, value),)
        else:
            values = self._values
            self._values = values[:i] + (_share(name, value),) + values[i + 1:]

    def __delitem__(self, name):
        i = self._shape.index[name]
        self._shape = self._shape.removing(name)
        self._values = self._values[:i] + self._values[i + 1:]

    def pop(self, name, default=_NO_VALUE):
        i = self._shape.index.get(name)
        if i is None:
            if default is _NO_VALUE:
                raise KeyError(name)
            return default
        value = self._values[i]
        del self[name]
        return value

    def setdefault(self, name, default=None):
        i = self._shape.index.get(name)
        if i is None:
            self[name] = default
            return default
        return self._values[i]

    def update(self, *args, **kwargs):
        for name, value in dict(*args, **kwargs).items():
            self[name] = value


class _KeysView(KeysView):
    __slots__ = ()


MutableMapping.register(ModelObject)


class Port(ModelObject):
    """
    A ProtonBasePort, with its binding state.

    @ivar binding: L{shim.portstate.UNBOUND}, C{BOUND} or C{INUSE}.
    @ivar result: while the port is Bound, the C{vif_type} and C{vif_details} (JSON
        text, as proton writes it) of the bind result this shim wrote; else C{None}.
    """

    __slots__ = ("binding", "result")

    def __init__(self, *args, **kwargs):
        ModelObject.__init__(self, *args, **kwargs)
        self.binding = UNBOUND
        self.result = None


#: Attributes whose values repeat across many rows, whatever their length: the
#: tenant, network, host and service a row names, and our bind result's vif
#: attributes.  They are interned (shared); a row's own id is not.
_SHARED_ATTRIBUTES = frozenset([
    "tenant_id", "network_id", "host_id", "zone", "gateway", "device_owner",
    "vif_type", "vif_details", "vpn_instance", "service_id", "ipv4_family",
    "ipv6_family", "vrf_rt_type", "status", "vnic_type", "vrf_rt_value",
])

#: Small JSON objects in rows (C{profile: {"migrating_to": null}}) shared by value;
#: at most this many kept.
_MAX_SHARED_OBJECTS = 4096
_shared_objects = {}


def _share(name, value):
    """
    The value to keep for attribute C{name}: a common string interned, a small
    JSON object of scalars shared with the equal ones already seen.
    """
    kind = type(value)
    if kind is str:
        if len(value) < _INTERN_BELOW or name in _SHARED_ATTRIBUTES:
            return _intern(value)
        return value
    if kind is dict and len(value) <= 4:
        try:
            # true and 1 are equal in Python, not in JSON: the type is part of the key.
            key = tuple((k, type(v), v) for k, v in value.items())
            shared = _shared_objects.get(key)
        except TypeError:
            # A nested list or object: not shared.
            return value
        if shared is not None:
            return shared
        if len(_shared_objects) < _MAX_SHARED_OBJECTS:
            _shared_objects[key] = value
    return value


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
    shape = shape_of(tuple(row))
    values = tuple([_share(k, v) for k, v in row.items()])
    if table == schema.port:
        obj = Port._of(shape, values, revision)
        obj.binding = UNBOUND
        obj.result = None
        return obj
    return ModelObject._of(shape, values, revision)


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
        if (type(prev) is type(new) and isinstance(prev, ModelObject)
                and prev._shape is new._shape):
            # Two rows of one shape: compare value by value.
            changed_new = {}
            changed_prev = {}
            for name, a, b in zip(prev._shape.names, prev._values, new._values):
                if a is not b and a != b:
                    changed_new[name] = b
                    changed_prev[name] = a
            return cls(changed_new, changed_prev)
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
        # table -> its objects added and removed so far: a walk over a table's
        # names tells from them whether it changed (shim.turns.keys_of)
        self._moves = {table: Moves() for table in self._tables}

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
        name = self._shared_name(table, name, obj)
        prev = objects.get(name)
        objects[name] = obj
        if prev is None:
            self._moves[table].added += 1
        self._index(table, name, prev, obj)
        return prev

    def names(self, table):
        """
        The names of C{table}'s objects, drawn lazily while the model may change (see
        L{shim.turns.keys_of}).
        """
        return keys_of(self._tables[table], self._moves[table])

    def key_of(self, table, name):
        """
        The string C{table} holds as the key of object C{name} (its own C{id} when
        that is its name), or C{name} when there is no such object: what keeps a
        name by the object's (the controller's record of a port, its result) keeps
        that one string, not another copy of a uuid.
        """
        obj = self._tables[table].get(name)
        if obj is not None:
            ident = obj.get("id")
            if type(ident) is str and ident == name:
                return ident
        return name

    def _shared_name(self, table, name, obj):
        """
        The one string to keep for an object's name: its own C{id} when that is
        the name, and in the seed a port and its VPNPort share their uuid, so that
        a uuid is held once, not four times (key and id of each).
        """
        ident = obj.get("id")
        if type(ident) is str and ident == name:
            name = ident
        schema = self.schema
        if schema.interface is None and table in (schema.port, schema.binding):
            other = self._tables[
                schema.binding if table == schema.port else schema.port].get(name)
            if other is not None:
                theirs = other.get("id")
                if type(theirs) is str and theirs == name:
                    name = theirs
                    if ident is not None and ident is not name and ident == name:
                        obj["id"] = name
        return name

    def remove(self, table, name):
        """
        Forget the object C{name} of C{table}; return it, or C{None} if it was unknown.
        """
        prev = self._tables[table].pop(name, None)
        if prev is not None:
            self._moves[table].removed += 1
            self._index(table, name, prev, None)
        return prev

    def clear(self):
        """
        Forget every object (a replaced etcd cluster).
        """
        for table, objects in self._tables.items():
            self._moves[table].removed += len(objects)
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
