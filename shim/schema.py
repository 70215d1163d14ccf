"""
The model generations proton writes, as descriptions the rest of the shim reads.

Proton has written two generations of the net-l3vpn model into etcd (PROTOCOL.md
section 5): the seed's (2016: ProtonBasePort, VPNPort, VpnInstance, VpnAfConfig) and
Gluon 1.x's (2017: Port, Interface, VpnService, VpnBinding, VpnAfConfig).  Both have
the same shape for the shim:

  - a I{port} table whose rows are bind requests, and whose bind results live under
    C{/controller/net-l3vpn/<port table>/<id>};
  - I{interfaces} of a port (1.x names them in a table whose rows carry C{port_id};
    in the seed a port is its own only interface);
  - I{service bindings}, keyed by interface, each naming a I{service} (a VPN);
  - I{route targets}, listed by name in a service's family attributes.

An L{ApiModel} names these parts; the model, the follower and the controller read it
and never branch on which generation is configured.
"""

from collections import namedtuple

PROTON_PREFIX = "/proton/"
API = "net-l3vpn"

#: Attributes proton stamps on every row of 1.x; a change of these alone is not a
#: change the backend needs to hear, in either model.
VOLATILE = frozenset(["created_at", "updated_at"])

#: Attributes of a port that proton sets from our own bind result: not a change of
#: the port the backend needs to hear of.
VIF_ATTRIBUTES = ("vif_type", "vif_details")


class ApiModel(namedtuple("ApiModel", [
    "name", "port", "interface", "interface_port", "binding", "binding_service",
    "service", "route_target", "families", "ignored", "attributes", "strings",
])):
    """
    One model generation.

    @ivar name: the C{[shim] api_model} value naming it.
    @ivar port: the table of ports (bind requests; results under C{/controller/}).
    @ivar interface: the table of a port's interfaces, or C{None} when a port is its
        own only interface (its bindings are keyed by the port's id).
    @ivar interface_port: the attribute of an interface naming its port.
    @ivar binding: the table of service bindings, keyed by interface id.
    @ivar binding_service: the attribute of a binding naming its service.
    @ivar service: the table of services (VPNs).
    @ivar route_target: the table of route targets, keyed by C{vrf_rt_value} with
        spaces replaced by C{_}.
    @ivar families: the attributes of a service listing route-target keys,
        comma-separated.
    @ivar ignored: tables of the API that are known and of no interest to the
        callbacks (not bad input).
    @ivar attributes: the C{Model} attribute name of each table, for backends
        (C{model.ports}, C{model.vpn_ports}, ...).
    @ivar strings: per table, the attributes that must be a string or null.
    """

    @property
    def tables(self):
        """
        The tables the model keeps, in the order a consistent model is built: what a
        port's bind depends on first.
        """
        tables = [self.route_target, self.service, self.binding]
        if self.interface is not None:
            tables.append(self.interface)
        tables.append(self.port)
        return tuple(tables)

    @property
    def result_prefix(self):
        """
        The prefix of the bind-result keys.
        """
        return "/controller/%s/%s/" % (API, self.port)

    def result_key(self, uuid):
        return self.result_prefix + uuid

    def result_uuid(self, key):
        """
        The port uuid of a bind-result key, or C{None} for any other key.
        """
        prefix = self.result_prefix
        if key.startswith(prefix):
            name = key[len(prefix):]
            if name and "/" not in name:
                return name
        return None

    def proton_key(self, table, name):
        """
        The key proton writes an object of C{table} named C{name} under.
        """
        return "%s%s/%s/%s" % (PROTON_PREFIX, API, table, name)

    def parse_key(self, key):
        """
        Split a proton key into its table and object name.

        @return: C{(table, name)}, or C{(None, None)} for a table of this API that is
            known and of no interest.
        @raise BadKey: when the key has too few or too many path parts or an empty part.
        @raise OtherAPI: when it belongs to another API or an unknown object type.
        """
        parts = key.split("/")
        # "", "proton", api, table, name
        if len(parts) != 5 or parts[0] != "" or parts[1] != "proton":
            raise BadKey(
                "expected /proton/<api>/<table>/<name>, got %d path parts"
                % (len(parts) - 1,)
            )
        _, _, api, table, name = parts
        if not (api and table and name):
            raise BadKey("empty path part")
        if api == API and table in self.ignored:
            return None, None
        if api != API or table not in self.attributes:
            raise OtherAPI(api, table)
        return table, name


class BadKey(ValueError):
    """
    A key under ``/proton/`` that is not ``/proton/<api>/<table>/<name>``.
    """


class OtherAPI(ValueError):
    """
    A well-formed key of an API or object type that the shim does not handle.
    """

    def __init__(self, api, table):
        ValueError.__init__(self, "%s/%s" % (api, table))
        self.api = api
        self.table = table


#: The seed's model (2016), PROTOCOL.md sections 1 and 2.
SEED = ApiModel(
    name="net-l3vpn",
    port="ProtonBasePort",
    interface=None,
    interface_port=None,
    binding="VPNPort",
    binding_service="vpn_instance",
    service="VpnInstance",
    route_target="VpnAfConfig",
    families=("ipv4_family", "ipv6_family"),
    ignored=frozenset(),
    attributes={
        "ProtonBasePort": "ports",
        "VPNPort": "vpn_ports",
        "VpnInstance": "vpn_instances",
        "VpnAfConfig": "vpn_afconfigs",
    },
    strings={
        "ProtonBasePort": ("host_id", "device_id"),
        "VPNPort": ("vpn_instance",),
        "VpnInstance": ("ipv4_family", "ipv6_family"),
        "VpnAfConfig": (),
    },
)

#: Gluon 1.0-1.1's model (2017), PROTOCOL.md section 5.
GLUON_1 = ApiModel(
    name="net-l3vpn-v1.0",
    port="Port",
    interface="Interface",
    interface_port="port_id",
    binding="VpnBinding",
    binding_service="service_id",
    service="VpnService",
    route_target="VpnAfConfig",
    families=("ipv4_family", "ipv6_family"),
    ignored=frozenset(["BGPPeering", "DataplaneTunnel"]),
    attributes={
        "Port": "ports",
        "Interface": "interfaces",
        "VpnBinding": "vpn_bindings",
        "VpnService": "vpn_services",
        "VpnAfConfig": "vpn_afconfigs",
    },
    strings={
        "Port": ("host_id", "device_id"),
        "Interface": ("port_id",),
        "VpnBinding": ("interface_id", "service_id"),
        "VpnService": ("ipv4_family", "ipv6_family"),
        "VpnAfConfig": (),
    },
)

MODELS = {m.name: m for m in (SEED, GLUON_1)}


def model_named(name):
    """
    The L{ApiModel} configured as C{[shim] api_model = name}.
    """
    return MODELS[name]
