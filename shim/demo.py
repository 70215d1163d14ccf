"""
The README's demo: the whole protocol once, end to end, with real processes.

It starts a private etcd, starts the shim as a real C{twistd -n shimserver} process
(its output prefixed with C{shim |}), and then plays proton: creates a route target, a
VPN, a port and the port's VPN binding, binds the port on C{compute1}, prints the bind
result proton got, unbinds, deletes everything, and stops the shim and etcd.  Each step
is narrated in one line.  It exits 0 when every step worked, and 1 with a message naming
the step that did not.

Run it with C{scripts/demo}, or C{python -m shim.demo} inside the project's venv.
"""

import configparser
import json
import os
import shutil
import signal
import sys
import tempfile

from twisted.internet import protocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from shim import keys
from shim.etcd import EtcdClient
from shim.proton import ProtonClient
from shim.test.etcdserver import EtcdServer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HOST = "compute1"
PORT = "demo-port-1"
VPN = "demo-vpn-1"
RT = "100:1"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class DemoFailed(Exception):
    """
    A step of the demo did not work; the message says which and why.
    """


def say(text):
    sys.stdout.write("demo: %s\n" % (text,))
    sys.stdout.flush()


def find_config():
    """
    The project's example shim.conf: beside the package, or in the current directory.
    """
    for candidate in (os.path.join(REPO, "shim.conf"), os.path.abspath("shim.conf")):
        if os.path.isfile(candidate):
            return candidate
    return None


def write_config(directory, endpoint):
    """
    Copy shim.conf into C{directory} with the etcd endpoint replaced and C{compute1} in
    the host list; return its path.
    """
    parser = configparser.ConfigParser(interpolation=None)
    source = find_config()
    if source is not None:
        parser.read(source, encoding="utf-8")
    if not parser.has_section("shim"):
        parser.add_section("shim")
    shim = parser["shim"]
    shim.setdefault("controller_name", "DemoShim")
    shim.setdefault("backend", "dummy")
    hosts = [h.strip() for h in shim.get("host_list", "").split(",") if h.strip()]
    if "*" not in hosts and HOST not in hosts:
        hosts.append(HOST)
    shim["host_list"] = ", ".join(hosts)
    shim["etcd_endpoints"] = endpoint
    path = os.path.join(directory, "shim.conf")
    with open(path, "w", encoding="utf-8") as f:
        parser.write(f)
    return path, source


