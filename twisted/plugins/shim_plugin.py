"""
The twistd plugin that makes C{twistd shimserver} run the shim (see L{shim.tap}).

This directory has no C{__init__.py}: Twisted's C{twisted/plugins} is a namespace that
every installed project drops its plugin modules into.
"""

from twisted.application.service import ServiceMaker

shimserver = ServiceMaker(
    "shim net-l3vpn server",
    "shim.tap",
    "The Gluon net-l3vpn shim layer server: binds proton's ports through a vendor "
    "backend, over etcd v3 or v2.",
    "shimserver",
)
