"""
The etcd clients of the shim: L{EtcdClient} speaks etcd's v3 JSON gateway
(/v3/...), L{EtcdV2Client} the v2 keys API (/v2/keys/...), both with treq and with
the same surface, so that the service does not know which API it talks to.

See docs/architecture.md, "The etcd client API", and docs/etcd-v2.md.
"""

from shim.etcd.errors import (
    AuthFailed, Compacted, ConnectionFailed, EtcdError, MessageTooLarge, NotFound,
    RequestTooLarge, TLSFailed, Timeout, Unavailable)
from shim.etcd.wire import (
    CasResult, Compare, DeleteResult, IfValue, KeyValue, Lease, Op, PutResult, RangeResult,
    Status, TxnResult, WatchEnded, WatchEvent)
from shim.etcd.watch import Watch, WatchStreamParser
from shim.etcd.client import EtcdClient
from shim.etcd.v2 import EtcdV2Client

__all__ = [
    "EtcdClient", "EtcdV2Client", "Watch", "WatchStreamParser",
    "Compare", "Op", "IfValue",
    "KeyValue", "RangeResult", "PutResult", "DeleteResult", "TxnResult", "CasResult", "Status",
    "Lease", "WatchEvent", "WatchEnded",
    "EtcdError", "ConnectionFailed", "Timeout", "Compacted", "AuthFailed",
    "RequestTooLarge", "Unavailable", "NotFound", "TLSFailed", "MessageTooLarge",
]