def twistd_command():
    """
    The twistd of this interpreter's environment.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class ShimProcess(protocol.ProcessProtocol):
    """
    The shim as a child process: its output printed line by line with a prefix, a
    Deferred for the "shim ready" line and one for its end.
    """

    def __init__(self):
        self.ready = Deferred()
        self.ended = Deferred()
        self.exit_code = None
        self.signal = None
        self._buffers = {1: b"", 2: b""}

    def childDataReceived(self, fd, data):
        self._buffers[fd] = self._buffers.get(fd, b"") + data
        *lines, self._buffers[fd] = self._buffers[fd].split(b"\n")
        for line in lines:
            self._line(line.decode("utf-8", "replace"))

    def _line(self, text):
        sys.stdout.write("   shim | %s\n" % (text,))
        sys.stdout.flush()
        if "shim ready" in text and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason):
        for fd, rest in self._buffers.items():
            if rest:
                self._line(rest.decode("utf-8", "replace"))
        self._buffers = {}
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        if not self.ready.called:
            self.ready.errback(DemoFailed(
                "the shim exited (code %s) before it was ready" % (self.exit_code,)))
        self.ended.callback(self.exit_code)


def within(reactor, d, seconds, what):
    """
    C{d}, failed with L{DemoFailed} naming C{what} if it has not fired in C{seconds}.
    """
    def expired():
        if not d.called:
            d.errback(DemoFailed("%s: nothing after %.0f s" % (what, seconds)))
    timer = reactor.callLater(seconds, expired)

    def done(result):
        if timer.active():
            timer.cancel()
        return result
    return d.addBoth(done)


class Demo:
    """
    The demo's steps and the cleanup of whatever was started.
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.directory = tempfile.mkdtemp(prefix="shim-demo-")
        self.etcd = None
        self.client = None
        self.shim = None
        self.transport = None
        self.step = "starting"

    @inlineCallbacks
    def run(self):
        self.step = "start etcd"
        self.etcd = EtcdServer()
        self.etcd.start()
        endpoint = self.etcd.client_url
        self.client = EtcdClient([endpoint], reactor=self.reactor)
        status = yield self.client.status()
        say("1. started a private etcd %s at %s" % (status.version, endpoint))

        self.step = "start the shim"
        config, source = write_config(self.directory, endpoint)
        say("2. starting the shim: twistd -n shimserver --config %s (from %s)"
            % (config, source or "built-in defaults"))
        self.shim = ShimProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        argv = twistd_command() + ["-n", "--pidfile=", "shimserver", "--config", config]
        self.transport = self.reactor.spawnProcess(
            self.shim, argv[0], argv, env=env, path=self.directory)
        yield within(self.reactor, self.shim.ready, READY_TIMEOUT,
                     "waiting for the shim to log 'shim ready'")
        say("3. the shim is ready")

        proton = ProtonClient(self.client, self.reactor)
        self.step = "create the route target"
        yield proton.create_route_target(RT, rt_type="both")
        say("4. proton created route target %s (VpnAfConfig %s)"
            % (RT, keys.afconfig_name(RT)))
        self.step = "create the VPN"
        yield proton.create_vpn(VPN, name="demo", route_distinguishers=RT,
                                ipv4_family=[RT])
        say("5. proton created VPN %s with ipv4_family %s" % (VPN, RT))
        self.step = "create the port"
        port = yield proton.create_port(PORT, ipaddress="10.0.0.5", subnet_prefix=24,
                                        gateway="10.0.0.1")
        yield proton.create_vpn_port(PORT, VPN)
        say("6. proton created port %s (mac %s) and bound it to %s (VPNPort)"
            % (PORT, port["mac_address"], VPN))

        self.step = "bind the port"
        say("7. proton binds %s on %s and waits up to 8 s for the shim's answer"
            % (PORT, HOST))
        outcome = yield proton.bind(PORT, HOST, "demo-vm-1", timeout=8.0)
        if outcome.timed_out:
            raise DemoFailed("proton got no bind result within 8 s")
        say("8. proton got the bind result after %.1f ms: %s"
            % (outcome.elapsed * 1000.0, json.dumps(outcome.result, sort_keys=True)))

        self.step = "unbind the port"
        yield proton.unbind(PORT)
        result = yield self._wait_result_cleared()
        say("9. proton unbound %s; the shim set the bind result to %s"
            % (PORT, json.dumps(result)))

        self.step = "delete everything"
        yield proton.delete_vpn_port(PORT)
        yield proton.delete_port(PORT)
        yield proton.delete_vpn(VPN)
        yield proton.delete_route_target(RT)
        left = yield proton.show()
        strays = sorted(key for key in left if key.startswith(keys.PROTON_PREFIX))
        if strays:
            raise DemoFailed("proton keys left after deleting: %s" % (", ".join(strays),))
        say("10. proton deleted the VPNPort, port, VPN and route target; left in etcd: %s"
            % (", ".join("%s = %s" % (k, json.dumps(v)) for k, v in left.items())
               or "nothing",))

        self.step = "stop the shim"
        yield self.stop_shim()
        # twistd shuts down cleanly, then ends itself with the signal it received.
        if not (self.shim.exit_code == 0 or self.shim.signal == signal.SIGTERM):
            raise DemoFailed("the shim ended with exit code %s, signal %s on SIGTERM"
                             % (self.shim.exit_code, self.shim.signal))
        say("11. stopped the shim (SIGTERM; it shut down cleanly)")

    @inlineCallbacks
    def _poll(self, check, what, seconds=10.0):
        deadline = self.reactor.seconds() + seconds
        while True:
            value = yield check()
            if value is not None:
                return value
            if self.reactor.seconds() > deadline:
                raise DemoFailed("%s: not after %.0f s" % (what, seconds))
            yield deferLater(self.reactor, 0.05, lambda: None)

    def _wait_result_cleared(self):
        @inlineCallbacks
        def check():
            found = yield self.client.get(keys.result_key(PORT))
            if found.kvs and json.loads(found.kvs[0].value) == {}:
                return {}
            return None
        return self._poll(check, "waiting for the shim to clear the bind result")

    @inlineCallbacks
    def stop_shim(self):
        """
        SIGTERM the shim and wait for it to exit (SIGKILL after STOP_TIMEOUT).
        """
        if self.shim is None or self.shim.ended.called:
            return self.shim.exit_code if self.shim else None
        try:
            self.transport.signalProcess("TERM")
        except Exception:
            pass
        timer = self.reactor.callLater(STOP_TIMEOUT, self._kill)
        code = yield self.shim.ended
        if timer.active():
            timer.cancel()
        return code

    def _kill(self):
        say("the shim did not stop within %.0f s of SIGTERM; killing it" % (STOP_TIMEOUT,))
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    @inlineCallbacks
    def cleanup(self):
        """
        Stop whatever is still running; safe after a failure at any step.
        """
        if self.shim is not None and not self.shim.ended.called:
            yield self.stop_shim()
        if self.client is not None:
            yield self.client.close()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd.cleanup()
            say("stopped etcd")
        shutil.rmtree(self.directory, ignore_errors=True)


