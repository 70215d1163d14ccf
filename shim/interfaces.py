"""
The interface between the shim and a vendor's backend.

The shim keeps the model of the net-l3vpn objects in etcd and decides when a port is
bound, unbound, changed or deleted; a backend (an object providing L{IBackend}) does
what that means for the vendor's network.  Backends are found by name through
L{IBackendPlugin} plugins in L{shim.plugins}, or by import path (see L{shim.backends}).

Common to every callback:

  - C{model} is the shim's L{shim.model.Model}: C{model.ports}, C{model.vpn_ports},
    C{model.vpn_instances} and C{model.vpn_afconfigs} are dicts keyed by uuid (or by
    route-target key for C{vpn_afconfigs}) whose values read both as mappings and as
    attributes (C{model.vpn_ports[uuid].vpn_instance}).  It already reflects the change
    the call is about.  Treat it as read-only.
  - C{changes} has C{.new} and C{.prev}: dicts of attribute name to value, the new
    values of the attributes that changed and their previous values.
  - A callback may return a plain value or a L{Deferred<twisted.internet.defer.Deferred>}.
    Calls about one object are made one at a time, in the order of etcd's events; calls
    about different objects may overlap.  An exception, a failed Deferred or a call that
    takes longer than C{[shim] backend_timeout} is logged and counted, and the shim
    carries on: it never stops or corrupts its model because of a backend.
  - Every callback must be idempotent: after a resynchronisation with etcd, or a
    restart, the shim may repeat a call it has already made.
"""

from zope.interface import Attribute, Interface


class IBackend(Interface):
    """
    A vendor backend: the eight callbacks through which the shim tells the vendor's
    controller what to do.
    """

    def bind_port(uuid, model, changes):
        """
        A bind request (a port with C{host_id} and C{device_id} both set) arrived for
        a host in this shim's C{host_list}: plug the port into the vendor's network.

        @param uuid: the port's uuid; C{model.ports[uuid]} is the port.
        @param model: the shim's model.
        @param changes: the port's changed attributes (C{.new}, C{.prev}).
        @return: a dict with C{vif_type} and C{vif_details} (a dict) telling Nova how
            to plug the VM's interface, which the shim writes back to etcd for
            proton; or C{{}} to reject the bind: the port stays unbound and the shim
            asks again when the port's VPNPort, its VpnInstance or one of that
            instance's VpnAfConfigs changes.  A plain value or a Deferred firing with
            one.  Must be idempotent: the same port may be bound again after a
            resynchronisation.
        """

    def unbind_port(uuid, model, changes):
        """
        A port bound by this shim was unbound (its C{host_id} or C{device_id} was
        cleared), or migrated to a host that is not ours: unplug it.

        @param uuid: the port's uuid; C{model.ports[uuid]} is the port.
        @param model: the shim's model.
        @param changes: the port's changed attributes (C{.new}, C{.prev}).
        @return: ignored; a plain value or a Deferred.  Must be idempotent.
        """

    def modify_port(uuid, model, changes):
        """
        Attributes of a port bound by this shim changed (other than those that bind
        or unbind it): update the vendor's view of the port.

        @param uuid: the port's uuid; C{model.ports[uuid]} is the port.
        @param model: the shim's model.
        @param changes: the port's changed attributes (C{.new}, C{.prev}).
        @return: ignored; a plain value or a Deferred.  Must be idempotent.
        """

    def delete_port(uuid, model, port):
        """
        A port bound by this shim was deleted: remove it from the vendor's network.

        @param uuid: the port's uuid; it is no longer in C{model.ports}.
        @param model: the shim's model.
        @param port: the deleted port as it last was.
        @return: ignored; a plain value or a Deferred.  Must be idempotent.
        """

    def modify_service(uuid, model, changes):
        """
        A VpnInstance used by a port bound by this shim changed, or one of the
        VpnAfConfigs (route targets) it lists changed or was deleted: update the VPN.

        @param uuid: the VpnInstance's uuid; C{model.vpn_instances[uuid]} is it.
        @param model: the shim's model.
        @param changes: the changed attributes (C{.new}, C{.prev}) of the instance,
            or of the route target when that is what changed.
        @return: ignored; a plain value or a Deferred.  Must be idempotent.
        """

    def delete_service(uuid, model, service):
        """
        A VpnInstance used by a port bound by this shim was deleted: remove the VPN.

        @param uuid: the VpnInstance's uuid; it is no longer in
            C{model.vpn_instances}.
        @param model: the shim's model.
        @param service: the deleted VpnInstance as it last was.
        @return: ignored; a plain value or a Deferred.  Must be idempotent.
        """

    def modify_service_binding(uuid, model, prev_binding):
        """
        The VPNPort (the binding of a port to a VpnInstance) of a port bound by this
        shim was created or changed: attach the port to its (new) VPN.

        @param uuid: the port's uuid, which is also the VPNPort's key;
            C{model.vpn_ports[uuid]} is the new binding.
        @param model: the shim's model.
        @param prev_binding: the VPNPort as it was before, or C{{}} when it was just
            created.
        @return: ignored; a plain value or a Deferred.  Must be idempotent.
        """

    def delete_service_binding(model, prev_binding):
        """
        The VPNPort of a port bound by this shim was deleted: detach the port from
        its VPN.

        @param model: the shim's model.
        @param prev_binding: the deleted VPNPort as it last was; C{prev_binding["id"]}
            is the port's uuid and C{prev_binding["vpn_instance"]} the VPN's.
        @return: ignored; a plain value or a Deferred.  Must be idempotent.
        """


class IBackendPlugin(Interface):
    """
    A Twisted plugin (in the L{shim.plugins} package) naming a backend class, so that
    C{[shim] backend = <name>} finds it.
    """

    name = Attribute("The name that selects this backend in C{[shim] backend}.")

    backend_class = Attribute(
        "The backend class: called with the C{[backend]} section as a dict of "
        "strings, it returns an object providing L{IBackend}."
    )
