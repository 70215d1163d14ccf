"""
Proton-server's side of the protocol, for operators, the demo and the tests.

proton-server is the OpenStack API service that writes net-l3vpn objects into etcd and
waits for a shim to answer its bind requests.  L{ProtonClient} does what proton does, in
proton's value format: every non-null attribute is written as a string (C{True} becomes
C{"True"}, C{1500} becomes C{"1500"}, a dict becomes its JSON text), null stays JSON
null, and an update rewrites the whole object.  Its L{ProtonClient.bind} follows proton's
exact sequence, so a shim can be exercised against the real thing's timing window.

It speaks both etcd APIs (it takes an L{shim.etcd.EtcdClient} or an
L{shim.etcd.EtcdV2Client}: the real proton-server writes through v2) and both model
generations (L{shim.schema.SEED}, the seed's 2016 model, and L{shim.schema.GLUON_1},
what Gluon 1.1's proton-server writes: docs/real-proton.md).

C{shim-proton} (L{main}) is the command line around it::

    shim-proton [--etcd URL[,URL...]] [--api v3|v2] [--model net-l3vpn|net-l3vpn-v1.0] ...
    shim-proton vpn create VPN1 --name blue --rd 100:1 --ipv4-family 100:1
    shim-proton rt create 100:1 --type both
    shim-proton port create PORT1 --mac fa:16:3e:00:00:01
    shim-proton vpnport create PORT1 VPN1
    shim-proton bind PORT1 --host compute1 --device vm1
    shim-proton unbind PORT1
    shim-proton show
"""

import argparse
import datetime
import json
import random
import sys
import uuid

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from shim import keys
from shim.etcd import EtcdClient, EtcdV2Client, WatchEvent
from shim.etcd.errors import Compacted, EtcdError
from shim.schema import MODELS, SEED, ApiModel, model_named

log = Logger()

DEFAULT_ETCD = "http://127.0.0.1:2379"

#: proton's attributes of a port, in proton's order.
PORT_ATTRIBUTES = (
    "id", "tenant_id", "name", "network_id", "mac_address", "admin_state_up",
    "device_owner", "device_id", "status", "vnic_type", "host_id", "vif_details",
    "profile", "vif_type", "zone", "ipaddress", "subnet_prefix", "gateway", "mtu",
    "vlan_transparency",
)

#: Gluon 1.1's Port row (docs/real-proton.md), without C{created_at}/C{updated_at}:
#: the addresses moved to the VpnBinding, there is no C{network_id} nor C{zone}.
PORT_ATTRIBUTES_V1 = (
    "id", "tenant_id", "name", "mac_address", "admin_state_up", "status", "vnic_type",
    "mtu", "vlan_transparency", "profile", "device_id", "device_owner", "host_id",
    "vif_details", "vif_type",
)

DEFAULT_TENANT = "proton-tenant"

VPN_ATTRIBUTES = (
    "id", "vpn_instance_name", "description", "ipv4_family", "ipv6_family",
    "route_distinguishers",
)

AFCONFIG_ATTRIBUTES = (
    "vrf_rt_value", "vrf_rt_type", "import_route_policy", "export_route_policy",
)

RT_TYPES = ("export_extcommunity", "import_extcommunity", "both")

#: The attributes a bind request sets and an unbind clears.
BIND_ATTRIBUTES = ("host_id", "device_id")
VIF_ATTRIBUTES = ("vif_type", "vif_details")


class ProtonError(Exception):
    """
    A request that cannot be carried out: an unknown object, a bad argument, a bind
    result that is not a JSON object.  The message says what and where.
    """


class BindInterrupted(ProtonError):
    """
    Proton's wait for a bind result ended before an answer came: its watch on the
    controller key ended (etcd killed, a connection lost).  Whether the shim answered
    is unknown to proton; the real proton-server would answer Nova with no vif.

    @ivar reason: the watch's C{WatchEnded.reason} (C{"connection_lost"}, ...).
    """

    def __init__(self, message, reason=None):
        ProtonError.__init__(self, message)
        self.reason = reason


def timestamp():
    """
    A row's C{created_at}/C{updated_at} as Gluon 1.1 writes it to etcd:
    C{"2026-11-25 10:11:42.570314"} (UTC, a space between date and time).
    """
    return datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")


def gluon_port_key(port_id):
    """
    The key Gluon 1.1 writes beside each port, outside C{/proton/}.
    """
    return "/gluon/port/%s" % (port_id,)


def proton_string(value):
    """
    One attribute as proton writes it: C{None} stays C{None}, a dict or list becomes
    its JSON text, anything else its C{str}.
    """
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def encode_object(attrs):
    """
    The etcd value proton writes for an object: a JSON object of strings and nulls.

    @param attrs: attribute name to value (any type).
    @return: C{bytes}.
    """
    return json.dumps(
        {name: proton_string(value) for name, value in attrs.items()}, sort_keys=True
    ).encode("utf-8")


