"""
Helpers for tests that run the shim service against a real etcd, in this process
or as C{twistd} processes.
"""

import json
import os
import sys

import treq

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from shim import keys, web
from shim.config import load_config
from shim.etcd import EtcdClient, MessageTooLarge, watch as watch_module
from shim.interfaces import IBackend
from shim.proton import ProtonClient
from shim.service import ShimService
from shim.test.etcdserver import EtcdServer, start_etcd

CALLBACKS = (
    "bind_port",
    "unbind_port",
    "modify_port",
    "delete_port",
    "modify_service",
    "delete_service",
    "modify_service_binding",
    "delete_service_binding",
)

VIF = {"vif_type": "ovs", "vif_details": {"port_filter": False, "bridge_name": "br-gluon"}}


@implementer(IBackend)
class RecordingBackend:
    """
    A backend that records every call as C{(callback, key)}, where C{key} is the uuid
    the call is about, and answers C{bind_port} with L{VIF} unless told otherwise.

    @ivar answers: callback name to a callable taking the call's arguments and
        returning the answer (a value or a Deferred), or raising.
    """

    def __init__(self, options=None):
        self.options = options or {}
        self.calls = []
        self.arguments = []
        self.answers = {}

    def _record(self, callback, key, *args):
        self.calls.append((callback, key))
        self.arguments.append((callback, args))
        answer = self.answers.get(callback)
        if answer is not None:
            return answer(*args)
        if callback == "bind_port":
            return dict(VIF)
        return None

    def bind_port(self, uuid, model, changes):
        return self._record("bind_port", uuid, uuid, model, changes)

    def unbind_port(self, uuid, model, changes):
        return self._record("unbind_port", uuid, uuid, model, changes)

    def modify_port(self, uuid, model, changes):
        return self._record("modify_port", uuid, uuid, model, changes)

    def delete_port(self, uuid, model, port):
        return self._record("delete_port", uuid, uuid, model, port)

    def modify_service(self, uuid, model, changes):
        return self._record("modify_service", uuid, uuid, model, changes)

    def delete_service(self, uuid, model, service):
        return self._record("delete_service", uuid, uuid, model, service)

    def modify_service_binding(self, uuid, model, prev_binding):
        return self._record("modify_service_binding", uuid, uuid, model, prev_binding)

    def delete_service_binding(self, model, prev_binding):
        return self._record(
            "delete_service_binding", prev_binding.get("id"), model, prev_binding
        )

    def called(self, callback, key=None):
        """
        The number of calls of C{callback} (about C{key}, when given).
        """
        return sum(
            1 for c, k in self.calls if c == callback and (key is None or k == key)
        )


def port_attrs(uuid, host="", device="", **more):
    """
    A port's full attribute set as proton writes it; C{more} overrides attributes.
    """
    attrs = {
        "id": uuid, "name": "port " + uuid, "tenant_id": "t1", "network_id": "n1",
        "mac_address": "fa:16:3e:00:00:01", "admin_state_up": "True",
        "device_owner": "compute:nova", "device_id": device, "status": "DOWN",
        "vnic_type": "normal", "host_id": host, "vif_details": None, "profile": None,
        "vif_type": None, "zone": None, "ipaddress": "10.0.0.5", "subnet_prefix": "24",
        "gateway": "10.0.0.1", "mtu": "1500", "vlan_transparency": "False",
    }
    attrs.update(more)
    return attrs


def proton_side(testcase, etcd):
    """
    A client of C{etcd} (an L{EtcdServer}) and L{ProtonClient} on it, for a test;
    the client is closed when the test ends.

    @return: C{(client, proton)}.
    """
    client = EtcdClient([etcd.client_url])
    testcase.addCleanup(client.close)
    return client, ProtonClient(client)


