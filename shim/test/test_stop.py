"""
Stopping the shim for real: C{twistd -n shimserver} run as a process against a real
etcd, stopped with SIGTERM or SIGINT.

What an operator relies on: the process exits with status 0, the log says the shim
stopped, and a bind that the backend is still working on when the signal comes is
finished and its result written to etcd before the process exits, so proton gets its
answer.

This module also holds L{SlowBackend}, the backend the twistd process is configured
with by import path (C{shim.test.test_stop:SlowBackend}) to have a bind in flight.
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from shim import keys
from shim.plugins.dummy import DummyBackend
from shim.test.etcdserver import refused_url, start_etcd
from shim.test.support import proton_side, read_result, write_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONTROLLER = "StopShim"

#: A liveness bound for the shim process to reach a line of its log or to exit: a
#: generous ceiling against hanging for ever, not a speed target.
PATIENCE = 60.0


class SlowBackend(DummyBackend):
    """
    The dummy backend, except that C{bind_port} answers after C{[backend] delay}
    seconds (default 1), and says in the log when it starts.
    """

    log = Logger()

    def __init__(self, options):
        DummyBackend.__init__(self, options)
        self.delay = float(self.options.get("delay", "1.0"))

    def bind_port(self, uuid, model, changes):
        self.log.info("slow bind_port {uuid} started", uuid=uuid)
        return deferLater(
            reactor, self.delay, DummyBackend.bind_port, self, uuid, model, changes
        )


def twistd_command():
    """
    The twistd of the interpreter running the tests: C{(executable, arguments before
    twistd's own)}.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(beside):
        return beside, []
    return sys.executable, ["-c", "from twisted.scripts.twistd import run; run()"]


class ShimProcess(ProcessProtocol):
    """
    A C{twistd -n shimserver} process: its output as it comes, and its end.

    @ivar ended: a Deferred firing with the exit code (C{None} when killed by a signal).
    """

    def __init__(self):
        self.output = []
        self.ended = Deferred()
        self.exit_code = None
        self.signal = None
        self.reason = None
        self.running = False
        self._waiters = []

    def text(self):
        return "".join(self.output)

    def connectionMade(self):
        self.running = True

    def outReceived(self, data):
        self._received(data)

    def errReceived(self, data):
        self._received(data)

    def _received(self, data):
        self.output.append(data.decode("utf-8", "replace"))
        text = self.text()
        for waiter in list(self._waiters):
            line, d, timer = waiter
            if line in text:
                self._waiters.remove(waiter)
                timer.cancel()
                d.callback(text)

    def wait_for(self, line, timeout=PATIENCE):
        """
        A Deferred firing once C{line} appears in the output; it fails, showing the
        output, when the process ends or C{timeout} seconds pass first.
        """
        if line in self.text():
            return succeed(self.text())
        d = Deferred()
        timer = reactor.callLater(timeout, self._give_up, line, d, "timed out")
        self._waiters.append((line, d, timer))
        return d

    def _give_up(self, line, d, why):
        self._waiters = [w for w in self._waiters if w[1] is not d]
        d.errback(AssertionError(
            "%s waiting for %r in the shim's output:\n%s" % (why, line, self.text())))

    def processEnded(self, reason):
        self.running = False
        self.reason = reason.value
        if reason.check(ProcessDone, ProcessTerminated):
            self.exit_code = reason.value.exitCode
            self.signal = reason.value.signal
        for line, d, timer in list(self._waiters):
            timer.cancel()
            self._give_up(line, d, "the process ended")
        self.ended.callback(self.exit_code)

    def finished(self, timeout=PATIENCE):
        """
        A Deferred firing with the exit code; it fails when the process is still
        running after C{timeout} seconds.
        """
        d = Deferred()
        timer = reactor.callLater(
            timeout, lambda: d.called or d.errback(AssertionError(
                "the shim did not exit within %ss:\n%s" % (timeout, self.text()))))

        def ended(code):
            if timer.active():
                timer.cancel()
            if not d.called:
                d.callback(code)
            return code

        self.ended.addCallback(ended)
        return d


class TwistdTestCase(TestCase):
    """
    Runs C{twistd -n shimserver} as a real process against a real etcd.
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self)
        self.client, self.proton = proton_side(self, self.etcd)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        yield self.client.status()

    def start_shim(self, backend="dummy", backend_options=None, arguments=(),
                   endpoints=None):
        """
        Start the shim process with a config file for this test's etcd (or
        C{endpoints}); return its L{ShimProcess}.  C{arguments} go to the shimserver
        plugin.  It is killed at the end of the test if it still runs.
        """
        extra = ""
        if backend_options:
            extra = "[backend]\n" + "".join(
                "%s = %s\n" % item for item in sorted(backend_options.items()))
        path = write_config(
            self.directory, endpoints or [self.etcd.client_url], controller=CONTROLLER,
            hosts="compute1", backend=backend, extra=extra,
        )
        executable, prefix = twistd_command()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        process = ShimProcess()
        transport = reactor.spawnProcess(
            process, executable,
            [executable] + prefix
            + ["-n", "--pidfile=", "shimserver", "--config", path] + list(arguments),
            env=env, path=REPO,
        )
        self.addCleanup(self._kill, process, transport)
        return process, transport

    def _kill(self, process, transport):
        if process.running:
            transport.signalProcess("KILL")
            return process.ended
        return None



class StopTests(TwistdTestCase):
    """
    C{twistd -n shimserver} against a real etcd, stopped by a signal.
    """

    def assert_stopped_cleanly(self, process, signal):
        """
        The process stopped in order after C{signal}: the shim logged that it stopped,
        twistd that it shut down, and the process exited with status 0 (not killed by
        the signal twistd would send itself again).
        """
        text = process.text()
        self.assertIn("shim stopped", text)
        self.assertIn("Server Shut Down.", text)
        self.assertNotIn("Traceback", text)
        self.assertEqual(
            (process.exit_code, process.signal), (0, None),
            "the shim ended with %s after SIG%s, not status 0:\n%s"
            % (process.reason, signal, text))

    @inlineCallbacks
    def make_port(self, uuid):
        yield self.proton.create_route_target("100:1")
        yield self.proton.create_vpn("vpn-1", ipv4_family="100:1")
        yield self.proton.create_port(uuid)
        yield self.proton.create_vpn_port(uuid, "vpn-1")

    @inlineCallbacks
    def stop_after_bind(self, signal):
        process, transport = self.start_shim()
        yield process.wait_for("shim ready")
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], CONTROLLER)
        transport.signalProcess(signal)
        yield process.finished()
        self.assert_stopped_cleanly(process, signal)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result["controller"], CONTROLLER)

    def test_sigterm(self):
        """
        SIGTERM stops a shim that has bound a port: exit status 0, "shim stopped" in
        the log, and its bind result stays in etcd.
        """
        return self.stop_after_bind("TERM")

    def test_sigint(self):
        """
        SIGINT (Ctrl-C) stops the shim the same way.
        """
        return self.stop_after_bind("INT")

    @inlineCallbacks
    def test_sigterm_during_bind(self):
        """
        SIGTERM while the backend's bind_port is still working: the shim waits for
        it, writes the bind result completely, and then exits with status 0; proton
        gets its answer.
        """
        process, transport = self.start_shim(
            backend="shim.test.test_stop:SlowBackend", backend_options={"delay": "1.0"})
        yield process.wait_for("shim ready")
        yield self.make_port("p1")
        bind = self.proton.bind("p1", "compute1", "vm1")
        yield process.wait_for("slow bind_port p1 started")
        transport.signalProcess("TERM")
        yield process.finished()
        self.assert_stopped_cleanly(process, "TERM")
        result = yield read_result(self.client, "p1")
        self.assertEqual(
            result,
            {"vif_type": "ovs", "controller": CONTROLLER,
             "vif_details": {"port_filter": False, "bridge_name": "br-gluon"},
             "host_id": "compute1", "device_id": "vm1"},
            process.text())
        outcome = yield bind
        self.assertEqual(outcome.result, result)
        port = yield self.proton.get_object(keys.PORT, "p1")
        self.assertEqual(port["vif_type"], "ovs")


class LogOptionTests(TwistdTestCase):
    """
    The log options of a real C{twistd -n shimserver}.
    """

    @inlineCallbacks
    def test_json_lines(self):
        """
        With C{--log-format json} every line of the output is one JSON object, the
        shim's messages among them.
        """
        process, transport = self.start_shim(arguments=["--log-format", "json"])
        yield process.wait_for("shim ready")
        transport.signalProcess("TERM")
        yield process.finished()
        lines = [line for line in process.text().splitlines() if line.strip()]
        events = [json.loads(line) for line in lines]
        self.assertTrue(all(isinstance(event, dict) for event in events))
        formats = [event.get("log_format", "") for event in events]
        self.assertTrue(any(f.startswith("shim ready") for f in formats), formats)

    @inlineCallbacks
    def test_log_level(self):
        """
        C{--log-level error} hides the warnings an unreachable etcd causes, which the
        default level shows.
        """
        nowhere = [refused_url(self)]
        shown, transport = self.start_shim(endpoints=nowhere)
        yield shown.wait_for("etcd unavailable")
        transport.signalProcess("TERM")
        yield shown.finished()
        hidden, transport = self.start_shim(
            endpoints=nowhere, arguments=["--log-level", "error"])
        # Long enough for several attempts (the first retry comes within 0.2 s).
        yield deferLater(reactor, 3.0, lambda: None)
        transport.signalProcess("TERM")
        yield hidden.finished()
        self.assertNotIn("etcd unavailable", hidden.text())
        self.assertNotIn("starting: hosts", hidden.text())
        self.assertIn("starting: hosts", shown.text())
