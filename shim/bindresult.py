"""
The bind result: what the shim writes to C{/controller/net-l3vpn/<port table>/<uuid>}.

L{BindResult} owns the result's wire form.  Proton reads only C{vif_type} and
C{vif_details}; the shim adds C{controller} (whose result it is: PROTOCOL.md section 3)
and the placement it bound for, C{host_id} and C{device_id}, so that a restarted shim
knows what it bound where.  A result written by an earlier version has no placement.

L{from_answer} checks a backend's answer to C{bind_port} before anything changes: a
malformed answer is a failed call, and proton never sees a result without
C{vif_type}.
"""

import json

from shim.schema import VIF_ATTRIBUTES

#: The value meaning "no result": proton creates the key with it, and the shim
#: writes it on unbind.
EMPTY = b"{}"

#: The largest bind result accepted from a backend, encoded.
MAX_RESULT_SIZE = 64 * 1024

#: Proton 1.x keeps C{vif_type} in a String(32) column and C{vif_details} in a
#: String(128) one: longer values work on sqlite and break on MySQL.
PROTON_COLUMNS = {"vif_type": 32, "vif_details": 128}


class MalformedAnswer(ValueError):
    """
    A backend's answer to C{bind_port} that cannot be published; the message says why.
    """


class BindResult:
    """
    One port's bind result.

    @ivar vif_type: a non-empty string.
    @ivar vif_details: a dict JSON can encode.
    @ivar controller: the controller name of the shim that wrote it, or C{None}.
    @ivar host_id: the host it was bound for, or C{None} (written by an earlier
        version).
    @ivar device_id: the device it was bound for, or C{None}.
    """

    __slots__ = ("vif_type", "vif_details", "controller", "host_id", "device_id",
                 "_details_text")

    def __init__(self, vif_type, vif_details, controller=None, host_id=None,
                 device_id=None):
        self.vif_type = vif_type
        self.vif_details = vif_details
        self.controller = controller
        self.host_id = host_id
        self.device_id = device_id
        self._details_text = None

    def __repr__(self):
        return "BindResult(%r, %r, controller=%r, host_id=%r, device_id=%r)" % (
            self.vif_type, self.vif_details, self.controller, self.host_id,
            self.device_id,
        )

    def __eq__(self, other):
        if not isinstance(other, BindResult):
            return NotImplemented
        return (
            self.vif_type == other.vif_type
            and self.vif_details == other.vif_details
            and self.controller == other.controller
            and self.host_id == other.host_id
            and self.device_id == other.device_id
        )

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    @property
    def placement(self):
        """
        C{(host_id, device_id)}, or C{None} for a result without placement.
        """
        if self.host_id is None and self.device_id is None:
            return None
        return (self.host_id, self.device_id)

    def for_placement(self, controller, host_id, device_id):
        """
        This answer as the result of C{controller} for a placement.
        """
        return BindResult(self.vif_type, self.vif_details, controller, host_id,
                          device_id)

    def encode(self):
        """
        The JSON bytes written to etcd.
        """
        value = {"vif_type": self.vif_type, "vif_details": self.vif_details}
        if self.controller is not None:
            value["controller"] = self.controller
        if self.host_id is not None:
            value["host_id"] = self.host_id
        if self.device_id is not None:
            value["device_id"] = self.device_id
        return json.dumps(value, sort_keys=True).encode("utf-8")

    @property
    def details_text(self):
        """
        C{vif_details} as proton stores it: C{json.dumps} of the dict.
        """
        if self._details_text is None:
            self._details_text = json.dumps(self.vif_details)
        return self._details_text

    def vif_attributes(self):
        """
        The port attributes proton sets from this result.
        """
        return {"vif_type": self.vif_type, "vif_details": self.details_text}

    def answered(self, port):
        """
        Whether proton's row of C{port} carries this result: proton copied it, so it
        has its answer.
        """
        if port.get("vif_type") != self.vif_type:
            return False
        details = port.get("vif_details")
        if isinstance(details, str):
            try:
                details = json.loads(details)
            except (ValueError, RecursionError):
                return False
        return details == self.vif_details

    def too_long_for_proton(self):
        """
        The attributes longer than proton 1.x's database columns, with their lengths.
        """
        lengths = {"vif_type": len(self.vif_type), "vif_details": len(self.details_text)}
        return {
            name: n for name, n in lengths.items() if n > PROTON_COLUMNS[name]
        }


def from_answer(answer):
    """
    Check a backend's answer to C{bind_port}.

    @return: a L{BindResult} without controller or placement, or C{None} for an empty
        answer (the backend rejected the port).
    @raise MalformedAnswer: the answer is not a dict, has no non-empty string
        C{vif_type}, has a C{vif_details} that is not a dict JSON can encode, or is
        larger than L{MAX_RESULT_SIZE} encoded.
    """
    if answer is None or (isinstance(answer, dict) and not answer):
        return None
    if not isinstance(answer, dict):
        raise MalformedAnswer("not a dict but %s" % (type(answer).__name__,))
    vif_type = answer.get("vif_type")
    if not isinstance(vif_type, str) or not vif_type:
        raise MalformedAnswer("vif_type is %r, not a non-empty string" % (vif_type,))
    details = answer.get("vif_details", {})
    if details is None:
        details = {}
    if not isinstance(details, dict):
        raise MalformedAnswer(
            "vif_details is %s, not a dict" % (type(details).__name__,)
        )
    result = BindResult(vif_type, details)
    try:
        size = len(result.encode())
    except (TypeError, ValueError, RecursionError) as e:
        raise MalformedAnswer("vif_details cannot be encoded as JSON: %s" % (e,))
    if size > MAX_RESULT_SIZE:
        raise MalformedAnswer(
            "%d bytes encoded, more than %d" % (size, MAX_RESULT_SIZE)
        )
    return result


def decode(value):
    """
    Read a bind result's raw value from etcd.

    @return: a L{BindResult}, or C{None} for C{{}} or any value that is not a result
        (not JSON, not an object, no string C{vif_type}).
    """
    return read(value)[1]


def controller_of(value):
    """
    The C{controller} a raw value names, or C{None} (also for C{{}} or garbage).
    """
    if not value or value == EMPTY:
        return None
    decoded = _object(value)
    return None if decoded is None else _text(decoded.get("controller"))


def read(value):
    """
    Read a raw value once for both what a snapshot asks of it: the C{controller} it
    names (even when it is not a whole result) and the L{BindResult} it holds.

    @return: C{(controller or None, BindResult or None)}.
    """
    if not value or value == EMPTY:
        return None, None
    decoded = _object(value)
    if decoded is None:
        return None, None
    controller = _text(decoded.get("controller"))
    if not isinstance(decoded.get("vif_type"), str):
        return controller, None
    details = decoded.get("vif_details")
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except (ValueError, RecursionError):
            pass
    return controller, BindResult(
        decoded["vif_type"], details, controller,
        _text(decoded.get("host_id")), _text(decoded.get("device_id")),
    )


def _object(value):
    """The JSON object a raw value holds, or C{None}."""
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        return None
    return decoded if type(decoded) is dict else None


def _text(value):
    return value if isinstance(value, str) else None


__all__ = ["BindResult", "MalformedAnswer", "from_answer", "decode", "controller_of",
           "read", "EMPTY", "VIF_ATTRIBUTES"]
