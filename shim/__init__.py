"""
shim: the Gluon net-l3vpn shim layer server.
"""

__version__ = "0.1.0"
