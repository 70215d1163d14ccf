"""
The seed's etcd key layout (PROTOCOL.md section 1), by name.

The layout of both model generations lives in L{shim.schema}; this module names the
seed's tables and keys for the code that speaks of them directly (C{shim-proton}, the
demo, the tests).
"""

from shim.schema import API, PROTON_PREFIX, SEED, BadKey, OtherAPI

PORT = SEED.port
VPN_PORT = SEED.binding
VPN_INSTANCE = SEED.service
VPN_AFCONFIG = SEED.route_target

#: The object types of the seed's model, in the order a consistent model is built.
TABLES = SEED.tables

RESULT_PREFIX = SEED.result_prefix

parse_proton_key = SEED.parse_key
proton_key = SEED.proton_key
result_key = SEED.result_key
result_uuid = SEED.result_uuid


def afconfig_name(vrf_rt_value):
    """
    The key name proton gives a route target: its value with spaces replaced by C{_}.
    """
    return vrf_rt_value.replace(" ", "_")


__all__ = ["API", "PROTON_PREFIX", "PORT", "VPN_PORT", "VPN_INSTANCE", "VPN_AFCONFIG",
           "TABLES", "RESULT_PREFIX", "BadKey", "OtherAPI", "parse_proton_key",
           "proton_key", "result_key", "result_uuid", "afconfig_name"]