def decode_value(value):
    """
    Decode an etcd value for display: JSON when it is JSON, text otherwise.
    """
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        return json.loads(text)
    except ValueError:
        return text


def random_mac():
    """
    A MAC address in OpenStack's C{fa:16:3e} range, as Neutron would allocate one.
    """
    return "fa:16:3e:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(3))


def port_defaults(port_id):
    """
    A new port's full attribute set, as proton creates an unbound port.
    """
    return {
        "id": port_id,
        "tenant_id": "proton-tenant",
        "name": "port-%s" % (port_id,),
        "network_id": "proton-net",
        "mac_address": random_mac(),
        "admin_state_up": True,
        "device_owner": "compute:nova",
        "device_id": "",
        "status": "DOWN",
        "vnic_type": "normal",
        "host_id": "",
        "vif_details": None,
        "profile": None,
        "vif_type": None,
        "zone": None,
        "ipaddress": None,
        "subnet_prefix": None,
        "gateway": None,
        "mtu": 1500,
        "vlan_transparency": False,
    }


def port_defaults_v1(port_id):
    """
    A new port's attributes as Gluon 1.1's proton creates an unbound port: its
    placement and vif attributes, C{profile} and C{device_owner} null.
    """
    return {
        "id": port_id,
        "tenant_id": DEFAULT_TENANT,
        "name": "port-%s" % (port_id,),
        "mac_address": random_mac(),
        "admin_state_up": True,
        "status": "DOWN",
        "vnic_type": "normal",
        "mtu": 1500,
        "vlan_transparency": False,
        "profile": None,
        "device_id": None,
        "device_owner": None,
        "host_id": None,
        "vif_details": None,
        "vif_type": None,
    }


class BindOutcome:
    """
    What proton got from a bind request.

    @ivar result: the bind result (a dict) proton saw at the controller key, or C{None}
        when nobody answered within the timeout.
    @ivar elapsed: seconds from the port write to the result seen (to the timeout when
        nobody answered), on the reactor's clock.
    @ivar port: the port object as proton keeps it afterwards (C{vif_type} and
        C{vif_details} copied from the result).
    @ivar written: seconds from the port write to etcd's answer to it, on the same
        clock: the part of C{elapsed} that is proton's own write.
    """

    def __init__(self, result, elapsed, port, written=None):
        self.result = result
        self.elapsed = elapsed
        self.port = port
        self.written = written

    @property
    def timed_out(self):
        return self.result is None

    def __repr__(self):
        return "<BindOutcome result=%r elapsed=%.3f>" % (self.result, self.elapsed)