def write_config(directory, endpoints, controller="SimServer", hosts="compute1, compute2",
                 backend="dummy", extra=""):
    """
    Write a shim.conf into C{directory} and return its path.
    """
    path = os.path.join(directory, "shim-%s.conf" % (controller,))
    with open(path, "w") as f:
        f.write(
            "[shim]\n"
            "controller_name = %s\n"
            "host_list = %s\n"
            "etcd_endpoints = %s\n"
            "backend = %s\n"
            "%s\n" % (controller, hosts, ", ".join(endpoints), backend, extra)
        )
    return path


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def key_history(client, key, decode=None):
    """
    Every change of C{key} that etcd still remembers, oldest first, as C{(type,
    value)}: a watch from revision 1 up to the store's revision.  C{decode}, when
    given, turns each value (C{b""} for a delete) into what the list holds.
    """
    status = yield client.status()
    events = []
    watch = client.watch(
        key, 1, lambda e: events.append(
            (e.type, e.value if decode is None else decode(e.value))),
        prefix=False)
    try:
        yield wait_for(lambda: watch.last_revision >= status.revision,
                       what="the history of %s" % (key,))
    finally:
        yield watch.stop()
    return events


def replace_cluster(testcase, old, writes):
    """
    Put a new etcd cluster in place of C{old} (an L{EtcdServer}), on the same
    address: the new one gets C{writes} (C{(key, value)} pairs, in order) while
    C{old} still serves, then C{old} stops and the new one starts on its port.
    A Deferred firing with the new L{EtcdServer}, cleaned up when C{testcase} ends.
    """
    new = EtcdServer()
    testcase.addCleanup(new.cleanup)
    new.start()
    filler = EtcdClient([new.client_url])
    testcase.addCleanup(filler.close)
    d = _fill(filler, writes)

    def swap(_):
        new.stop()
        old.stop()
        new.client_port = old.client_port
        new.start()
        return new
    return d.addCallback(swap)


@inlineCallbacks
def _fill(client, writes):
    for key, value in writes:
        yield client.put(key, value)
    yield client.close()


@inlineCallbacks
def wait_for(predicate, timeout=15.0, interval=0.02, what=None):
    """
    Poll C{predicate} (which may return a Deferred) until it is true; fail the test
    with C{what} if it is not within C{timeout} seconds (a liveness bound, not a speed
    target).
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = yield maybeDeferred(predicate)
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError("timed out waiting for %s" % (what or predicate,))
        yield sleep(interval)


class ShimRunner:
    """
    Starts L{ShimService}s in this process against a test's etcd, and stops them when
    the test ends.
    """

    def __init__(self, testcase, endpoints):
        self.testcase = testcase
        self.endpoints = endpoints
        self.directory = testcase.mktemp()
        os.makedirs(self.directory)

    @inlineCallbacks
    def start(self, backend=None, controller="SimServer", hosts="compute1, compute2",
              extra="", wait=True):
        """
        Start a shim; return it once it is ready (or at once when C{wait} is false).
        """
        path = write_config(
            self.directory, self.endpoints, controller=controller, hosts=hosts,
            extra=extra,
        )
        config = load_config(path)
        backend = backend if backend is not None else RecordingBackend()
        service = ShimService(config, backend)
        service.startService()
        self.testcase.addCleanup(self.stop, service)
        if wait:
            yield service.when_ready()
        return service

    def stop(self, service):
        if service.running:
            return service.stopService()
        return None


class OperationsCase(TestCase):
    """
    A fresh etcd, proton's side on it (C{client}, C{proton}), a shim in this process
    (C{shim}, configured with C{extra}) and its operations endpoint on a free
    loopback port, at C{url}.
    """

    timeout = 120
    #: Election off: these tests are about a shim acting alone (role "single").
    extra = "[election]\nenabled = false\n"

    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self)
        self.client, self.proton = proton_side(self, self.etcd)
        self.shim = yield ShimRunner(self, [self.etcd.client_url]).start(
            extra=self.extra)
        port = yield web.listen(self.shim, ("127.0.0.1", 0), reactor)
        self.addCleanup(port.stopListening)
        self.url = "http://127.0.0.1:%d" % (port.getHost().port,)


@inlineCallbacks
def read_result(client, uuid):
    """
    The decoded bind result of port C{uuid}, or C{None} when its key does not exist.
    """
    found = yield client.get(keys.result_key(uuid))
    if not found.kvs:
        return None
    return json.loads(found.kvs[0].value)


def never():
    """
    A Deferred that never fires (for a backend that hangs).
    """
    return Deferred()


@inlineCallbacks
def check_watch_too_large(testcase, client):
    """
    Check, with either etcd client: a value bigger than the (lowered) cap on one
    watch message ends a real watch with "too_large", the events before it
    delivered.
    """
    testcase.patch(watch_module, "MAX_WATCH_MESSAGE", 64 * 1024)
    events = []
    watch = client.watch("/big/", None, events.append)
    yield watch.started
    small = yield client.put("/big/a", b"x" * 1000)
    yield client.put("/big/b", b"y" * 100 * 1024)
    ended = yield watch.done
    testcase.assertEqual(ended.reason, "too_large")
    testcase.assertIsInstance(ended.error, MessageTooLarge)
    testcase.assertEqual([e.mod_revision for e in events], [small.revision])
    testcase.assertEqual(watch.last_revision, small.revision)


# -- shim processes ---------------------------------------------------------------

#: The repository: the working directory of the processes tests start, and first on
#: their path, so that they run the code under test.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def repo_env():
    """This process's environment with L{REPO} first on C{PYTHONPATH}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"]
                                if env.get("PYTHONPATH") else "")
    return env


