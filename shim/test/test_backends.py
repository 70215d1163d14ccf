"""
Tests for L{shim.backends} (finding and checking a backend) and the C{dummy} backend.
"""

import dataclasses

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from shim.backends import BackendPlugin, available_backends, load_backend
from shim.config import ConfigError, ShimConfig
from shim.interfaces import IBackend, IBackendPlugin
from shim.model import Changes, Model, ModelObject
from shim.plugins import dummy as dummy_module
from shim.plugins.dummy import DummyBackend

CALLBACKS = (
    "bind_port", "unbind_port", "modify_port", "delete_port", "modify_service",
    "delete_service", "modify_service_binding", "delete_service_binding",
)


@implementer(IBackend)
class OptionsBackend:
    """
    A complete backend that keeps the options it was made with.
    """

    def __init__(self, options):
        self.options = options

    def bind_port(self, uuid, model, changes):
        return {}

    def unbind_port(self, uuid, model, changes):
        pass

    def modify_port(self, uuid, model, changes):
        pass

    def delete_port(self, uuid, model, port):
        pass

    def modify_service(self, uuid, model, changes):
        pass

    def delete_service(self, uuid, model, service):
        pass

    def modify_service_binding(self, uuid, model, prev_binding):
        pass

    def delete_service_binding(self, model, prev_binding):
        pass


@implementer(IBackend)
class NoDeleteServiceBackend(OptionsBackend):
    """
    A backend that lacks C{delete_service}.
    """

    delete_service = None


@implementer(IBackend)
class IncompleteBackend:
    """
    A backend with only one of the eight callbacks.
    """

    def __init__(self, options):
        pass

    def bind_port(self, uuid, model, changes):
        return {}


@implementer(IBackend)
class WrongSignatureBackend(OptionsBackend):
    """
    A backend whose C{delete_port} takes too few arguments.
    """

    def delete_port(self, uuid):
        pass


class UndeclaredBackend:
    """
    Every method, but no C{@implementer(IBackend)}.
    """

    def __init__(self, options):
        pass


for _name in CALLBACKS:
    setattr(UndeclaredBackend, _name, OptionsBackend.__dict__[_name])


class ExplodingBackend(OptionsBackend):
    """
    A backend whose constructor rejects its options.
    """

    def __init__(self, options):
        raise ValueError("controller_url is required")


NOT_A_CLASS = 42


def config_for(backend, options=None):
    return ShimConfig(
        path="/etc/shim.conf", controller_name="c", host_list=("h",),
        etcd_endpoints=("http://127.0.0.1:2379",), backend=backend,
        backend_options=options or {},
    )


HERE = __name__


