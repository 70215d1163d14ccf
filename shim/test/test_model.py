"""
The model: decoding values, attribute access, indexes, and change sets.
"""

from twisted.trial.unittest import SynchronousTestCase

from shim import keys
from shim.model import BadValue, Changes, Model, Port, decode, split_list
from shim.portstate import UNBOUND


class DecodeTests(SynchronousTestCase):
    def test_port(self):
        port = decode(keys.PORT, b'{"id": "p1", "host_id": "compute1", "mtu": "1500"}', 7)
        self.assertIsInstance(port, Port)
        self.assertEqual(port.host_id, "compute1")
        self.assertEqual(port["mtu"], "1500")
        self.assertEqual(port.revision, 7)
        self.assertEqual(port.binding, UNBOUND)

    def test_missing_attribute(self):
        port = decode(keys.PORT, b'{"id": "p1"}', 1)
        self.assertRaises(AttributeError, getattr, port, "host_id")

    def test_bad_values(self):
        cases = [
            (b"\xff\xfe", "not UTF-8"),
            (b"{not json", "not JSON"),
            (b'["a list"]', "not a JSON object but list"),
            (b'"text"', "not a JSON object but str"),
            (b'{"host_id": 5}', "attribute 'host_id' is int, not a string"),
            (b"{" + b" " * (300 * 1024) + b"}", "larger than"),
        ]
        for value, message in cases:
            e = self.assertRaises(BadValue, decode, keys.PORT, value, 1)
            self.assertIn(message, str(e))

    def test_null_attributes_accepted(self):
        port = decode(keys.PORT, b'{"host_id": null, "device_id": null}', 1)
        self.assertIsNone(port.host_id)


class ModelTests(SynchronousTestCase):
    def vpn(self, name, ipv4="", ipv6=""):
        return decode(
            keys.VPN_INSTANCE,
            ('{"id": "%s", "ipv4_family": "%s", "ipv6_family": "%s"}'
             % (name, ipv4, ipv6)).encode(),
            1,
        )

    def test_tables(self):
        m = Model()
        m.put(keys.PORT, "p1", decode(keys.PORT, b"{}", 1))
        self.assertIn("p1", m.ports)
        self.assertEqual(m.counts()[keys.PORT], 1)
        self.assertIs(m.remove(keys.PORT, "p1").revision, 1)
        self.assertIsNone(m.remove(keys.PORT, "p1"))

    def test_afconfig_index_by_element(self):
        """
        A VPN lists route target 100:1, another 100:10: each is found by its own.
        """
        m = Model()
        m.put(keys.VPN_INSTANCE, "v1", self.vpn("v1", "100:1", "200:2"))
        m.put(keys.VPN_INSTANCE, "v2", self.vpn("v2", "100:10, 100:11"))
        self.assertEqual(set(m.vpns_listing_afconfig("100:1")), {"v1"})
        self.assertEqual(set(m.vpns_listing_afconfig("200:2")), {"v1"})
        self.assertEqual(set(m.vpns_listing_afconfig("100:10")), {"v2"})
        self.assertEqual(set(m.vpns_listing_afconfig("100:11")), {"v2"})
        m.put(keys.VPN_INSTANCE, "v1", self.vpn("v1", "100:10"))
        self.assertEqual(set(m.vpns_listing_afconfig("100:1")), set())
        self.assertEqual(set(m.vpns_listing_afconfig("100:10")), {"v1", "v2"})
        m.remove(keys.VPN_INSTANCE, "v2")
        self.assertEqual(set(m.vpns_listing_afconfig("100:10")), {"v1"})

    def test_vpn_port_index(self):
        m = Model()
        m.put(keys.VPN_PORT, "p1", decode(keys.VPN_PORT, b'{"id": "p1", "vpn_instance": "v1"}', 1))
        m.put(keys.VPN_PORT, "p2", decode(keys.VPN_PORT, b'{"id": "p2", "vpn_instance": "v1"}', 2))
        self.assertEqual(set(m.ports_using_vpn("v1")), {"p1", "p2"})
        self.assertEqual(m.vpn_of_port("p1"), "v1")
        m.put(keys.VPN_PORT, "p1", decode(keys.VPN_PORT, b'{"id": "p1", "vpn_instance": "v2"}', 3))
        self.assertEqual(set(m.ports_using_vpn("v1")), {"p2"})
        self.assertEqual(set(m.ports_using_vpn("v2")), {"p1"})
        m.remove(keys.VPN_PORT, "p2")
        self.assertEqual(set(m.ports_using_vpn("v1")), set())
        self.assertIsNone(m.vpn_of_port("p2"))

    def test_split_list(self):
        self.assertEqual(split_list(" a, b,,c "), ["a", "b", "c"])
        self.assertEqual(split_list(None), [])


class ChangesTests(SynchronousTestCase):
    def test_between(self):
        c = Changes.between({"a": "1", "b": "2", "gone": "x"}, {"a": "1", "b": "3", "new": "y"})
        self.assertEqual(c.new, {"b": "3", "new": "y", "gone": None})
        self.assertEqual(c.prev, {"b": "2", "gone": "x"})

    def test_created(self):
        c = Changes.between(None, {"a": "1"})
        self.assertEqual((c.new, c.prev), ({"a": "1"}, {}))
        self.assertFalse(Changes.between({"a": "1"}, {"a": "1"}))


class KeysTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(
            keys.parse_proton_key("/proton/net-l3vpn/VPNPort/u1"), (keys.VPN_PORT, "u1")
        )

    def test_bad_keys(self):
        for key in ("/proton/net-l3vpn/VPNPort", "/proton/net-l3vpn/VPNPort/u1/x",
                    "/proton/net-l3vpn//u1", "/other/net-l3vpn/VPNPort/u1"):
            self.assertRaises(keys.BadKey, keys.parse_proton_key, key)

    def test_other_api(self):
        e = self.assertRaises(keys.OtherAPI, keys.parse_proton_key, "/proton/net-l2/Port/u")
        self.assertEqual((e.api, e.table), ("net-l2", "Port"))
        self.assertRaises(keys.OtherAPI, keys.parse_proton_key, "/proton/net-l3vpn/Foo/u")

    def test_result_keys(self):
        self.assertEqual(keys.result_uuid(keys.result_key("u1")), "u1")
        self.assertIsNone(keys.result_uuid("/controller/net-l3vpn/ProtonBasePort/"))
        self.assertEqual(keys.afconfig_name("100:1 200"), "100:1_200")
