"""
The JSON wire format of etcd's v3 gateway, kept apart from the HTTP plumbing.

The gateway speaks protobuf-as-JSON: keys and values are base64, 64-bit integers
are JSON strings (we accept numbers too), fields with their zero value are left
out (a missing "type" is PUT, a missing "succeeded" is false, a missing "value" is
empty). Functions named C{*_request} build request bodies (plain dicts), functions
named C{decode_*} turn decoded response dicts into the small result tuples below.
"""

import binascii
import json
from collections import namedtuple

from shim.etcd.errors import EtcdError

_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64


KeyValue = namedtuple(
    "KeyValue", "key value create_revision mod_revision version lease")
KeyValue.__doc__ = "One key: C{key} is str, C{value} bytes, the rest ints."

RangeResult = namedtuple("RangeResult", "kvs revision more count")
RangeResult.__doc__ = "A range: C{kvs} list of KeyValue, C{revision} the store revision read."

PutResult = namedtuple("PutResult", "revision prev_kv")
DeleteResult = namedtuple("DeleteResult", "revision deleted prev_kvs")
TxnResult = namedtuple("TxnResult", "succeeded revision responses")
TxnResult.__doc__ = (
    "A transaction: C{responses} holds one RangeResult/PutResult/DeleteResult per op.")
Status = namedtuple("Status", "version cluster_id member_id leader revision")
Status.__doc__ = "Member status: ids are decimal strings, revision an int."
Lease = namedtuple("Lease", "id ttl")

WatchEvent = namedtuple("WatchEvent", "type key value mod_revision prev_value")
WatchEvent.__doc__ = (
    "One change: type 'PUT' or 'DELETE'; value is None for DELETE; prev_value is"
    " None when etcd sent no previous value.")
WatchEnded = namedtuple("WatchEnded", "reason compact_revision error")
WatchEnded.__doc__ = (
    "Why a watch ended: reason is 'stopped', 'connection_lost', 'compacted',"
    " 'cancelled', 'idle', 'auth' (etcd refused our credentials or permissions: the"
    " client has dropped its token, the next call authenticates again) or"
    " 'too_large' (one message over the cap: resync fully, a resume would read it"
    " again); compact_revision is set for 'compacted'; error is an EtcdError or None.")

CasResult = namedtuple("CasResult", "succeeded revision")
CasResult.__doc__ = (
    "A compare-and-set write (put_if, delete_if): C{succeeded} is False when the"
    " compare failed (nothing was written); C{revision} is the revision of the write,"
    " or etcd's current revision when it failed.")


def b64(data):
    """Base64 text of bytes (no newline)."""
    return _b2a(data, newline=False).decode("ascii")


def unb64(text):
    """Bytes from base64 text (a missing field is empty)."""
    return _a2b(text) if text else b""


def key_bytes(key):
    """A key as bytes: str is UTF-8 encoded, bytes pass through."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8", "surrogateescape")
    raise TypeError("etcd key must be str or bytes, not %s: %r" % (type(key).__name__, key))


def value_bytes(value):
    """A value as bytes: str is UTF-8 encoded, bytes pass through."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        "etcd value must be bytes or str, not %s: %r" % (type(value).__name__, value))


def key_str(raw):
    """A key from the wire (bytes) as str."""
    return raw.decode("utf-8", "surrogateescape")