class LoadBackendTests(TestCase):
    """
    L{load_backend} by plugin name and by import path, and its errors.
    """

    def assertConfigError(self, backend, *fragments):
        error = self.assertRaises(ConfigError, load_backend, config_for(backend))
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(
            message.startswith("/etc/shim.conf: [shim] backend: %r: " % (backend,)),
            message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_available(self):
        self.assertIn("dummy", available_backends())

    def test_by_name(self):
        backend = load_backend(config_for("dummy", {"a": "1"}))
        self.assertIsInstance(backend, DummyBackend)
        self.assertEqual(backend.options, {"a": "1"})

    def test_by_import_path(self):
        backend = load_backend(config_for(HERE + ":OptionsBackend", {"url": "x"}))
        self.assertIsInstance(backend, OptionsBackend)
        self.assertEqual(backend.options, {"url": "x"})

    def test_options_are_a_copy(self):
        """
        The constructor gets a plain dict of the [backend] options, not the config's
        own.
        """
        options = {"url": "x"}
        backend = load_backend(config_for(HERE + ":OptionsBackend", options))
        self.assertEqual(type(backend.options), dict)
        backend.options["url"] = "changed"
        self.assertEqual(options, {"url": "x"})

    def test_dummy_by_import_path(self):
        backend = load_backend(config_for("shim.plugins.dummy:DummyBackend"))
        self.assertIsInstance(backend, DummyBackend)

    def test_unknown_name(self):
        self.assertConfigError("nosuch", "no such backend plugin", "available: dummy")

    def test_import_error(self):
        self.assertConfigError("shim.nosuchmodule:Backend", "cannot import",
                               "shim.nosuchmodule")

    def test_missing_attribute(self):
        self.assertConfigError(HERE + ":NoSuchClass", "has no attribute NoSuchClass")

    def test_half_path(self):
        self.assertConfigError(":Backend", "package.module:ClassName")
        self.assertConfigError("shim.plugins.dummy:", "package.module:ClassName")

    def test_not_callable(self):
        self.assertConfigError(HERE + ":NOT_A_CLASS", "not a class")

    def test_missing_method(self):
        self.assertConfigError(HERE + ":NoDeleteServiceBackend",
                               "does not implement IBackend", "delete_service")

    def test_many_missing_methods(self):
        message = self.assertConfigError(HERE + ":IncompleteBackend")
        for name in CALLBACKS[1:]:
            self.assertIn(name, message)

    def test_wrong_signature(self):
        self.assertConfigError(HERE + ":WrongSignatureBackend", "delete_port",
                               "signature")

    def test_undeclared(self):
        self.assertConfigError(HERE + ":UndeclaredBackend", "@implementer(IBackend)")

    def test_constructor_raises(self):
        self.assertConfigError(HERE + ":ExplodingBackend", "ValueError",
                               "controller_url is required")


class PluginTests(TestCase):
    """
    L{BackendPlugin} and the dummy plugin object.
    """

    def test_plugin(self):
        plugin = BackendPlugin("x", OptionsBackend)
        self.assertTrue(verifyObject(IBackendPlugin, plugin))
        self.assertEqual((plugin.name, plugin.backend_class), ("x", OptionsBackend))
        self.assertIn("OptionsBackend", repr(plugin))

    def test_dummy_plugin(self):
        self.assertEqual(dummy_module.dummy.name, "dummy")
        self.assertIs(dummy_module.dummy.backend_class, DummyBackend)

    def test_dummy_provides(self):
        self.assertTrue(verifyObject(IBackend, DummyBackend({})))


def fake_model():
    """
    A model with one port (p1) in a known VPN, one (p2) whose VPN is unknown and one
    (p3) with no VPNPort.
    """
    def port(uuid):
        return ModelObject(id=uuid, host_id="compute1", device_id="vm-" + uuid)

    model = Model()
    for u in ("p1", "p2", "p3"):
        model.put("ProtonBasePort", u, port(u))
    model.put("VPNPort", "p1", ModelObject(id="p1", vpn_instance="vpn1"))
    model.put("VPNPort", "p2", ModelObject(id="p2", vpn_instance="vpn-gone"))
    model.put("VpnInstance", "vpn1", ModelObject(id="vpn1", ipv4_family="100:1"))
    model.put("VpnAfConfig", "100:1", ModelObject(vrf_rt_value="100:1"))
    return model


BIND = Changes({"host_id": "compute1", "device_id": "vm"},
               {"host_id": None, "device_id": ""})


class DummyBackendTests(TestCase):
    """
    The dummy backend's answers and its log lines.
    """

    def setUp(self):
        self.backend = DummyBackend({})
        self.model = fake_model()

    def test_bind_accepted(self):
        result = self.backend.bind_port("p1", self.model, BIND)
        self.assertEqual(result, {
            "vif_type": "ovs",
            "vif_details": {"port_filter": False, "bridge_name": "br-gluon"},
        })

    def test_bind_answers_are_fresh(self):
        """
        The shim may add to the answer (C{controller}); that must not leak into the
        next one.
        """
        first = self.backend.bind_port("p1", self.model, BIND)
        first["controller"] = "x"
        first["vif_details"]["bridge_name"] = "other"
        second = self.backend.bind_port("p1", self.model, BIND)
        self.assertNotIn("controller", second)
        self.assertEqual(second["vif_details"]["bridge_name"], "br-gluon")

    def test_bind_rejected_without_vpn_port(self):
        with capturedLogs() as events:
            self.assertEqual(self.backend.bind_port("p3", self.model, BIND), {})
        self.assertTrue(any("no service binding" in formatEvent(e) for e in events))

    def test_bind_rejected_unknown_vpn(self):
        with capturedLogs() as events:
            self.assertEqual(self.backend.bind_port("p2", self.model, BIND), {})
        self.assertTrue(any("'vpn-gone' is unknown" in formatEvent(e) for e in events))

    def test_bind_rejected_empty_vpn(self):
        self.model.vpn_ports["p1"] = ModelObject(id="p1", vpn_instance=None)
        self.assertEqual(self.backend.bind_port("p1", self.model, BIND), {})

    def test_every_call_logs_one_line(self):
        """
        Each callback logs one line naming the callback, the object and its
        arguments, compactly.
        """
        m = self.model
        change = Changes({"mtu": "9000"}, {"mtu": "1500"})
        calls = [
            ("bind_port", ("p1", m, BIND), ["p1", "compute1", "host_id: None -> 'compute1'"]),
            ("unbind_port", ("p1", m, BIND), ["p1", "device_id: '' -> 'vm'"]),
            ("modify_port", ("p1", m, change), ["p1", "mtu: '1500' -> '9000'"]),
            ("delete_port", ("p1", m, m.ports["p1"]), ["p1", "device_id='vm-p1'"]),
            ("modify_service", ("vpn1", m, change), ["vpn1", "mtu"]),
            ("delete_service", ("vpn1", m, m.vpn_instances["vpn1"]),
             ["vpn1", "ipv4_family='100:1'"]),
            ("modify_service_binding", ("p1", m, {}), ["p1", "None -> 'vpn1'"]),
            ("delete_service_binding", (m, m.vpn_ports["p2"]), ["p2", "'vpn-gone'"]),
        ]
        self.assertEqual([c[0] for c in calls], list(CALLBACKS))
        for name, args, fragments in calls:
            with capturedLogs() as events:
                getattr(self.backend, name)(*args)
            lines = [formatEvent(e) for e in events]
            self.assertTrue(lines, name)
            first = lines[0]
            self.assertNotIn("\n", first)
            self.assertTrue(first.startswith(name + " "), first)
            for fragment in fragments:
                self.assertIn(fragment, first)

    def test_long_values_cut_short(self):
        change = Changes({"profile": "x" * 500}, {})
        with capturedLogs() as events:
            self.backend.modify_port("p1", self.model, change)
        line = formatEvent(events[0])
        self.assertIn("...", line)
        self.assertLess(len(line), 200)

    def test_options_kept(self):
        backend = DummyBackend({"url": "https://sdn"})
        self.assertEqual(backend.options, {"url": "https://sdn"})


class ConfigReplaceTests(TestCase):
    """
    A configuration is immutable: overriding is done with dataclasses.replace.
    """

    def test_replace(self):
        config = config_for("dummy")
        changed = dataclasses.replace(config, backend="x")
        self.assertEqual((config.backend, changed.backend), ("dummy", "x"))
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, config,
                          "backend", "y")
