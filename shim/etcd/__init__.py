"""
The etcd v3 client of the shim, speaking etcd's JSON gateway (/v3/...) with treq.

See docs/architecture.md, "The etcd client API".
"""

from shim.etcd.errors import (
    AuthFailed, Compacted, ConnectionFailed, EtcdError, NotFound, RequestTooLarge,
    TLSFailed, Timeout, Unavailable)
from shim.etcd.wire import (
    Compare, DeleteResult, KeyValue, Lease, Op, PutResult, RangeResult, Status,
    TxnResult, WatchEnded, WatchEvent)
from shim.etcd.watch import Watch, WatchStreamParser
from shim.etcd.client import EtcdClient

__all__ = [
    "EtcdClient", "Watch", "WatchStreamParser",
    "Compare", "Op",
    "KeyValue", "RangeResult", "PutResult", "DeleteResult", "TxnResult", "Status",
    "Lease", "WatchEvent", "WatchEnded",
    "EtcdError", "ConnectionFailed", "Timeout", "Compacted", "AuthFailed",
    "RequestTooLarge", "Unavailable", "NotFound", "TLSFailed",
]