class RealProtonDemo(Demo):
    """
    C{scripts/demo --real-proton}: Gluon 1.1.0's own proton-server (installed by
    C{scripts/setup-proton}) over a private etcd with the v2 API on, the shim as a
    C{twistd} process speaking v2 with Gluon 1.x's model and the dummy backend, and
    one bind through proton's REST API, as Nova makes it; prints proton's REST answer.
    """

    def __init__(self, reactor):
        Demo.__init__(self, reactor)
        self.proton = None
        self.succeeded = False

    @inlineCallbacks
    def run(self):
        from shim.test import gluon

        self.step = "find proton-server"
        try:
            binary = gluon.find_proton_server()
        except Exception as e:
            raise DemoFailed(str(e))

        self.step = "start etcd"
        self.etcd = EtcdServer(extra_args=gluon.ETCD_V2_ARGS)
        self.etcd.start()
        endpoint = self.etcd.client_url
        say("1. started a private etcd %s at %s with the v2 API on"
            % (".".join(map(str, self.etcd.version)), endpoint))

        self.step = "start proton-server"
        self.proton = gluon.ProtonServer(endpoint, binary=binary)
        yield self.proton.start()
        say("2. started Gluon 1.1.0's proton-server at %s (log %s)"
            % (self.proton.url, self.proton.log_file))

        self.step = "start the shim"
        config = gluon.shim_config(
            self.directory, endpoint, os.path.join(self.directory, "unused"),
            hosts=HOST, controller="DemoShim", backend="dummy")
        say("3. starting the shim ([etcd] api = v2, [shim] api_model = "
            "net-l3vpn-v1.0): twistd -n shimserver --config %s" % (config,))
        self.shim = ShimProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        argv = twistd_command() + ["-n", "--pidfile=", "shimserver", "--config", config]
        self.transport = self.reactor.spawnProcess(
            self.shim, argv[0], argv, env=env, path=self.directory)
        yield within(self.reactor, self.shim.ready, READY_TIMEOUT,
                     "waiting for the shim to log 'shim ready'")

        api = gluon.ProtonAPI(self.proton.url)
        v2 = gluon.EtcdV2(endpoint)
        tenant = "d0000000-0000-4000-8000-000000000001"
        vpn = "d0000000-0000-4000-8000-000000000002"
        port = "d0000000-0000-4000-8000-000000000003"
        self.step = "create the objects through proton's REST API"
        yield api.create_vpnafconfig(RT, tenant)
        yield api.create_vpn(vpn, tenant, ipv4_family=RT, route_distinguishers=RT,
                             name="demo")
        yield api.create_port(port, tenant, name="demo-port")
        yield api.create_vpnbinding(port, vpn, tenant)
        yield self._poll(lambda: v2.get(gluon.row_key("VpnBinding", port)),
                         "waiting for proton to write the VpnBinding to etcd")
        say("4. POSTed to %s: vpnafconfigs %s, vpns %s, ports %s, vpnbindings %s"
            % (gluon.API_ROOT, RT, vpn, port, port))

        self.step = "bind the port through proton's REST API"
        say("5. PUT %s/ports/%s {device_owner: compute:nova, host_id: %s, ...}; "
            "proton waits up to 8 s for a bind result" % (gluon.API_ROOT, port, HOST))
        started = self.reactor.seconds()
        answer = yield api.bind(port, HOST, "d0000000-0000-4000-8000-0000000000f1")
        elapsed = self.reactor.seconds() - started
        say("6. proton's REST answer after %.0f ms: %s" % (
            elapsed * 1000.0, json.dumps({k: answer.get(k) for k in (
                "id", "host_id", "device_id", "vif_type", "vif_details")},
                sort_keys=True)))
        if not answer.get("vif_type"):
            raise DemoFailed("proton answered the bind with no vif_type")

        self.step = "stop the shim"
        yield self.stop_shim()
        say("7. stopped the shim")
        self.succeeded = True

    @inlineCallbacks
    def cleanup(self):
        if self.proton is not None:
            if not self.succeeded:
                say("proton's log (%s), last lines:\n%s" % (
                    self.proton.log_file, self.proton.log_tail(10)))
            self.proton.cleanup()
            say("stopped proton-server")
        yield Demo.cleanup(self)


@inlineCallbacks
def _main(reactor, real_proton=False):
    demo = RealProtonDemo(reactor) if real_proton else Demo(reactor)
    failed = None
    try:
        yield demo.run()
    except Exception as e:
        failed = "demo FAILED at step '%s': %s" % (demo.step, e)
        say(failed)
    try:
        yield demo.cleanup()
    except Exception as e:
        say("demo FAILED while cleaning up: %s" % (e,))
        failed = True
    if failed:
        raise SystemExit(1)
    say("done: proton's bind request was answered by the shim, and everything was "
        "cleaned up")
    raise SystemExit(0)


def main(argv=None):
    from twisted.internet import task

    args = sys.argv[1:] if argv is None else argv
    unknown = [a for a in args if a != "--real-proton"]
    if unknown:
        sys.stderr.write("usage: scripts/demo [--real-proton] (unknown: %s)\n"
                         % (" ".join(unknown),))
        raise SystemExit(2)
    task.react(_main, ["--real-proton" in args])


if __name__ == "__main__":
    main()
