"""
The JSON wire format of etcd's v2 keys API (/v2/keys/...), apart from the HTTP.

A v2 answer is C{{"action": ..., "node": {...}, "prevNode": {...}}}; a node is
C{{"key", "value", "dir", "nodes", "modifiedIndex", "createdIndex", ...}}; an error is
C{{"errorCode", "message", "cause", "index"}}.  etcd's index (the C{X-Etcd-Index}
header, a node's C{modifiedIndex}) plays the part of the v3 revision.  The results
are the v3 client's tuples (L{shim.etcd.wire}), so that callers cannot tell the APIs
apart.

L{SnapshotParser} reads a recursive GET of a whole directory as it arrives, one leaf
at a time, so that an answer of hundreds of megabytes is never held whole, neither
as bytes nor as a tree of dicts.
"""

import codecs
import json
from json.decoder import scanstring
from urllib.parse import quote

from shim.etcd.errors import (
    AuthFailed, Compacted, EtcdError, NotFound, Unavailable)
from shim.etcd.wire import KeyValue, WatchEvent, key_bytes

# v2 error codes (etcd's server/etcdserver/api/v2error).
KEY_NOT_FOUND = 100
COMPARE_FAILED = 101
NOT_FILE = 102
NOT_DIR = 104
NODE_EXIST = 105
ROOT_READ_ONLY = 107
DIR_NOT_EMPTY = 108
UNAUTHORIZED = 110
RAFT_INTERNAL = 300
LEADER_ELECT = 301
WATCHER_CLEARED = 400
EVENT_INDEX_CLEARED = 401

#: The errors of a compare-and-set whose compare failed: not an error for the caller.
CAS_FAILED = (COMPARE_FAILED, NODE_EXIST, KEY_NOT_FOUND)

#: Actions whose event leaves the key with a value, and those that remove it.
PUT_ACTIONS = frozenset(("set", "create", "update", "compareAndSwap"))
DELETE_ACTIONS = frozenset(("delete", "expire", "compareAndDelete"))


def key_path(key):
    """
    The URL path of C{key} (str or bytes) under /v2/keys: each segment quoted, a
    trailing slash kept (it matters to v2 auth: read permission on C{/proton/*}
    lets a user read C{/proton/}, not C{/proton}).
    """
    raw = key_bytes(key)
    if not raw.startswith(b"/"):
        raw = b"/" + raw
    return "/v2/keys" + quote(raw, safe="/")


def cluster_id(header):
    """The decimal cluster id (as the v3 API gives it) of an X-Etcd-Cluster-Id."""
    if not header:
        return None
    try:
        return str(int(header, 16))
    except ValueError:
        return header


def decode_json(body):
    """A v2 answer's JSON object; C{ValueError} when it is not one."""
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("etcd v2 answer is not a JSON object: %r" % (body[:200],))
    return message


def error_from_v2(status, message, call, endpoint):
    """
    The L{EtcdError} for a v2 error answer.

    @param status: the HTTP status code.
    @param message: the decoded error object, or None when the body was not one.
    @return: an L{EtcdError} subclass whose C{v2_code} is etcd's errorCode (or None);
        L{Compacted} for "event index cleared", with C{compact_revision} the oldest
        index etcd still holds.
    """
    if message is None:
        code = None
        text = "etcd %s at %s failed: HTTP %d" % (call, endpoint, status)
    else:
        code = message.get("errorCode")
        text = "etcd %s at %s failed: %s (%s; v2 errorCode %s, HTTP %d)" % (
            call, endpoint, message.get("message", ""), message.get("cause", ""),
            code, status)
    if code == EVENT_INDEX_CLEARED:
        error = Compacted(cleared_start(message.get("cause", "")), text + "; the"
                          " 1000-event window has moved past the requested index")
    elif status == 401 or code == UNAUTHORIZED:
        error = AuthFailed(None, text)
    elif code == KEY_NOT_FOUND:
        error = NotFound(None, text)
    elif code in (RAFT_INTERNAL, LEADER_ELECT, WATCHER_CLEARED) or status in (
            502, 503, 504):
        error = Unavailable(None, text)
    else:
        error = EtcdError(None, text)
    error.v2_code = code
    return error