def prefix_end(prefix):
    """
    The range_end that selects every key starting with C{prefix} (bytes): the
    prefix with its last byte below 0xff incremented; all keys for an empty or
    all-0xff prefix.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xff:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def as_int(value):
    """An int64 from the wire: JSON string or number, missing is 0."""
    return int(value) if value else 0


def header_revision(message):
    """The header revision of a response dict, 0 when absent."""
    header = message.get("header")
    return int(header.get("revision", 0)) if header else 0


# -- requests ---------------------------------------------------------------

def _range_start(raw):
    """etcd wants a non-empty key: a range from the empty key starts at NUL."""
    return raw or b"\0"


def range_request(key, prefix=False, revision=None, limit=0, keys_only=False,
                  range_end=None, count_only=False):
    """Body of /kv/range; C{range_end} (bytes) overrides C{prefix}."""
    raw = key_bytes(key)
    body = {"key": b64(_range_start(raw) if (prefix or range_end) else raw)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    elif prefix:
        body["range_end"] = b64(prefix_end(raw))
    if revision:
        body["revision"] = str(int(revision))
    if limit:
        body["limit"] = str(int(limit))
    if keys_only:
        body["keys_only"] = True
    if count_only:
        body["count_only"] = True
    return body


def put_request(key, value, prev_kv=False, lease=0):
    """Body of /kv/put."""
    body = {"key": b64(key_bytes(key)), "value": b64(value_bytes(value))}
    if prev_kv:
        body["prev_kv"] = True
    if lease:
        body["lease"] = str(int(lease))
    return body


def delete_request(key, prefix=False, prev_kv=False):
    """Body of /kv/deleterange."""
    raw = key_bytes(key)
    body = {"key": b64(_range_start(raw) if prefix else raw)}
    if prefix:
        body["range_end"] = b64(prefix_end(raw))
    if prev_kv:
        body["prev_kv"] = True
    return body


_COMPARE_RESULTS = {
    "==": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS",
}


class Compare(object):
    """
    Builders of transaction conditions, e.g. C{Compare.version(key, "==", 0)}.
    Operators: C{==}, C{!=}, C{>}, C{<}.
    """

    @staticmethod
    def _make(key, op, target, field, value):
        try:
            result = _COMPARE_RESULTS[op]
        except KeyError:
            raise ValueError("Compare operator must be one of %s, not %r (key %r)"
                             % (", ".join(sorted(_COMPARE_RESULTS)), op, key))
        return {"key": b64(key_bytes(key)), "target": target, "result": result,
                field: value}

    @staticmethod
    def value(key, op, value):
        """Compare the key's value (bytes or str)."""
        return Compare._make(key, op, "VALUE", "value", b64(value_bytes(value)))

    @staticmethod
    def version(key, op, version):
        """Compare the key's version (0: the key does not exist)."""
        return Compare._make(key, op, "VERSION", "version", str(int(version)))

    @staticmethod
    def mod_revision(key, op, revision):
        """Compare the key's last modification revision."""
        return Compare._make(key, op, "MOD", "mod_revision", str(int(revision)))

    @staticmethod
    def create_revision(key, op, revision):
        """Compare the key's creation revision."""
        return Compare._make(key, op, "CREATE", "create_revision", str(int(revision)))


class Op(object):
    """Builders of transaction operations, e.g. C{Op.put(key, value)}."""

    @staticmethod
    def put(key, value, prev_kv=False, lease=0):
        return {"request_put": put_request(key, value, prev_kv, lease)}

    @staticmethod
    def delete(key, prefix=False, prev_kv=False):
        return {"request_delete_range": delete_request(key, prefix, prev_kv)}

    @staticmethod
    def get(key, prefix=False, revision=None, limit=0, keys_only=False):
        return {"request_range": range_request(key, prefix, revision, limit, keys_only)}


