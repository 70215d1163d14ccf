"""
Test harness for the real Gluon 1.1.0 proton-server.

  - L{proton_venv} / L{find_proton_server}: the proton virtualenv that
    C{scripts/setup-proton} caches outside the clone (keyed by
    C{contrib/gluon/constraints.txt}), or L{SkipTest} with the reason it is missing.
  - L{ProtonServer}: one fresh C{proton-server} process on a free loopback port, with
    its own config, sqlite database and log file, against a given etcd (which needs
    C{--enable-v2=true}: L{ETCD_V2_ARGS}).  L{start_proton} gives a test one in a line.
  - L{ProtonAPI}: the REST calls Gluon's Nova/Neutron plugin makes (create, bind,
    unbind, update, delete, show) under C{/proton/net-l3vpn/v1.0}.
  - L{EtcdV2}: the few etcd v2 key calls the tests need (get, set with conditions,
    wait), on treq.
  - L{BareResponder}: the smallest v2 bind responder: it watches proton's C{Port}
    writes and writes the bind result key.  It proves the harness without the shim,
    and is the baseline of the bench row.
  - L{ShimDaemon}: the shim as a real C{twistd -n shimserver} process, over v2 with
    Gluon 1.x's model, its backend recording calls to a file
    (L{shim.test.filebackend}).

Everything but L{ProtonServer.spawn} is asynchronous (Deferreds); nothing waits on
the reactor's thread.  Proton itself is single-threaded: while it waits for a bind
result (up to about 8 s) it answers no other request.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid as uuidlib
from urllib.parse import quote

import treq

from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred, inlineCallbacks, succeed)
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest

from shim.test.etcdserver import free_port
from shim.test.support import (
    REPO, get_readyz, sleep, spawn_shimserver, tail, wait_for, write_config)

log = Logger()

#: The file whose hash names the cached proton virtualenv (as in scripts/setup-proton).
CONSTRAINTS = os.path.join(REPO, "contrib", "gluon", "constraints.txt")

#: etcd's arguments for the v2 API, which proton's python-etcd speaks.
ETCD_V2_ARGS = ("--enable-v2=true",)

#: The bind result the test backends and the bare responder answer with (as
#: L{shim.test.support.VIF}, which this module does not import: it must load while
#: the service code is mid-change, and in the demo).
from shim.test.filebackend import VIF  # noqa: E402 (the backend's answer)

#: Gluon 1.x's service and its REST root.
SERVICE = "net-l3vpn"
API_ROOT = "/proton/net-l3vpn/v1.0"

#: Where proton writes its rows (v2 keys), and where it waits for bind results.
PROTON_PREFIX = "/proton/net-l3vpn"
RESULT_PREFIX = "/controller/net-l3vpn/Port"

#: A patient bound for one REST call: a bind holds proton for up to ~8 s, and every
#: other call queues behind it.
REST_TIMEOUT = 60.0


def proton_venv():
    """
    The path of the proton virtualenv: C{$SHIM_PROTON_VENV}, else
    C{${XDG_CACHE_HOME:-~/.cache}/shim/proton-<16 hex of sha256(constraints)>}.
    """
    explicit = os.environ.get("SHIM_PROTON_VENV")
    if explicit:
        return explicit
    with open(CONSTRAINTS, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "shim", "proton-" + digest)


def find_proton_server():
    """
    The path of C{proton-server} in the cached virtualenv.

    @raise SkipTest: when the virtualenv is missing or incomplete, saying why (the
        reason scripts/setup-proton left, when it left one).
    """
    venv = proton_venv()
    binary = os.path.join(venv, "bin", "proton-server")
    if os.path.exists(os.path.join(venv, ".complete")) and os.access(binary, os.X_OK):
        return binary
    reason = None
    try:
        with open(venv + ".failed") as f:
            reason = f.read().strip()
    except OSError:
        pass
    raise SkipTest("Gluon's proton-server is not installed at %s (%s); run "
                   "scripts/setup-proton" % (venv, reason or "setup-proton has not run"))


class ProtonError(Exception):
    """
    Proton answered a REST call with an error status.  C{str()} names the call, the
    status and proton's answer.
    """

    def __init__(self, method, url, code, body):
        Exception.__init__(self, "proton %s %s answered %s: %s" % (
            method, url, code, body[:500]))
        self.method = method
        self.url = url
        self.code = code
        self.body = body


class ProtonServer(object):
    """
    One C{proton-server} process (Gluon 1.1.0) on a free loopback port, with a fresh
    directory holding its config, sqlite database, policy file and log.

    @ivar url: C{http://127.0.0.1:<port>}.
    @ivar log_file: proton's standard output and error.
    """

    ready_timeout = 60.0

    def __init__(self, etcd_url, port=None, base_dir=None, binary=None):
        """
        @param etcd_url: C{http://127.0.0.1:<port>} of an etcd with v2 enabled
            (proton takes a host and a port, no scheme: it has no TLS).
        """
        self.binary = binary or find_proton_server()
        scheme, _, rest = etcd_url.partition("://")
        if scheme != "http":
            raise ValueError("proton 1.1 speaks plain http to etcd, not %r (%s)"
                             % (scheme, etcd_url))
        host, _, etcd_port = rest.rstrip("/").rpartition(":")
        self.etcd_host = host
        self.etcd_port = int(etcd_port)
        self.port = port or free_port()
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="shim-proton-")
        self.config_file = os.path.join(self.base_dir, "proton.conf")
        self.policy_file = os.path.join(self.base_dir, "policy.json")
        self.database = os.path.join(self.base_dir, "gluon.sqlite")
        self.log_file = os.path.join(self.base_dir, "proton.log")
        self.process = None

    def __repr__(self):
        return "<ProtonServer %s pid=%s>" % (
            self.url, self.process and self.process.pid)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % (self.port,)

    def write_config(self):
        """Write proton's config and policy files; return the config's path."""
        with open(self.policy_file, "w") as f:
            f.write("{}\n")
        with open(self.config_file, "w") as f:
            f.write(
                "[DEFAULT]\n"
                "debug = false\n"
                "[api]\n"
                "host = 127.0.0.1\n"
                "port = %d\n"
                "service_list = %s\n"
                "etcd_host = %s\n"
                "etcd_port = %d\n"
                "auth_strategy = noauth\n"
                "[database]\n"
                "connection = sqlite:///%s\n"
                "[oslo_policy]\n"
                "policy_file = %s\n" % (
                    self.port, SERVICE, self.etcd_host, self.etcd_port,
                    os.path.abspath(self.database), os.path.abspath(self.policy_file)))
        return self.config_file

    def spawn(self):
        """Start the process (writing its config) without waiting for it."""
        if self.running:
            raise RuntimeError("%r is already running" % (self,))
        self.write_config()
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "--config-file", self.config_file],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.base_dir)

    @inlineCallbacks
    def wait_ready(self):
        """
        A Deferred firing once proton answers C{GET /} and a list of ports (which
        also creates its tables); it fails with the log's tail when the process exits
        or does not answer in C{ready_timeout} seconds.
        """
        deadline = reactor.seconds() + self.ready_timeout
        problem = None
        while True:
            if not self.running:
                raise RuntimeError("proton-server exited with %s; log %s:\n%s" % (
                    self.process.returncode, self.log_file, self.log_tail()))
            try:
                response = yield treq.get(self.url + API_ROOT + "/ports", timeout=2,
                                          persistent=False)
                body = yield response.content()
                if response.code == 200:
                    return self
                problem = "HTTP %s: %s" % (response.code, body[:200])
            except Exception as e:
                problem = e
            if reactor.seconds() > deadline:
                raise RuntimeError(
                    "proton-server at %s not ready after %.0f s (%s); log %s:\n%s" % (
                        self.url, self.ready_timeout, problem, self.log_file,
                        self.log_tail()))
            yield sleep(0.1)

    def start(self):
        """Spawn proton and return L{wait_ready}'s Deferred."""
        self.spawn()
        return self.wait_ready()

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines=30):
        """The last C{lines} lines of proton's log (for failure messages)."""
        return tail(self.log_file, lines)

    def log_text(self):
        """Proton's whole log so far."""
        try:
            with open(self.log_file, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        """Stop proton (SIGTERM, then SIGKILL) and wait for it; blocks briefly."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cleanup(self):
        """Stop proton and remove its directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


@inlineCallbacks
def start_proton(testcase, etcd_url, **kwargs):
    """
    A fresh running L{ProtonServer} on C{etcd_url}, stopped when C{testcase} ends;
    skips the test when proton is not installed.  Its directory (config, database,
    C{proton.log}) is in the test's own temporary directory, which trial keeps after
    the run for a look at a failure.
    """
    kwargs.setdefault("base_dir", os.path.abspath(testcase.mktemp()))
    os.makedirs(kwargs["base_dir"], exist_ok=True)
    server = ProtonServer(etcd_url, **kwargs)
    testcase.addCleanup(server.stop)
    yield server.start()
    return server


class ProtonAPI(object):
    """
    Proton's REST API, called as Gluon's Nova/Neutron plugin calls it.  Each call
    returns a Deferred firing with the decoded JSON answer (C{None} for an empty one),
    or failing with L{ProtonError} for an error status.
    """

    def __init__(self, url, timeout=REST_TIMEOUT):
        self.root = url.rstrip("/") + API_ROOT
        self.timeout = timeout

    @inlineCallbacks
    def call(self, method, path, body=None):
        url = self.root + path
        kwargs = {"timeout": self.timeout, "persistent": False}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode("utf-8")
            kwargs["headers"] = {b"Content-Type": [b"application/json"]}
        response = yield treq.request(method, url, **kwargs)
        text = (yield response.content()).decode("utf-8", "replace")
        if response.code >= 300:
            raise ProtonError(method, url, response.code, text)
        return json.loads(text) if text.strip() else None

    # -- create, as the plugin does ---------------------------------------

    def create_vpnafconfig(self, route_target, tenant_id, rt_type="both", **more):
        body = {"vrf_rt_value": route_target, "vrf_rt_type": rt_type,
                "tenant_id": tenant_id}
        body.update(more)
        return self.call("POST", "/vpnafconfigs", body)

    def create_vpn(self, vpn_id, tenant_id, ipv4_family="", ipv6_family="",
                   route_distinguishers="", name="vpn", **more):
        body = {"id": vpn_id, "tenant_id": tenant_id, "name": name,
                "ipv4_family": ipv4_family, "ipv6_family": ipv6_family,
                "route_distinguishers": route_distinguishers}
        body.update(more)
        return self.call("POST", "/vpns", body)

    def create_port(self, port_id, tenant_id, mac_address="fa:16:3e:00:00:01",
                    name=None, **more):
        body = {"id": port_id, "tenant_id": tenant_id,
                "name": name or "port-" + port_id[:8], "mac_address": mac_address,
                "admin_state_up": True, "status": "DOWN", "vnic_type": "normal",
                "mtu": 1500, "vlan_transparency": False}
        body.update(more)
        return self.call("POST", "/ports", body)

    def create_vpnbinding(self, interface_id, service_id, tenant_id,
                          ipaddress="10.0.0.5", subnet_prefix=24, gateway="10.0.0.1"):
        return self.call("POST", "/vpnbindings", {
            "interface_id": interface_id, "service_id": service_id,
            "tenant_id": tenant_id, "ipaddress": ipaddress,
            "subnet_prefix": subnet_prefix, "gateway": gateway})

    # -- bind and unbind ---------------------------------------------------

    def bind(self, port_id, host_id, device_id=None):
        """
        Nova's bind: C{PUT .../ports/<id>}; proton answers once it has a bind result
        or has given up (about 8 s).  The answer is the port, C{vif_type} and
        C{vif_details} included.
        """
        return self.call("PUT", "/ports/" + port_id, {
            "device_owner": "compute:nova",
            "device_id": device_id or str(uuidlib.uuid4()),
            "host_id": host_id, "profile": "{}"})

    def unbind(self, port_id):
        """Nova's unbind: the same PUT with C{host_id} and C{device_id} empty."""
        return self.call("PUT", "/ports/" + port_id, {
            "device_owner": "", "device_id": "", "host_id": "", "profile": "{}"})

    # -- update, show, delete ---------------------------------------------

    def update_vpn(self, vpn_id, **fields):
        return self.call("PUT", "/vpns/" + vpn_id, fields)

    def update_port(self, port_id, **fields):
        return self.call("PUT", "/ports/" + port_id, fields)

    def show_port(self, port_id):
        return self.call("GET", "/ports/" + port_id)

    def delete_port(self, port_id):
        return self.call("DELETE", "/ports/" + port_id)

    def delete_vpn(self, vpn_id):
        return self.call("DELETE", "/vpns/" + vpn_id)

    def delete_vpnbinding(self, interface_id):
        return self.call("DELETE", "/vpnbindings/" + interface_id)

    def delete_vpnafconfig(self, route_target):
        return self.call("DELETE", "/vpnafconfigs/" + quote(route_target, safe=""))


class EtcdV2Error(Exception):
    """
    etcd's v2 API answered with an error: C{errorCode} (100 key not found, 101
    compare failed, 105 already exists, 401 event index cleared), C{message}, C{index}.
    """

    def __init__(self, method, url, status, body):
        self.status = status
        self.errorCode = body.get("errorCode")
        self.message = body.get("message")
        self.cause = body.get("cause")
        self.index = body.get("index")
        Exception.__init__(self, "etcd v2 %s %s: HTTP %s, errorCode %s (%s) %s" % (
            method, url, status, self.errorCode, self.message, self.cause or ""))


class EtcdV2(object):
    """
    The etcd v2 key calls the tests need, on treq.  Keys are absolute (C{/proton/...}).
    Each call returns a Deferred firing with etcd's decoded answer (with
    C{X-Etcd-Index} as C{"etcdIndex"}), or failing with L{EtcdV2Error}.
    """

    def __init__(self, url, timeout=10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    @inlineCallbacks
    def request(self, method, key, params=None, data=None, timeout=None):
        url = self.url + "/v2/keys" + quote(key)
        kwargs = {"params": params or {}, "persistent": False,
                  "timeout": self.timeout if timeout is None else timeout}
        if data is not None:
            kwargs["data"] = data
        response = yield treq.request(method, url, **kwargs)
        body = yield response.json()
        index = response.headers.getRawHeaders(b"x-etcd-index", [None])[0]
        if "errorCode" in body:
            raise EtcdV2Error(method, url, response.code, body)
        body["etcdIndex"] = int(index) if index is not None else None
        return body

    @inlineCallbacks
    def get(self, key, recursive=False):
        """The node at C{key}, or C{None} when it does not exist."""
        try:
            answer = yield self.request(
                "GET", key, {"recursive": "true"} if recursive else None)
        except EtcdV2Error as e:
            if e.errorCode == 100:
                return None
            raise
        return answer["node"]

    @inlineCallbacks
    def get_json(self, key):
        """The JSON-decoded value at C{key}, or C{None} when it does not exist."""
        node = yield self.get(key)
        return None if node is None else json.loads(node["value"])

    def set(self, key, value, **conditions):
        """
        Write C{value} (a str) at C{key}; C{conditions} are C{prevExist}, C{prevValue},
        C{prevIndex} as etcd takes them (e.g. C{prevExist="false"}).
        """
        return self.request("PUT", key, conditions, data={"value": value})

    def delete(self, key, recursive=False):
        return self.request("DELETE", key,
                            {"recursive": "true"} if recursive else None)

    def wait(self, key, wait_index=None, recursive=False, timeout=None):
        """
        The first change of C{key} (under it, when C{recursive}) at or after
        C{wait_index}: a long poll.  C{timeout} C{None} waits as long as it takes.
        """
        params = {"wait": "true"}
        if wait_index is not None:
            params["waitIndex"] = str(wait_index)
        if recursive:
            params["recursive"] = "true"
        return self.request("GET", key, params, timeout=timeout or 3600)

    @inlineCallbacks
    def dump(self, prefix="/"):
        """Every key under C{prefix} as C{{key: value}} (values as etcd holds them)."""
        node = yield self.get(prefix, recursive=True)
        found = {}

        def walk(n):
            if n.get("dir"):
                for child in n.get("nodes", []):
                    walk(child)
            else:
                found[n["key"]] = n.get("value")
        if node is not None:
            walk(node)
        return found


def result_key(port_id):
    """The v2 key where proton waits for the bind result of C{port_id}."""
    return "%s/%s" % (RESULT_PREFIX, port_id)


def row_key(table, key):
    """The v2 key where proton writes the row C{key} of C{table}."""
    return "%s/%s/%s" % (PROTON_PREFIX, table, key)


class BareResponder(object):
    """
    The smallest bind responder over etcd v2, with no model and no backend: it watches
    proton's C{Port} rows and, for each bind request (non-empty C{host_id} and
    C{device_id} that it has not answered yet) on one of C{hosts}, writes
    C{{"vif_type", "vif_details", "controller"}} to the port's result key.

    @ivar precreate: when true, create each port's result key as C{{}} (only if
        absent, C{prevExist=false}) the first time the port appears, the work-around
        for proton's wait-index bug that docs/real-proton.md discusses.
    @ivar events: every C{(action, key, value, modifiedIndex)} seen under Port.
    @ivar answered: C{(port id, host_id)} of each result written, in order.
    """

    def __init__(self, etcd_url, hosts=None, vif=None, controller="bare",
                 precreate=False):
        self.etcd = EtcdV2(etcd_url)
        self.hosts = set(hosts) if hosts is not None else None
        self.vif = dict(vif or VIF)
        self.controller = controller
        self.precreate = precreate
        self.events = []
        self.answered = []
        self.precreated = []
        self._seen = set()
        self._bound = {}
        self._pending = None
        self._running = False
        self._done = None

    @inlineCallbacks
    def _snapshot(self):
        """Read the Port rows; return the etcd index to watch after."""
        try:
            answer = yield self.etcd.request(
                "GET", PROTON_PREFIX + "/Port", {"recursive": "true"})
        except EtcdV2Error as e:
            if e.errorCode != 100:
                raise
            return e.index
        for node in answer["node"].get("nodes", []):
            yield self._port_written(node["key"], node.get("value"))
        return answer["etcdIndex"]

    def start(self):
        """Start watching; a Deferred firing once the start-up snapshot is read."""
        self._running = True
        self._done = Deferred()
        d = self._snapshot()

        def watch(index):
            self._loop(index)
            return self
        return d.addCallback(watch)

    @inlineCallbacks
    def _loop(self, index):
        try:
            while self._running:
                self._pending = self.etcd.wait(PROTON_PREFIX + "/Port", index + 1,
                                               recursive=True)
                try:
                    answer = yield self._pending
                except EtcdV2Error as e:
                    if e.errorCode == 401:
                        # The 1000-event window ran out: read everything again.
                        index = yield self._snapshot()
                        continue
                    raise
                except Exception:
                    if not self._running:
                        break    # stop() cancelled the long poll
                    raise
                finally:
                    self._pending = None
                node = answer["node"]
                index = node["modifiedIndex"]
                self.events.append((answer["action"], node["key"], node.get("value"),
                                    index))
                if answer["action"] in ("set", "create", "update",
                                        "compareAndSwap"):
                    yield self._port_written(node["key"], node.get("value"))
        except Exception:
            log.failure("bare responder stopped")
        finally:
            self._done.callback(None)

    @inlineCallbacks
    def _port_written(self, key, value):
        port_id = key.rsplit("/", 1)[-1]
        if self.precreate and port_id not in self._seen:
            self._seen.add(port_id)
            try:
                yield self.etcd.set(result_key(port_id), "{}", prevExist="false")
                self.precreated.append(port_id)
            except EtcdV2Error as e:
                if e.errorCode != 105:
                    raise
        row = json.loads(value or "{}")
        host, device = row.get("host_id") or "", row.get("device_id") or ""
        if not host or not device:
            self._bound.pop(port_id, None)
            return
        if self._bound.get(port_id) == (host, device):
            return
        if self.hosts is not None and host not in self.hosts:
            return
        self._bound[port_id] = (host, device)
        result = dict(self.vif, controller=self.controller)
        yield self.etcd.set(result_key(port_id), json.dumps(result))
        self.answered.append((port_id, host))

    def stop(self):
        """Stop watching; a Deferred firing once the watch has ended."""
        self._running = False
        if self._done is None:
            return succeed(None)
        if self._pending is not None:
            self._pending.cancel()
        return self._done


def shim_config(directory, etcd_url, record, hosts="compute1", controller="SimServer",
                metrics_port=None, api="v2", api_model="net-l3vpn-v1.0",
                backend="shim.test.filebackend:FileRecordingBackend", extra=""):
    """
    Write a shim.conf for a shim over etcd v2 with Gluon 1.x's model, its backend
    recording calls to C{record}; return its path.
    """
    sections = ("api_model = %s\n"
                "resync_interval = 0\n"
                "[etcd]\n"
                "api = %s\n"
                "[backend]\n"
                "record = %s\n" % (api_model, api, record))
    if metrics_port:
        sections += "[metrics]\nlisten = %d\n" % (metrics_port,)
    return write_config(directory, [etcd_url], controller=controller, hosts=hosts,
                        backend=backend, extra=sections + extra)


class ShimDaemon(object):
    """
    The shim as a real C{twistd -n shimserver} process over etcd v2 with Gluon 1.x's
    model; its backend appends each callback to C{record} (read them with
    L{calls}).  Its output goes to C{log_file}.

    @ivar directory: holds the config, the record and the log.
    """

    ready_timeout = 30.0

    def __init__(self, etcd_url, directory, hosts="compute1", controller="SimServer",
                 backend="shim.test.filebackend:FileRecordingBackend", extra=""):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.record = os.path.join(self.directory, "calls-%s.jsonl" % (controller,))
        self.log_file = os.path.join(self.directory, "shim-%s.log" % (controller,))
        self.metrics_port = free_port()
        self.config = shim_config(self.directory, etcd_url, self.record, hosts=hosts,
                                  controller=controller,
                                  metrics_port=self.metrics_port, backend=backend,
                                  extra=extra)
        self.process = None
        self.transport = None

    def spawn(self):
        self.process, self.transport = spawn_shimserver(self.config, self.log_file)

    @inlineCallbacks
    def wait_ready(self):
        """
        A Deferred firing once the shim's C{/readyz} answers 200 (synchronised and
        watching); it fails with the shim's output when the process ends or is not
        ready within C{ready_timeout} seconds.
        """
        deadline = reactor.seconds() + self.ready_timeout
        problem = None
        while True:
            if not self.process.running and self.process.ended.called:
                raise RuntimeError("the shim exited; its output (%s):\n%s" % (
                    self.log_file, self.output()))
            try:
                code, body = yield get_readyz(self.metrics_port)
                if code == 200:
                    return self
                problem = "HTTP %s: %s" % (code, body.strip())
            except Exception as e:
                problem = e
            if reactor.seconds() > deadline:
                raise RuntimeError("the shim is not ready after %.0f s (%s); its "
                                   "output (%s):\n%s" % (
                                       self.ready_timeout, problem, self.log_file,
                                       self.output()))
            yield sleep(0.1)

    def start(self):
        self.spawn()
        return self.wait_ready()

    def output(self, lines=60):
        return tail(self.log_file, lines)

    def calls(self, callback=None, uuid=None):
        """The recorded backend calls (of C{callback}, about C{uuid}, when given)."""
        from shim.test.filebackend import read_calls
        return [c for c in read_calls(self.record)
                if (callback is None or c["callback"] == callback)
                and (uuid is None or c["uuid"] == uuid)]

    def stop(self):
        """SIGTERM the shim; a Deferred firing with its exit code (SIGKILL after 10 s)."""
        if self.process is None or not self.process.running:
            return succeed(None)
        self.transport.signalProcess("TERM")
        timer = reactor.callLater(10, self._kill)

        def done(code):
            if timer.active():
                timer.cancel()
            return code
        return self.process.ended.addBoth(done)

    def _kill(self):
        if self.process.running:
            self.transport.signalProcess("KILL")


@inlineCallbacks
def start_shim(testcase, etcd_url, **kwargs):
    """A running L{ShimDaemon} in a fresh directory, stopped when C{testcase} ends."""
    daemon = ShimDaemon(etcd_url, os.path.abspath(testcase.mktemp()), **kwargs)
    testcase.addCleanup(daemon.stop)
    yield daemon.start()
    return daemon


def wait_until(predicate, timeout=30.0, interval=0.05, what=None):
    """
    L{shim.test.support.wait_for} with the longer bound these process tests take.
    """
    return wait_for(predicate, timeout=timeout, interval=interval, what=what)