def cleared_start(cause):
    """
    The oldest index etcd still holds, from the cause of an "event index cleared"
    error: C{"the requested history has been cleared [104/2]"} -> 104.
    """
    start = cause.rfind("[")
    if start != -1:
        head = cause[start + 1:].split("/", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def node_kv(node):
    """A leaf node as a L{KeyValue}; v2 counts no versions: 1 for a live key."""
    value = node.get("value")
    return KeyValue(node["key"], value.encode("utf-8") if value else b"",
                    int(node.get("createdIndex", 0)), int(node.get("modifiedIndex", 0)),
                    1, 0)


def flatten(node, out):
    """Append every leaf under C{node} (a decoded node) to C{out}, depth first."""
    if node.get("dir"):
        for child in node.get("nodes") or ():
            flatten(child, out)
    else:
        out.append(node_kv(node))
    return out


def decode_event(message, prev_kv=False):
    """
    One event of a v2 watch -> (index, L{WatchEvent} or None).

    A directory deleted or expired is one event, for the directory: a DELETE of its
    key followed by "/" (every key under it is gone).  A directory created or
    refreshed carries no value: None (its index still counts).
    """
    node = message["node"]
    index = int(node["modifiedIndex"])
    action = message.get("action")
    prev = message.get("prevNode") if prev_kv else None
    prev_value = None
    if prev is not None and not prev.get("dir"):
        value = prev.get("value")
        prev_value = value.encode("utf-8") if value else b""
    if action in DELETE_ACTIONS:
        key = node["key"]
        if node.get("dir"):
            key = key.rstrip("/") + "/"
        return index, WatchEvent("DELETE", key, None, index, prev_value)
    if action in PUT_ACTIONS:
        if node.get("dir"):
            return index, None
        value = node.get("value")
        return index, WatchEvent("PUT", node["key"],
                                 value.encode("utf-8") if value else b"", index,
                                 prev_value)
    return index, None


_NODE = '{"key":'
_DIR_MARK = ',"dir":true'


class SnapshotParser(object):
    """
    Read a recursive GET's answer as it arrives and hand over its leaves.

    It relies on one property of JSON: the text C{{"key":} can only be the start of
    a node object, since a quote inside a string is escaped.  Each node whose key is
    followed by C{"dir":true} is skipped (its children follow as nodes of their
    own); each other node is a flat object, decoded on its own.  Only an unfinished
    node is held between reads.  Should etcd ever put C{"dir"} elsewhere, the
    directory is decoded whole and flattened: slower, still right.

    @param on_kvs: called with each list of L{KeyValue}s decoded from one read.
    """

    def __init__(self, on_kvs):
        self._on_kvs = on_kvs
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._raw = json.JSONDecoder().raw_decode
        self._pending = []
        self._held = 0
        self._retry_at = 0
        self._last = ""
        self.count = 0

    def feed(self, data):
        """Take the next bytes of the answer."""
        text = self._decoder.decode(data)
        if not text:
            return
        tail = text.rstrip()
        if tail:
            self._last = tail[-1]
        self._pending.append(text)
        self._held += len(text)
        # An unfinished node is tried again only once twice as much text is held,
        # so that a huge value arriving in many reads is not parsed over and over.
        if self._held >= self._retry_at:
            self._parse(final=False)

    def close(self):
        """The answer is complete: parse what is left; C{ValueError} if truncated."""
        self._pending.append(self._decoder.decode(b"", True))
        if self._last != "}":
            raise ValueError("etcd v2 answer ends before its end: %r"
                             % ("".join(self._pending)[-200:],))
        self._parse(final=True)

    def _parse(self, final):
        text = "".join(self._pending)
        self._pending = []
        out = []
        append = out.append
        raw = self._raw
        find = text.find
        startswith = text.startswith
        new = _new_tuple
        cls = KeyValue
        mark = _NODE
        dir_mark = _DIR_MARK
        skip = len(mark) + 1
        pos = 0
        size = len(text)
        while True:
            start = find(mark, pos)
            if start == -1:
                # Keep a tail that may hold the start of the next marker.
                pos = max(pos, size - len(mark) + 1)
                break
            # The end of the key: its closing quote, unless the key has escapes.
            end = find('"', start + skip) + 1
            if not end or text[end - 2] == "\\":
                try:
                    end = scanstring(text, start + skip)[1]
                except ValueError:
                    if final:
                        raise ValueError("etcd v2 answer ends inside a key at %d: %r"
                                         % (start, text[start:start + 200]))
                    pos = start
                    break
            if startswith(dir_mark, end):
                pos = end
                continue
            if end + len(dir_mark) > size and not final and dir_mark.startswith(
                    text[end:]):
                pos = start
                break
            try:
                node, stop = raw(text, start)
            except ValueError:
                if final:
                    raise ValueError("etcd v2 answer ends inside node %r"
                                     % (text[start:start + 200],))
                pos = start
                break
            get = node.get
            if get("dir"):
                flatten(node, out)
            else:
                value = get("value")
                append(new(cls, (
                    node["key"], value.encode("utf-8") if value else b"",
                    int(get("createdIndex", 0)), int(get("modifiedIndex", 0)), 1, 0)))
            pos = stop
        rest = text[pos:] if pos < size else ""
        self._held = len(rest)
        self._retry_at = 2 * self._held if mark in rest else 0
        if rest:
            self._pending.append(rest)
        if out:
            self.count += len(out)
            self._on_kvs(out)

#: Builds a namedtuple without the Python-level C{__new__} the class call goes through.
_new_tuple = tuple.__new__