def twistd_command():
    """
    The twistd of the interpreter running the tests: C{(executable, arguments before
    twistd's own)}.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(beside):
        return beside, []
    return sys.executable, ["-c", "from twisted.scripts.twistd import run; run()"]


def run_twistd(*args):
    """
    Run twistd with C{args} from the repository, with the repository first on the
    path; a Deferred firing with C{(stdout, stderr, exit code)}.
    """
    executable, prefix = twistd_command()
    return getProcessOutputAndValue(executable, prefix + list(args), env=repo_env(),
                                    path=REPO)


class ProcessLog(ProcessProtocol):
    """
    Appends a process's output (stdout and stderr) to the file C{path}.

    @ivar running: whether the process runs.
    @ivar ended: fires with the exit code (None when killed by a signal) once the
        process is gone.
    """

    def __init__(self, path):
        self.out = open(path, "ab")
        self.ended = Deferred()
        self.running = False

    def connectionMade(self):
        self.running = True

    def childDataReceived(self, fd, data):
        self.out.write(data)
        self.out.flush()

    def processEnded(self, reason):
        self.running = False
        self.out.close()
        code = None
        if reason.check(ProcessDone, ProcessTerminated):
            code = reason.value.exitCode
        self.ended.callback(code)


def spawn_shimserver(config, log_file):
    """
    Start C{twistd -n shimserver --config CONFIG} from the repository, its output
    appended to C{log_file}: C{(its L{ProcessLog}, its process transport)}.
    """
    executable, prefix = twistd_command()
    process = ProcessLog(log_file)
    argv = [executable] + prefix + ["-n", "--pidfile=", "shimserver",
                                    "--config", config]
    transport = reactor.spawnProcess(process, executable, argv, env=repo_env(),
                                     path=REPO)
    return process, transport


@inlineCallbacks
def get_readyz(port):
    """
    C{GET /readyz} of the operations endpoint on loopback C{port}: C{(HTTP code,
    body text)}; fails when the endpoint does not answer within 2 s.
    """
    url = "http://127.0.0.1:%d/readyz" % (port,)
    response = yield treq.get(url, timeout=2, persistent=False)
    body = yield response.text()
    return response.code, body


def tail(path, lines):
    """The last C{lines} lines of the file C{path} (for failure messages); "" if none."""
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return ""