class ProtonClient:
    """
    Writes net-l3vpn objects into etcd the way proton-server does, and binds ports.

    It keeps the objects it wrote (proton's database), so that an update rewrites the
    whole object; an object it has not seen is read from etcd first, so a client in a
    new process (the CLI) can update what an earlier one created.

    The method names are the seed's; in Gluon 1.x's model a VPN is a C{VpnService}
    and a port's VPN binding a C{VpnBinding} keyed by the port's interface (the
    interface proton creates with the port, whose id is the port's).

    @param etcd: a L{shim.etcd.EtcdClient} or L{shim.etcd.EtcdV2Client}.
    @param schema: the model generation written, an L{shim.schema.ApiModel}
        (L{shim.schema.SEED} by default).
    @param reactor: for the clock of L{bind}; the global reactor by default.
    @param rewrite: whether a bind answered with vif attributes rewrites the port
        with them, as proton does.  C{None}: as the real proton of the model
        generation does in the tests written for it (Gluon 1.x: yes; the seed's: no,
        so that a seed test sees one write per bind request).
    @param proton_url: the C{url} of the C{/gluon/port/<id>} keys (1.x).
    """

    def __init__(self, etcd, schema=SEED, reactor=None, rewrite=None,
                 proton_url="http://127.0.0.1:2705"):
        if schema is not None and not isinstance(schema, ApiModel):
            # ProtonClient(etcd, reactor): the signature before model generations.
            schema, reactor = None, schema
        if reactor is None:
            from twisted.internet import reactor
        if schema is None:
            schema = SEED
        self.etcd = etcd
        self.schema = schema
        self.reactor = reactor
        self.gluon_1 = schema.interface is not None
        self.rewrite = self.gluon_1 if rewrite is None else rewrite
        self.proton_url = proton_url
        self.objects = {}

    # -- generic objects ---------------------------------------------------------

    def _check_table(self, table):
        known = set(self.schema.attributes) | set(self.schema.ignored)
        if table not in known:
            raise ProtonError("unknown table %r of model %s (expected one of %s)"
                              % (table, self.schema.name, ", ".join(sorted(known))))

    @inlineCallbacks
    def put_object(self, table, object_id, attrs):
        """
        Write a whole object in proton's value format, and keep it.

        @return: a Deferred firing with the etcd C{PutResult}.
        """
        self._check_table(table)
        if not object_id or "/" in object_id:
            raise ProtonError("bad %s id %r: must be non-empty and contain no '/'"
                              % (table, object_id))
        attrs = dict(attrs)
        result = yield self.etcd.put(self.schema.proton_key(table, object_id),
                                     encode_object(attrs))
        self.objects[(table, object_id)] = attrs
        return result

    @inlineCallbacks
    def delete_object(self, table, object_id):
        """
        Delete an object's key.

        @return: a Deferred firing with the etcd C{DeleteResult}; its C{deleted} is 0
            when there was no such key.
        """
        result = yield self.etcd.delete(self.schema.proton_key(table, object_id))
        self.objects.pop((table, object_id), None)
        return result

    @inlineCallbacks
    def get_object(self, table, object_id):
        """
        The object as proton keeps it: from memory, or read from etcd the first time.

        @raise ProtonError: (in the Deferred) when it is in neither place or is not a
            JSON object.
        """
        if (table, object_id) in self.objects:
            return dict(self.objects[(table, object_id)])
        key = self.schema.proton_key(table, object_id)
        found = yield self.etcd.get(key)
        if not found.kvs:
            raise ProtonError("no %s %r in etcd (key %s)" % (table, object_id, key))
        attrs = decode_value(found.kvs[0].value)
        if not isinstance(attrs, dict):
            raise ProtonError("%s holds %r, not a JSON object" % (key, attrs))
        self.objects[(table, object_id)] = attrs
        return dict(attrs)

    @inlineCallbacks
    def update_object(self, table, object_id, changes):
        """
        Merge C{changes} into the object and rewrite it whole (in 1.x with a new
        C{updated_at}).

        @return: a Deferred firing with the new attributes.
        """
        attrs = yield self.get_object(table, object_id)
        attrs.update(changes)
        if self.gluon_1:
            attrs["updated_at"] = timestamp()
        yield self.put_object(table, object_id, attrs)
        return attrs

    def _new_row(self, attrs):
        """
        A new row: in 1.x stamped with C{created_at} and C{updated_at} first, as
        proton's database rows are.
        """
        if not self.gluon_1:
            return attrs
        now = timestamp()
        row = {"created_at": now, "updated_at": now}
        row.update(attrs)
        return row

    # -- ports -------------------------------------------------------------------

    @property
    def port_attributes(self):
        """The attributes of a port in this model generation."""
        return PORT_ATTRIBUTES_V1 if self.gluon_1 else PORT_ATTRIBUTES

    @inlineCallbacks
    def create_port(self, port_id, **attrs):
        """
        Create a port with proton's full attribute set; C{attrs} override the defaults.
        In 1.x, proton then writes C{/gluon/port/<id>} and the port's default
        C{Interface/<port id>}, as Gluon 1.1 does.

        @return: a Deferred firing with the port's attributes.
        """
        unknown = sorted(set(attrs) - set(self.port_attributes))
        if unknown:
            raise ProtonError("unknown port attribute(s) in model %s: %s"
                              % (self.schema.name, ", ".join(unknown)))
        port = (port_defaults_v1 if self.gluon_1 else port_defaults)(port_id)
        port.update(attrs)
        port = self._new_row(port)
        yield self.put_object(self.schema.port, port_id, port)
        if self.gluon_1:
            yield self.etcd.put(gluon_port_key(port_id), json.dumps({
                "tenant_id": port.get("tenant_id"), "service": keys.API,
                "url": self.proton_url}))
            yield self.put_object(self.schema.interface, port_id, self._new_row({
                "id": port_id, "tenant_id": port.get("tenant_id"),
                "name": "%s_default" % (port.get("name"),), "port_id": port_id,
                "segmentation_type": "none", "segmentation_id": 0,
            }))
        return port

    def update_port(self, port_id, **changes):
        """
        Change some attributes of a port and rewrite it whole.
        """
        return self.update_object(self.schema.port, port_id, changes)

    @inlineCallbacks
    def delete_port(self, port_id):
        """
        Delete a port; in 1.x also its C{/gluon/port/<id>} and its default
        interface, in proton's order (never its VpnBinding nor C{/controller/}).

        @return: a Deferred firing with the port key's C{DeleteResult}.
        """
        if not self.gluon_1:
            result = yield self.delete_object(self.schema.port, port_id)
            return result
        yield self.etcd.delete(gluon_port_key(port_id))
        result = yield self.delete_object(self.schema.port, port_id)
        yield self.delete_object(self.schema.interface, port_id)
        return result

    # -- VPNs (VpnInstance; VpnService in 1.x) -----------------------------------

    @inlineCallbacks
    def create_vpn(self, vpn_id, name=None, route_distinguishers="",
                   ipv4_family="", ipv6_family="", description="", tenant_id=None):
        """
        Create a VPN.  The family and distinguisher arguments take a list or a
        comma-separated string of route-target keys / distinguishers.
        """
        vpn = {"id": vpn_id}
        if self.gluon_1:
            vpn["tenant_id"] = tenant_id or DEFAULT_TENANT
            vpn["name"] = name if name is not None else vpn_id
        else:
            vpn["vpn_instance_name"] = name if name is not None else vpn_id
        vpn.update({
            "description": description,
            "ipv4_family": _comma_list(ipv4_family),
            "ipv6_family": _comma_list(ipv6_family),
            "route_distinguishers": _comma_list(route_distinguishers),
        })
        vpn = self._new_row(vpn)
        yield self.put_object(self.schema.service, vpn_id, vpn)
        return vpn

    def update_vpn(self, vpn_id, **changes):
        for name in ("ipv4_family", "ipv6_family", "route_distinguishers"):
            if name in changes:
                changes[name] = _comma_list(changes[name])
        if self.gluon_1 and "vpn_instance_name" in changes:
            changes["name"] = changes.pop("vpn_instance_name")
        return self.update_object(self.schema.service, vpn_id, changes)

    def delete_vpn(self, vpn_id):
        return self.delete_object(self.schema.service, vpn_id)

    # -- route targets (VpnAfConfig) -----------------------------------------------

    @inlineCallbacks
    def create_route_target(self, rt_value, rt_type="both",
                            import_route_policy=None, export_route_policy=None):
        """
        Create a VpnAfConfig; its key is C{rt_value} with spaces replaced by C{_}.
        """
        if rt_type not in RT_TYPES:
            raise ProtonError("bad route target type %r (expected one of %s)"
                              % (rt_type, ", ".join(RT_TYPES)))
        afconfig = {}
        if self.gluon_1:
            afconfig["tenant_id"] = DEFAULT_TENANT
        afconfig.update({
            "vrf_rt_value": rt_value,
            "vrf_rt_type": rt_type,
            "import_route_policy": import_route_policy,
            "export_route_policy": export_route_policy,
        })
        afconfig = self._new_row(afconfig)
        yield self.put_object(self.schema.route_target, keys.afconfig_name(rt_value),
                              afconfig)
        return afconfig

    def update_route_target(self, rt_value, **changes):
        if "vrf_rt_type" in changes and changes["vrf_rt_type"] not in RT_TYPES:
            raise ProtonError("bad route target type %r (expected one of %s)"
                              % (changes["vrf_rt_type"], ", ".join(RT_TYPES)))
        return self.update_object(self.schema.route_target,
                                  keys.afconfig_name(rt_value), changes)

    def delete_route_target(self, rt_value):
        return self.delete_object(self.schema.route_target, keys.afconfig_name(rt_value))

    # -- port-to-VPN bindings (VPNPort; VpnBinding in 1.x) ---------------------------

    @inlineCallbacks
    def create_vpn_port(self, port_id, vpn_id, ipaddress=None, subnet_prefix=None,
                        gateway=None, interface_id=None):
        """
        Bind a port to a VPN.  In the seed's model a VPNPort keyed by the port's id;
        in 1.x a VpnBinding keyed by the interface (the port's default interface,
        whose id is the port's, unless C{interface_id} says otherwise) carrying the
        address attributes that 1.x moved off the port.
        """
        if not self.gluon_1:
            binding = {"id": port_id, "vpn_instance": vpn_id}
            yield self.put_object(self.schema.binding, port_id, binding)
            return binding
        interface_id = interface_id or port_id
        key = (self.schema.binding, interface_id)
        created_at = None
        if key in self.objects:
            created_at = self.objects[key].get("created_at")
        binding = self._new_row({
            "tenant_id": DEFAULT_TENANT, "interface_id": interface_id,
            "service_id": vpn_id, "ipaddress": ipaddress,
            "subnet_prefix": subnet_prefix, "gateway": gateway,
        })
        if created_at:
            binding["created_at"] = created_at
        yield self.put_object(self.schema.binding, interface_id, binding)
        return binding

    update_vpn_port = create_vpn_port

    def delete_vpn_port(self, port_id):
        return self.delete_object(self.schema.binding, port_id)

    # -- binding -----------------------------------------------------------------

    @inlineCallbacks
    def bind(self, port_id, host, device, timeout=8.0, before_write=None):
        """
        Ask for a port to be bound on C{host}, as proton does, and wait for the answer.

          1. read the controller key: when it exists, the answer is its first change
             after its modifiedIndex (proton's C{modifiedIndex + 1}); when it is
             missing, create it as C{{}} (only if still absent) and take the first
             change after that;
          2. open a watch on it from there, and wait until etcd confirmed it, so that
             the watch is open before the port is written;
          3. write the port with C{host_id} and C{device_id} set (in 1.x also
             C{device_owner} and C{profile}, as Nova's plugin sends them);
          4. wait at most C{timeout} seconds for a change of the controller key: the
             first change is the answer, as for proton, even an empty C{{}} (which
             proton would copy as an empty C{vif_type});
          5. copy C{vif_type} and C{json.dumps(vif_details)} into the port and, with
             L{rewrite}, write the port again with them.

        Unlike the real proton, a C{modifiedIndex + 1} that etcd has already dropped
        from its history (v2 keeps 1000 events; v3 compacts) is not a failure: no
        change of the key can lie between that index and our read, so the watch
        starts after the read instead (docs/real-proton.md says what proton does).

        @param before_write: called with no argument once the watch is open, just
            before the port is written; the write waits for the Deferred it may
            return.  A benchmark lines up many binds with it and then writes all
            their ports at once.
        @return: a Deferred firing with a L{BindOutcome}.
        @raise ProtonError: (in the Deferred) for an unknown port, a result that is
            not a JSON object, or a watch that ended before an answer came (etcd
            went away): its C{reason} then says why.
        """
        port = yield self.get_object(self.schema.port, port_id)
        ckey = self.schema.result_key(port_id)
        answered = Deferred()

        def on_event(event):
            if answered.called:
                return
            if event.type != "PUT":
                log.info("bind result {key} deleted while proton waits", key=ckey)
                return
            answered.callback(event.value)

        watch, since = yield self._watch_result(ckey, on_event)
        watches = [watch]
        stopping = []

        def interrupted(why, detail=None):
            if not answered.called and not stopping:
                answered.errback(BindInterrupted(
                    "watch on %s ended before a bind result came: %s"
                    % (ckey, detail or why), why))

        @inlineCallbacks
        def resume():
            # etcd compacted the history under the watch (v3's compactions, v2's
            # 1000-event window): read the key again; a change since our start is
            # the answer (its latest value), else watch on from the read.
            try:
                found = yield self.etcd.get(ckey)
                if found.kvs and found.kvs[0].mod_revision >= since:
                    on_event(WatchEvent("PUT", ckey, found.kvs[0].value,
                                        found.kvs[0].mod_revision, None))
                    return
                again = yield self._open_watch(ckey, found.revision + 1, on_event)
            except (EtcdError, ProtonError) as e:
                interrupted(getattr(e, "reason", None) or "compacted",
                            "compacted, then %s" % (e,))
                return
            watches.append(again)
            if stopping:
                again.stop()
            else:
                again.done.addCallback(ended)

        def ended(outcome):
            reason = getattr(outcome, "reason", outcome)
            if reason == "compacted" and not answered.called and not stopping:
                resume()
            else:
                interrupted(reason)
            return outcome

        try:
            watch.done.addCallback(ended)
            if before_write is not None:
                yield before_write()

            port.update(host_id=host, device_id=device)
            if self.gluon_1:
                port.update(device_owner="compute:nova", profile="{}",
                            updated_at=timestamp())
            started = self.reactor.seconds()
            # proton's clock runs from the port write.
            timer = self.reactor.callLater(
                timeout, lambda: answered.called or answered.callback(None))
            try:
                yield self.put_object(self.schema.port, port_id, port)
                written = self.reactor.seconds() - started
                raw = yield answered
            finally:
                if timer.active():
                    timer.cancel()
                # A watch that ended while the port write failed leaves its
                # failure here: it is the write's failure that is reported.
                answered.addErrback(lambda _: None)
            elapsed = self.reactor.seconds() - started
        finally:
            stopping.append(True)
            for each in watches:
                yield each.stop()

        if raw is None:
            return BindOutcome(None, elapsed, port, written)
        result = decode_value(raw)
        if not isinstance(result, dict):
            raise ProtonError("bind result at %s is not a JSON object: %r" % (ckey, result))
        copied = False
        for name in VIF_ATTRIBUTES:
            if name in result:
                value = result[name]
                if name == "vif_details" and self.gluon_1:
                    # Gluon 1.1: json.dumps(vif_details), keys in the answer's order.
                    value = json.dumps(value)
                port[name] = proton_string(value)
                copied = True
        if copied and self.rewrite:
            if self.gluon_1:
                port["updated_at"] = timestamp()
            yield self.put_object(self.schema.port, port_id, port)
        self.objects[(self.schema.port, port_id)] = port
        return BindOutcome(result, elapsed, dict(port), written)

    @inlineCallbacks
    def _watch_result(self, ckey, on_event):
        """
        Proton's first step of a bind: read the controller key, create it as C{{}}
        when missing, and open a watch for its next change.

        @return: a Deferred firing with C{(watch, since)} once etcd confirmed the
            watch: the first change at or after revision C{since} is the answer.
        """
        found = yield self.etcd.get(ckey)
        if not found.kvs:
            created = yield self.etcd.put_if(ckey, b"{}", 0)
            if created.succeeded:
                # Created: anything after the creation is new.
                since = created.revision + 1
                watch = yield self._open_watch(ckey, since, on_event)
                return watch, since
            # Someone (a shim pre-creating it) was first: take the "exists" path.
            found = yield self.etcd.get(ckey)
        if found.kvs:
            since = found.kvs[0].mod_revision + 1
        else:
            since = found.revision + 1
        try:
            watch = yield self._open_watch(ckey, since, on_event)
        except Compacted:
            # The key did not change between since and our read: start after it.
            watch = yield self._open_watch(ckey, found.revision + 1, on_event)
        return watch, since

    @inlineCallbacks
    def _open_watch(self, ckey, start, on_event):
        watch = self.etcd.watch(ckey, start, on_event, prefix=False,
                                prev_kv=False, progress_notify=False)
        try:
            yield watch.started
        except Exception:
            ended = yield watch.done
            if getattr(ended, "reason", None) == "compacted":
                raise Compacted(getattr(ended, "compact_revision", None),
                                "watch on %s from %d" % (ckey, start))
            raise BindInterrupted(
                "watch on %s could not start: %s"
                % (ckey, getattr(ended, "reason", ended)),
                getattr(ended, "reason", None))
        if watch.done.called:
            ended = yield watch.done
            if getattr(ended, "reason", None) == "compacted":
                raise Compacted(getattr(ended, "compact_revision", None),
                                "watch on %s from %d" % (ckey, start))
        return watch

    @inlineCallbacks
    def unbind(self, port_id):
        """
        Unbind a port: clear C{host_id}, C{device_id} and (as proton does itself) the
        vif attributes, and rewrite it.  In 1.x, as Gluon 1.1: the port is written
        with C{host_id} and C{device_id} C{""}, then again with C{vif_type} null and
        C{vif_details} C{"{}"}.

        @return: a Deferred firing with the port's attributes.
        """
        changes = {"host_id": "", "device_id": ""}
        if self.gluon_1:
            yield self.update_object(self.schema.port, port_id, changes)
            port = yield self.update_object(self.schema.port, port_id,
                                            {"vif_type": None, "vif_details": "{}"})
            return port
        changes.update({name: None for name in VIF_ATTRIBUTES})
        port = yield self.update_object(self.schema.port, port_id, changes)
        return port

    # -- inspection --------------------------------------------------------------

    @inlineCallbacks
    def show(self):
        """
        Everything under C{/proton/} and C{/controller/} (and in 1.x C{/gluon/}),
        decoded.

        @return: a Deferred firing with a dict of key to decoded value, in key order.
        """
        shown = {}
        prefixes = [keys.PROTON_PREFIX, "/controller/"]
        if self.gluon_1:
            prefixes.append("/gluon/")
        for prefix in prefixes:
            found = yield self.etcd.get_all(prefix)
            for kv in found.kvs:
                shown[kv.key] = decode_value(kv.value)
        return dict(sorted(shown.items()))