class IfValue(object):
    """
    What a compare-and-set expects of its key when it is not a revision: that the
    key holds exactly C{value}.  A bind result written over proton's empty C{{}}
    needs no read of the key first: an empty key is nobody's result.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value_bytes(value)

    def __eq__(self, other):
        return isinstance(other, IfValue) and other.value == self.value

    def __hash__(self):
        return hash(self.value)

    def __repr__(self):
        return "IfValue(%r)" % (self.value,)


def cas_compare(key, expected):
    """
    The compare of a compare-and-set of C{key}: C{expected} is the key's
    mod_revision as last seen (0: only if it does not exist), or an L{IfValue}.
    """
    if isinstance(expected, IfValue):
        return Compare.value(key, "==", expected.value)
    if expected:
        return Compare.mod_revision(key, "==", expected)
    return Compare.version(key, "==", 0)


def txn_request(compare=(), success=(), failure=()):
    """Body of /kv/txn from lists built with L{Compare} and L{Op}."""
    return {"compare": list(compare), "success": list(success), "failure": list(failure)}


def compaction_request(revision, physical=True):
    body = {"revision": str(int(revision))}
    if physical:
        body["physical"] = True
    return body


def watch_create_request(key, start_revision=None, prefix=True, prev_kv=True,
                         progress_notify=True):
    """Body of /watch: a create_request."""
    raw = key_bytes(key)
    create = {"key": b64(_range_start(raw) if prefix else raw)}
    if prefix:
        create["range_end"] = b64(prefix_end(raw))
    if start_revision:
        create["start_revision"] = str(int(start_revision))
    if prev_kv:
        create["prev_kv"] = True
    if progress_notify:
        create["progress_notify"] = True
    # A backlog's answer may hold a great many events at once: etcd splits it into
    # fragments of at most its request size, delivered in order.
    create["fragment"] = True
    return {"create_request": create}


def lease_grant_request(ttl):
    return {"TTL": str(int(ttl))}


def lease_id_request(lease_id):
    return {"ID": str(int(lease_id))}


def authenticate_request(username, password):
    return {"name": username, "password": password}


def encode(body):
    """Request body dict to JSON bytes."""
    return json.dumps(body, separators=(",", ":")).encode("ascii")


# -- responses --------------------------------------------------------------

def decode_json(data):
    """
    Parse a response body into a dict. The gateway answers streamed calls
    (keepalive) with newline-delimited C{{"result": ...}} messages: the first one
    is returned, unwrapped. Raises C{ValueError} if it is not a JSON object.
    """
    if data[:16].lstrip().startswith(b'{"result"'):
        message = json.loads(data.split(b"\n", 1)[0])
        if isinstance(message, dict) and isinstance(message.get("result"), dict):
            return message["result"]
    else:
        message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("etcd answer is not a JSON object: %r" % (data[:200],))
    return message


def error_fields(message):
    """
    (code, message) of an error response in either of the gateway's shapes, or
    None when C{message} is not an error.
    """
    error = message.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        return (error.get("grpc_code", error.get("code")),
                error.get("message", "") or str(error))
    return message.get("code"), message.get("message") or error


def decode_kv(kv):
    """A KeyValue from its wire dict."""
    get = kv.get
    value = get("value")
    return KeyValue(
        _a2b(kv["key"]).decode("utf-8", "surrogateescape"),
        _a2b(value) if value else b"",
        int(get("create_revision", 0)),
        int(get("mod_revision", 0)),
        int(get("version", 0)),
        int(get("lease", 0)))


#: Builds a namedtuple without the Python-level C{__new__} the class call goes through.
_new_tuple = tuple.__new__


def decode_kvs(kvs):
    """A list of KeyValue, lean: this is the hot loop of a full resync."""
    a2b = _a2b
    new = _new_tuple
    cls = KeyValue
    out = []
    append = out.append
    for kv in kvs:
        get = kv.get
        value = get("value")
        lease = get("lease")
        append(new(cls, (
            a2b(kv["key"]).decode("utf-8", "surrogateescape"),
            a2b(value) if value else b"",
            int(get("create_revision", 0)),
            int(get("mod_revision", 0)),
            int(get("version", 0)),
            int(lease) if lease else 0)))
    return out


def decode_range(message):
    kvs = message.get("kvs")
    return RangeResult(decode_kvs(kvs) if kvs else [], header_revision(message),
                       bool(message.get("more", False)), as_int(message.get("count")))


def decode_put(message):
    prev = message.get("prev_kv")
    return PutResult(header_revision(message), decode_kv(prev) if prev else None)


def decode_delete(message):
    prevs = message.get("prev_kvs")
    return DeleteResult(header_revision(message), as_int(message.get("deleted")),
                        decode_kvs(prevs) if prevs else [])


def decode_txn(message):
    responses = []
    for response in message.get("responses") or ():
        if "response_range" in response:
            responses.append(decode_range(response["response_range"]))
        elif "response_put" in response:
            responses.append(decode_put(response["response_put"]))
        elif "response_delete_range" in response:
            responses.append(decode_delete(response["response_delete_range"]))
        elif "response_txn" in response:
            responses.append(decode_txn(response["response_txn"]))
        else:
            responses.append(response)
    return TxnResult(bool(message.get("succeeded", False)), header_revision(message),
                     responses)


def decode_status(message):
    header = message.get("header") or {}
    return Status(message.get("version", ""), header.get("cluster_id"),
                  header.get("member_id"), message.get("leader"),
                  as_int(header.get("revision")))


def decode_lease_grant(message):
    if message.get("error"):
        raise EtcdError(None, "lease grant refused: %s" % (message["error"],))
    return Lease(as_int(message.get("ID")), as_int(message.get("TTL")))


def decode_watch_events(events):
    """
    WatchEvents from the "events" list of one watch response, in order. Lean:
    this runs for every change the shim applies.
    """
    a2b = _a2b
    new = _new_tuple
    cls = WatchEvent
    out = []
    append = out.append
    for event in events:
        kv = event["kv"]
        prev = event.get("prev_kv")
        if event.get("type", "PUT") == "PUT":
            value = kv.get("value")
            append(new(cls, (
                "PUT", a2b(kv["key"]).decode("utf-8", "surrogateescape"),
                a2b(value) if value else b"", int(kv["mod_revision"]),
                (a2b(prev["value"]) if "value" in prev else b"") if prev else None)))
        else:
            append(new(cls, (
                "DELETE", a2b(kv["key"]).decode("utf-8", "surrogateescape"),
                None, int(kv["mod_revision"]),
                (a2b(prev["value"]) if "value" in prev else b"") if prev else None)))
    return out
