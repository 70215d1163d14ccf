"""
The bind result's wire form (L{shim.bindresult}): a backend's answer checked before
anything changes, the JSON written to etcd and read back, old results without a
placement, and whether proton copied a result.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from shim import bindresult
from shim.bindresult import (
    EMPTY,
    MAX_RESULT_SIZE,
    BindResult,
    MalformedAnswer,
    controller_of,
    decode,
    from_answer,
    read,
)

DETAILS = {"port_filter": False, "bridge_name": "br-gluon"}


class FromAnswerTests(SynchronousTestCase):
    def test_good_answer(self):
        """
        A dict with a non-empty string C{vif_type} and a C{vif_details} dict is a
        result without controller or placement.
        """
        result = from_answer({"vif_type": "ovs", "vif_details": DETAILS})
        self.assertEqual(result, BindResult("ovs", DETAILS))
        self.assertIsNone(result.controller)
        self.assertIsNone(result.placement)

    def test_details_missing_or_null(self):
        """
        No C{vif_details}, or C{None}, is an empty dict.
        """
        self.assertEqual(from_answer({"vif_type": "ovs"}).vif_details, {})
        self.assertEqual(
            from_answer({"vif_type": "ovs", "vif_details": None}).vif_details, {})

    def test_rejection(self):
        """
        C{{}} and C{None} are the backend refusing the port, not a malformed answer.
        """
        self.assertIsNone(from_answer({}))
        self.assertIsNone(from_answer(None))

    def assertMalformed(self, answer, *fragments):
        error = self.assertRaises(MalformedAnswer, from_answer, answer)
        self.assertIsInstance(error, ValueError)
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return error

    def test_not_a_dict(self):
        self.assertMalformed(["ovs"], "not a dict", "list")
        self.assertMalformed("ovs", "not a dict", "str")
        self.assertMalformed(42, "not a dict", "int")
        self.assertMalformed(True, "not a dict", "bool")

    def test_no_vif_type(self):
        self.assertMalformed({"vif_details": DETAILS}, "vif_type is None")

    def test_empty_vif_type(self):
        self.assertMalformed({"vif_type": "", "vif_details": DETAILS},
                             "vif_type is ''", "non-empty string")

    def test_vif_type_not_a_string(self):
        self.assertMalformed({"vif_type": 42}, "vif_type is 42")
        self.assertMalformed({"vif_type": b"ovs"}, "vif_type is b'ovs'")
        self.assertMalformed({"vif_type": ["ovs"]}, "vif_type is ['ovs']")

    def test_details_not_a_dict(self):
        self.assertMalformed({"vif_type": "ovs", "vif_details": ["a"]},
                             "vif_details is list, not a dict")
        self.assertMalformed({"vif_type": "ovs", "vif_details": "{}"},
                             "vif_details is str, not a dict")

    def test_details_not_json(self):
        """
        Something JSON cannot encode inside C{vif_details} (a set, bytes, a key that
        is a tuple) is malformed, not an exception of its own.
        """
        self.assertMalformed({"vif_type": "ovs", "vif_details": {"tags": {1, 2}}},
                             "cannot be encoded as JSON", "set")
        self.assertMalformed({"vif_type": "ovs", "vif_details": {"raw": b"x"}},
                             "cannot be encoded as JSON")
        self.assertMalformed({"vif_type": "ovs", "vif_details": {(1, 2): "x"}},
                             "cannot be encoded as JSON")

    def test_details_too_deep(self):
        """
        A C{vif_details} nested too deeply to encode is malformed.
        """
        deep = {}
        inner = deep
        for _ in range(100000):
            inner["x"] = {}
            inner = inner["x"]
        self.assertMalformed({"vif_type": "ovs", "vif_details": deep},
                             "cannot be encoded as JSON")

    def test_too_large(self):
        """
        An answer over 64 KiB encoded is malformed; one just under is accepted.
        """
        self.assertEqual(MAX_RESULT_SIZE, 64 * 1024)
        overhead = len(BindResult("ovs", {"blob": ""}).encode())
        fits = {"vif_type": "ovs", "vif_details": {"blob": "x" * (MAX_RESULT_SIZE - overhead)}}
        self.assertEqual(len(from_answer(fits).encode()), MAX_RESULT_SIZE)
        over = {"vif_type": "ovs",
                "vif_details": {"blob": "x" * (MAX_RESULT_SIZE - overhead + 1)}}
        self.assertMalformed(over, "%d bytes encoded" % (MAX_RESULT_SIZE + 1,),
                             "more than %d" % (MAX_RESULT_SIZE,))


class WireFormTests(SynchronousTestCase):
    def test_round_trip(self):
        """
        A result with controller and placement reads back equal.
        """
        result = BindResult("ovs", DETAILS, "SimServer", "compute1", "vm1")
        raw = result.encode()
        self.assertIsInstance(raw, bytes)
        self.assertEqual(json.loads(raw), {
            "vif_type": "ovs", "vif_details": DETAILS, "controller": "SimServer",
            "host_id": "compute1", "device_id": "vm1"})
        self.assertEqual(decode(raw), result)
        self.assertEqual(decode(raw).placement, ("compute1", "vm1"))

    def test_encoding_is_stable(self):
        """
        Equal results encode to equal bytes, so that "etcd holds it already" is a
        comparison of bytes.
        """
        a = BindResult("ovs", {"b": 1, "a": 2}, "S", "h", "d")
        b = BindResult("ovs", {"a": 2, "b": 1}, "S", "h", "d")
        self.assertEqual(a.encode(), b.encode())

    def test_without_controller_or_placement(self):
        """
        Fields left out are not written.
        """
        self.assertEqual(json.loads(BindResult("ovs", {}).encode()),
                         {"vif_type": "ovs", "vif_details": {}})

    def test_old_result_without_placement(self):
        """
        A result written by an earlier version has no placement.
        """
        raw = json.dumps({"vif_type": "ovs", "vif_details": DETAILS,
                          "controller": "SimServer"}).encode()
        result = decode(raw)
        self.assertEqual(result, BindResult("ovs", DETAILS, "SimServer"))
        self.assertIsNone(result.placement)
        self.assertEqual(result.for_placement("SimServer", "compute1", "vm1"),
                         BindResult("ovs", DETAILS, "SimServer", "compute1", "vm1"))

    def test_details_as_proton_string(self):
        """
        A C{vif_details} stored as a JSON string (as proton stores it) is read as
        the dict.
        """
        raw = json.dumps({"vif_type": "ovs", "vif_details": json.dumps(DETAILS)})
        self.assertEqual(decode(raw.encode()).vif_details, DETAILS)

    def test_not_results(self):
        """
        C{{}}, nothing, garbage, other JSON and a result without a string
        C{vif_type} decode to C{None}; so does JSON too deep for the parser.
        """
        for raw in (EMPTY, b"", None, b"{not json", b"[1]", b'"ovs"', b"null",
                    b'{"vif_type": null}', b'{"vif_type": 3}', b"[" * 5000):
            self.assertIsNone(decode(raw), raw[:20] if raw else raw)

    def test_non_string_fields(self):
        """
        A controller or placement that is not a string is taken as absent.
        """
        raw = json.dumps({"vif_type": "ovs", "vif_details": {}, "controller": 3,
                          "host_id": ["h"], "device_id": None}).encode()
        result = decode(raw)
        self.assertIsNone(result.controller)
        self.assertIsNone(result.placement)

    def test_controller_of(self):
        self.assertEqual(controller_of(BindResult("ovs", {}, "East").encode()), "East")
        for raw in (EMPTY, b"", None, b"garbage", b"[1]", b"[" * 5000,
                    b'{"controller": 7}'):
            self.assertIsNone(controller_of(raw))

    def test_read(self):
        """
        L{read} gives what L{controller_of} and L{decode} give, from one parse: a
        value naming a controller without being a whole result names it all the same.
        """
        whole = BindResult("ovs", DETAILS, "East", "h", "d")
        self.assertEqual(read(whole.encode()), ("East", whole))
        self.assertEqual(read(b'{"controller": "East"}'), ("East", None))
        self.assertEqual(read(b'{"vif_type": "ovs"}'),
                         (None, BindResult("ovs", None)))
        for raw in (EMPTY, b"", None, b"garbage", b"[1]", b"[" * 5000,
                    b'{"controller": 7}'):
            self.assertEqual(read(raw), (None, None))
            self.assertEqual((controller_of(raw), decode(raw)), read(raw))

    def test_equality(self):
        a = BindResult("ovs", DETAILS, "S", "h", "d")
        self.assertEqual(a, BindResult("ovs", dict(DETAILS), "S", "h", "d"))
        self.assertNotEqual(a, BindResult("ovs", DETAILS, "S", "h", "other"))
        self.assertNotEqual(a, BindResult("ovs", DETAILS, "T", "h", "d"))
        self.assertNotEqual(a, BindResult("vhu", DETAILS, "S", "h", "d"))
        self.assertNotEqual(a, "ovs")


class AnsweredTests(SynchronousTestCase):
    """
    L{BindResult.answered}: whether proton's row of the port carries the result.
    """

    result = BindResult("ovs", DETAILS, "SimServer", "compute1", "vm1")

    def test_copied(self):
        """
        Proton copies C{vif_type} and stores C{vif_details} as a JSON string.
        """
        self.assertTrue(self.result.answered(
            {"vif_type": "ovs", "vif_details": json.dumps(DETAILS)}))
        self.assertTrue(self.result.answered({"vif_type": "ovs", "vif_details": DETAILS}))

    def test_not_copied(self):
        for port in (
            {"vif_type": None, "vif_details": None},
            {},
            {"vif_type": "", "vif_details": ""},
            {"vif_type": "vhu", "vif_details": json.dumps(DETAILS)},
            {"vif_type": "ovs", "vif_details": json.dumps({"port_filter": True})},
            {"vif_type": "ovs", "vif_details": "{not json"},
            {"vif_type": "ovs", "vif_details": "[" * 5000},
        ):
            self.assertFalse(self.result.answered(port), port)

    def test_vif_attributes(self):
        self.assertEqual(self.result.vif_attributes(),
                         {"vif_type": "ovs", "vif_details": json.dumps(DETAILS)})

    def test_too_long_for_proton(self):
        self.assertEqual(self.result.too_long_for_proton(), {})
        long = BindResult("x" * 33, {"k": "v" * 200})
        self.assertEqual(sorted(long.too_long_for_proton()), ["vif_details", "vif_type"])
        self.assertEqual(long.too_long_for_proton()["vif_type"], 33)

    def test_exports(self):
        for name in bindresult.__all__:
            self.assertTrue(hasattr(bindresult, name), name)