def _comma_list(value):
    """
    proton's comma-separated list text from a list or a string.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(value)
    return ",".join(part.strip() for part in value.split(",") if part.strip())


# -- the command line ----------------------------------------------------------------

def _port_options(parser):
    """
    The port attributes as options; an option not given leaves the attribute alone.
    """
    parser.add_argument("--name")
    parser.add_argument("--tenant", dest="tenant_id")
    parser.add_argument("--network", dest="network_id")
    parser.add_argument("--mac", dest="mac_address")
    parser.add_argument("--host", dest="host_id")
    parser.add_argument("--device", dest="device_id")
    parser.add_argument("--device-owner", dest="device_owner")
    parser.add_argument("--status", choices=["ACTIVE", "DOWN"])
    parser.add_argument("--vnic-type", dest="vnic_type")
    parser.add_argument("--zone")
    parser.add_argument("--ip", dest="ipaddress")
    parser.add_argument("--prefix", dest="subnet_prefix")
    parser.add_argument("--gateway")
    parser.add_argument("--mtu", type=int)
    parser.add_argument("--admin-state", dest="admin_state_up",
                        choices=["up", "down"])
    parser.add_argument("--set", action="append", default=[], metavar="ATTR=VALUE",
                        help="set any attribute to a string value")


def _vpn_options(parser):
    parser.add_argument("--name", dest="vpn_instance_name")
    parser.add_argument("--description")
    parser.add_argument("--rd", dest="route_distinguishers", metavar="RD[,RD]")
    parser.add_argument("--ipv4-family", dest="ipv4_family", metavar="RT[,RT]")
    parser.add_argument("--ipv6-family", dest="ipv6_family", metavar="RT[,RT]")
    parser.add_argument("--set", action="append", default=[], metavar="ATTR=VALUE")


def _rt_options(parser, create):
    parser.add_argument("--type", dest="vrf_rt_type", choices=RT_TYPES,
                        default="both" if create else None)
    parser.add_argument("--import-policy", dest="import_route_policy")
    parser.add_argument("--export-policy", dest="export_route_policy")
    parser.add_argument("--set", action="append", default=[], metavar="ATTR=VALUE")


def build_parser():
    """
    The argument parser of C{shim-proton}.
    """
    parser = argparse.ArgumentParser(
        prog="shim-proton",
        description="Act as proton-server: write net-l3vpn objects into etcd, "
                    "bind ports and show what is there.")
    parser.add_argument("--etcd", default=DEFAULT_ETCD, metavar="URL[,URL...]",
                        help="etcd endpoints (default %(default)s)")
    parser.add_argument("--etcd-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="timeout of one etcd request (default %(default)s)")
    parser.add_argument("--api", choices=("v3", "v2"), default="v3",
                        help="the etcd API to write through (default %(default)s; "
                             "the real proton-server writes through v2)")
    parser.add_argument("--model", choices=sorted(MODELS), default=SEED.name,
                        help="the model generation to write: the seed's (net-l3vpn, "
                             "the default) or Gluon 1.x's (net-l3vpn-v1.0)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    port = commands.add_parser("port", help="create, update or delete a port")
    port_cmds = port.add_subparsers(dest="action", required=True)
    p = port_cmds.add_parser("create", help="create a port (proton's full attribute set)")
    p.add_argument("id", nargs="?", help="port id (a new uuid when omitted)")
    _port_options(p)
    p = port_cmds.add_parser("update", help="change attributes, rewrite the whole port")
    p.add_argument("id")
    _port_options(p)
    p = port_cmds.add_parser("delete", help="delete a port")
    p.add_argument("id")

    vpn = commands.add_parser("vpn", help="create, update or delete a VpnInstance")
    vpn_cmds = vpn.add_subparsers(dest="action", required=True)
    p = vpn_cmds.add_parser("create")
    p.add_argument("id")
    _vpn_options(p)
    p = vpn_cmds.add_parser("update")
    p.add_argument("id")
    _vpn_options(p)
    p = vpn_cmds.add_parser("delete")
    p.add_argument("id")

    rt = commands.add_parser("rt", help="create, update or delete a route target "
                                        "(VpnAfConfig)")
    rt_cmds = rt.add_subparsers(dest="action", required=True)
    p = rt_cmds.add_parser("create")
    p.add_argument("value", help="vrf_rt_value, e.g. 100:1")
    _rt_options(p, True)
    p = rt_cmds.add_parser("update")
    p.add_argument("value")
    _rt_options(p, False)
    p = rt_cmds.add_parser("delete")
    p.add_argument("value")

    vpnport = commands.add_parser("vpnport", help="bind a port to a VPN (VPNPort; "
                                                  "in 1.x a VpnBinding of its interface)")
    vp_cmds = vpnport.add_subparsers(dest="action", required=True)
    for action in ("create", "update"):
        p = vp_cmds.add_parser(action)
        p.add_argument("port")
        p.add_argument("vpn")
        p.add_argument("--ip", dest="ipaddress", help="1.x: the binding's address")
        p.add_argument("--prefix", dest="subnet_prefix", help="1.x: its prefix length")
        p.add_argument("--gateway", help="1.x: its gateway")
    p = vp_cmds.add_parser("delete")
    p.add_argument("port")

    p = commands.add_parser("bind", help="bind a port as proton does and print the "
                                         "result")
    p.add_argument("port")
    p.add_argument("--host", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--timeout", type=float, default=8.0,
                   help="seconds to wait for the bind result (default %(default)s)")

    p = commands.add_parser("unbind", help="unbind a port")
    p.add_argument("port")

    commands.add_parser("show", help="print everything under /proton/ and /controller/")
    return parser


def _set_pairs(pairs):
    """
    C{--set ATTR=VALUE} options as a dict; C{ATTR=} alone means null.
    """
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise ProtonError("--set %r: expected ATTR=VALUE" % (pair,))
        out[name] = value if value else None
    return out


def _given(args, names):
    """
    The options among C{names} that were given on the command line.
    """
    return {name: getattr(args, name) for name in names
            if getattr(args, name, None) is not None}


@inlineCallbacks
def run(client, args, out):
    """
    Carry out one parsed command with C{client}, writing to C{out}.

    @return: a Deferred firing with the exit code.
    """
    schema = client.schema

    def emit(thing):
        out.write(json.dumps(thing, indent=2, sort_keys=True) + "\n")

    if args.command == "port":
        if args.action == "delete":
            deleted = yield client.delete_port(args.id)
            if not deleted.deleted:
                raise ProtonError("no port %r in etcd to delete" % (args.id,))
            out.write("deleted port %s\n" % (args.id,))
            return 0
        attrs = _given(args, client.port_attributes)
        unknown = sorted(set(_given(args, PORT_ATTRIBUTES)) - set(attrs))
        if unknown:
            raise ProtonError("port attribute(s) %s are not in model %s"
                              % (", ".join(unknown), client.schema.name))
        if "admin_state_up" in attrs:
            attrs["admin_state_up"] = attrs["admin_state_up"] == "up"
        attrs.update(_set_pairs(args.set))
        if args.action == "create":
            port_id = args.id or str(uuid.uuid4())
            attrs.pop("id", None)
            port = yield client.create_port(port_id, **attrs)
        else:
            port = yield client.update_port(args.id, **attrs)
        emit({schema.proton_key(schema.port, port["id"]):
              json.loads(encode_object(port))})
    elif args.command == "vpn":
        if args.action == "delete":
            deleted = yield client.delete_vpn(args.id)
            if not deleted.deleted:
                raise ProtonError("no vpn %r in etcd to delete" % (args.id,))
            out.write("deleted vpn %s\n" % (args.id,))
            return 0
        attrs = _given(args, VPN_ATTRIBUTES)
        attrs.update(_set_pairs(args.set))
        if args.action == "create":
            vpn = yield client.create_vpn(
                args.id, name=attrs.pop("vpn_instance_name", None),
                route_distinguishers=attrs.pop("route_distinguishers", ""),
                ipv4_family=attrs.pop("ipv4_family", ""),
                ipv6_family=attrs.pop("ipv6_family", ""),
                description=attrs.pop("description", ""))
            if attrs:
                vpn = yield client.update_vpn(args.id, **attrs)
        else:
            vpn = yield client.update_vpn(args.id, **attrs)
        emit({schema.proton_key(schema.service, args.id): json.loads(encode_object(vpn))})
    elif args.command == "rt":
        name = keys.afconfig_name(args.value)
        if args.action == "delete":
            deleted = yield client.delete_route_target(args.value)
            if not deleted.deleted:
                raise ProtonError("no route target %r in etcd to delete" % (args.value,))
            out.write("deleted route target %s\n" % (args.value,))
            return 0
        attrs = _given(args, AFCONFIG_ATTRIBUTES)
        attrs.update(_set_pairs(args.set))
        if args.action == "create":
            rt = yield client.create_route_target(
                args.value, rt_type=attrs.pop("vrf_rt_type"),
                import_route_policy=attrs.pop("import_route_policy", None),
                export_route_policy=attrs.pop("export_route_policy", None))
            if attrs:
                rt = yield client.update_route_target(args.value, **attrs)
        else:
            rt = yield client.update_route_target(args.value, **attrs)
        emit({schema.proton_key(schema.route_target, name):
              json.loads(encode_object(rt))})
    elif args.command == "vpnport":
        if args.action == "delete":
            deleted = yield client.delete_vpn_port(args.port)
            if not deleted.deleted:
                raise ProtonError("no vpnport %r in etcd to delete" % (args.port,))
            out.write("deleted vpnport %s\n" % (args.port,))
            return 0
        extra = _given(args, ("ipaddress", "subnet_prefix", "gateway"))
        if extra and not client.gluon_1:
            raise ProtonError("--ip, --prefix and --gateway belong to the port in model"
                              " %s (port create/update)" % (schema.name,))
        binding = yield client.create_vpn_port(args.port, args.vpn, **extra)
        emit({schema.proton_key(schema.binding, args.port):
              json.loads(encode_object(binding))})
    elif args.command == "bind":
        outcome = yield client.bind(args.port, args.host, args.device,
                                    timeout=args.timeout)
        if outcome.timed_out:
            out.write("timed out after %.1f s: no bind result for port %s\n"
                      % (args.timeout, args.port))
            return 1
        if not outcome.result.get("vif_type"):
            out.write("the bind result of port %s changed to %s, without a vif_type: "
                      "Nova would plug nothing\n"
                      % (args.port, json.dumps(outcome.result)))
            return 1
        shown = {name: outcome.result.get(name)
                 for name in ("vif_type", "vif_details", "controller")}
        shown["elapsed_ms"] = round(outcome.elapsed * 1000.0, 1)
        emit(shown)
    elif args.command == "unbind":
        yield client.unbind(args.port)
        out.write("unbound port %s\n" % (args.port,))
    elif args.command == "show":
        shown = yield client.show()
        emit(shown)
    return 0


@inlineCallbacks
def _react_main(reactor, argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    endpoints = [url.strip() for url in args.etcd.split(",") if url.strip()]
    if not endpoints:
        parser.error("--etcd: no endpoint given")
    factory = EtcdV2Client if args.api == "v2" else EtcdClient
    etcd = factory(endpoints=endpoints, timeout=args.etcd_timeout, reactor=reactor)
    code = 1
    try:
        code = yield run(ProtonClient(etcd, model_named(args.model), reactor), args,
                         sys.stdout)
    except ProtonError as e:
        sys.stderr.write("shim-proton: %s\n" % (e,))
    except EtcdError as e:
        sys.stderr.write("shim-proton: %s\n" % (e,))
    finally:
        yield etcd.close()
    sys.stdout.flush()
    raise SystemExit(code)


def main(argv=None):
    """
    The C{shim-proton} console script.
    """
    from twisted.internet import task

    task.react(_react_main, [sys.argv[1:] if argv is None else argv])


if __name__ == "__main__":
    main()
