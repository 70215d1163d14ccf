"""
A backend that records every callback as one JSON line in a file, so that a test can
observe the callbacks of a shim running as a separate process (C{twistd shimserver}).

Configured by import path, C{backend = shim.test.filebackend:FileRecordingBackend},
with its options in C{[backend]}:

  - C{record}: the file the calls are appended to (required);
  - C{vif_type}, C{vif_details} (JSON): the answer of C{bind_port}; by default
    L{VIF}.

Each line is C{{"callback": name, "uuid": the uuid the call is about, "new": ...,
"prev": ...}}, with C{new}/C{prev} from the call's C{changes} (or the deleted object as
C{prev}).  L{read_calls} reads them back.
"""

import json
import os

from zope.interface import implementer

from shim.interfaces import IBackend

#: The bind result the backend answers: the dummy backend's.  (Kept here, not
#: imported from the test harness, so that a shim process loads no test code.)
VIF = {"vif_type": "ovs", "vif_details": {"port_filter": False, "bridge_name": "br-gluon"}}


def _plain(value):
    """
    C{value} as something C{json.dumps} can write: dicts and lists as they are, other
    objects as their C{repr}.
    """
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): _plain(v) for k, v in value.items()}
        return repr(value)


@implementer(IBackend)
class FileRecordingBackend:
    """
    Appends one JSON line per callback to the file named by the C{record} option and
    answers C{bind_port} with a fixed vif.
    """

    def __init__(self, options):
        path = options.get("record")
        if not path:
            raise ValueError("[backend] record: the file to record calls in is not set")
        self.path = path
        self.vif = dict(VIF)
        if options.get("vif_type"):
            self.vif["vif_type"] = options["vif_type"]
        if options.get("vif_details"):
            try:
                self.vif["vif_details"] = json.loads(options["vif_details"])
            except ValueError as e:
                raise ValueError("[backend] vif_details: not JSON: %s" % (e,))

    def _record(self, callback, uuid, changes=None, prev=None):
        line = {"callback": callback, "uuid": uuid}
        if changes is not None:
            line["new"] = _plain(getattr(changes, "new", None))
            line["prev"] = _plain(getattr(changes, "prev", None))
        if prev is not None:
            line["prev"] = _plain(prev)
        with open(self.path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def bind_port(self, uuid, model, changes):
        self._record("bind_port", uuid, changes)
        return dict(self.vif)

    def unbind_port(self, uuid, model, changes):
        self._record("unbind_port", uuid, changes)

    def modify_port(self, uuid, model, changes):
        self._record("modify_port", uuid, changes)

    def delete_port(self, uuid, model, port):
        self._record("delete_port", uuid, prev=port)

    def modify_service(self, uuid, model, changes):
        self._record("modify_service", uuid, changes)

    def delete_service(self, uuid, model, service):
        self._record("delete_service", uuid, prev=service)

    def modify_service_binding(self, uuid, model, prev_binding):
        self._record("modify_service_binding", uuid, prev=prev_binding)

    def delete_service_binding(self, model, prev_binding):
        uuid = (prev_binding or {}).get("id") or (prev_binding or {}).get("interface_id")
        self._record("delete_service_binding", uuid, prev=prev_binding)


def read_calls(path):
    """
    The calls recorded in C{path} so far, as a list of dicts (empty when the file does
    not exist yet).
    """
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
