"""
The etcd key layout of the net-l3vpn API.

Proton writes its rows under ``/proton/<api>/<table>/<name>``; the shim writes each
port's bind result under ``/controller/net-l3vpn/ProtonBasePort/<uuid>``.  This module
is the one place that knows those shapes.
"""

PROTON_PREFIX = "/proton/"
API = "net-l3vpn"

PORT = "ProtonBasePort"
VPN_PORT = "VPNPort"
VPN_INSTANCE = "VpnInstance"
VPN_AFCONFIG = "VpnAfConfig"

#: The object types of the net-l3vpn API, in the order a consistent model is built: what
#: a port's bind depends on comes before the port.
TABLES = (VPN_AFCONFIG, VPN_INSTANCE, VPN_PORT, PORT)

RESULT_PREFIX = "/controller/%s/%s/" % (API, PORT)


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


def parse_proton_key(key):
    """
    Split a proton key into its table and object name.

    @param key: an etcd key, e.g. ``/proton/net-l3vpn/VPNPort/<uuid>``.
    @return: C{(table, name)}.
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
    if api != API or table not in TABLES:
        raise OtherAPI(api, table)
    return table, name


def proton_key(table, name):
    """
    The key proton writes an object of C{table} named C{name} under.
    """
    return "%s%s/%s/%s" % (PROTON_PREFIX, API, table, name)


def result_key(uuid):
    """
    The key of a port's bind result.
    """
    return RESULT_PREFIX + uuid


def result_uuid(key):
    """
    The port uuid of a bind-result key, or C{None} for any other key.
    """
    if key.startswith(RESULT_PREFIX):
        name = key[len(RESULT_PREFIX):]
        if name and "/" not in name:
            return name
    return None


def afconfig_name(vrf_rt_value):
    """
    The key name proton gives a route target: its value with spaces replaced by C{_}.
    """
    return vrf_rt_value.replace(" ", "_")
