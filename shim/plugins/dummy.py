"""
The C{dummy} backend: logs every callback, binds ports that belong to a known VPN.

This module is the template for a vendor's backend.  To write one:

  1. Copy this file into your own package (say C{acme/shim_backend.py}).
  2. Rename the class, and replace the body of each callback with the calls to your
     SDN controller.  Keep every callback idempotent: the shim may repeat a call after
     a resynchronisation or a restart.  Return a Deferred for anything that waits on
     the network; never block (no C{time.sleep}, no synchronous HTTP): the whole shim
     runs in one reactor thread.
  3. Select it in C{shim.conf}, either by import path::

         [shim]
         backend = acme.shim_backend:AcmeBackend

     or by a plugin name: put a module holding
     C{acme = BackendPlugin("acme", AcmeBackend)} in a C{shim/plugins/} directory on
     C{sys.path} and write C{backend = acme}.
  4. Put your own settings (controller URL, credentials file, ...) in the
     C{[backend]} section; they arrive in C{__init__} as a dict of strings.
"""

from twisted.logger import Logger
from zope.interface import implementer

from shim.backends import BackendPlugin
from shim.interfaces import IBackend

#: The longest value shown in a log line before it is cut short.
_MAX_VALUE = 60


def _short(value):
    """
    C{repr(value)}, cut short when long, so that one call stays one readable line.
    """
    text = repr(value)
    if len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE - 3] + "..."
    return text


def describe_changes(changes):
    """
    The attributes in C{changes} as C{"name: prev -> new"}, comma-separated, sorted.
    """
    names = sorted(set(changes.new) | set(changes.prev))
    if not names:
        return "nothing"
    return ", ".join(
        "%s: %s -> %s" % (name, _short(changes.prev.get(name)),
                          _short(changes.new.get(name)))
        for name in names
    )


def describe_object(obj):
    """
    The attributes of a model object that are set, as C{"name=value"}, sorted.
    """
    if not obj:
        return "{}"
    return ", ".join(
        "%s=%s" % (name, _short(value))
        for name, value in sorted(obj.items())
        if value not in (None, "")
    )


@implementer(IBackend)
class DummyBackend:
    """
    A backend that changes nothing anywhere: it logs each call in one line, and
    answers C{bind_port} the way a real backend would.

    @ivar options: the C{[backend]} section of the configuration file.
    """

    log = Logger()

    #: What C{bind_port} answers for an accepted port; Nova plugs the VM's interface
    #: into the Open vSwitch bridge C{br-gluon}.  The shim adds C{controller}.
    VIF_TYPE = "ovs"
    VIF_DETAILS = {"port_filter": False, "bridge_name": "br-gluon"}

    def __init__(self, options):
        """
        @param options: the C{[backend]} section, option name to string.  A real
            backend reads its settings here and fails (raises) when one is wrong,
            which stops the shim at start-up with a message naming the backend.
        """
        self.options = dict(options)
        self.log.info("dummy backend ready, options {options}",
                      options=describe_object(self.options))

    def bind_port(self, uuid, model, changes):
        """
        Accept the bind of a port attached to a known VPN: the port must have a
        service binding (a VPNPort; a VpnBinding of one of its interfaces in Gluon
        1.x), and the service (VpnInstance; VpnService) it names must be in the
        model.  Otherwise answer C{{}}, which the shim logs as a rejection; it asks
        again when the binding or the VPN arrives.
        """
        port = model.ports.get(uuid, {})
        self.log.info(
            "bind_port {uuid} host {host} device {device}: {changes}",
            uuid=uuid, host=port.get("host_id"), device=port.get("device_id"),
            changes=describe_changes(changes),
        )
        # The relations read the same in both model generations.
        bindings = model.bindings_of_port(uuid)
        if not bindings:
            self.log.info("bind_port {uuid}: rejected, the port has no service "
                          "binding", uuid=uuid)
            return {}
        vpn = model.vpn_of_port(uuid)
        if not vpn or vpn not in model.services:
            self.log.info(
                "bind_port {uuid}: rejected, its VPN instance {vpn!r} is unknown",
                uuid=uuid, vpn=vpn,
            )
            return {}
        # A real backend configures its controller here (returning a Deferred that
        # fires with the answer once the controller has confirmed).
        return {"vif_type": self.VIF_TYPE, "vif_details": dict(self.VIF_DETAILS)}

    def unbind_port(self, uuid, model, changes):
        """
        Log the unbind of a port this shim had bound.
        """
        self.log.info("unbind_port {uuid}: {changes}", uuid=uuid,
                      changes=describe_changes(changes))

    def modify_port(self, uuid, model, changes):
        """
        Log a change to a port this shim has bound.
        """
        self.log.info("modify_port {uuid}: {changes}", uuid=uuid,
                      changes=describe_changes(changes))

    def delete_port(self, uuid, model, port):
        """
        Log the deletion of a port this shim had bound.
        """
        self.log.info("delete_port {uuid}: was {port}", uuid=uuid,
                      port=describe_object(port))

    def modify_service(self, uuid, model, changes):
        """
        Log a change to a VPN instance (or one of its route targets) in use.
        """
        self.log.info("modify_service {uuid}: {changes}", uuid=uuid,
                      changes=describe_changes(changes))

    def delete_service(self, uuid, model, service):
        """
        Log the deletion of a VPN instance in use.
        """
        self.log.info("delete_service {uuid}: was {service}", uuid=uuid,
                      service=describe_object(service))

    def modify_service_binding(self, uuid, model, prev_binding):
        """
        Log a port's attachment to a VPN instance, or its move to another one.
        """
        field = model.schema.binding_service
        self.log.info(
            "modify_service_binding {uuid}: VPN {prev!r} -> {new!r}",
            uuid=uuid, prev=(prev_binding or {}).get(field), new=model.vpn_of_port(uuid),
        )

    def delete_service_binding(self, model, prev_binding):
        """
        Log a port's detachment from its VPN instance.
        """
        self.log.info(
            "delete_service_binding {uuid}: was in VPN instance {vpn!r}",
            uuid=prev_binding.get("id"), vpn=prev_binding.get("vpn_instance"),
        )


#: The plugin that makes C{backend = dummy} find L{DummyBackend}.
dummy = BackendPlugin("dummy", DummyBackend)
