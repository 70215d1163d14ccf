"""
Tests for the C{twistd shimserver} entry point (L{shim.tap}) and its log observer
(L{shim.logs}).

The start-up failures are checked on a real C{twistd} process: what matters is what an
operator sees, one line and a non-zero exit status, and that depends on how twistd
treats the L{SystemExit} that L{shim.tap.makeService} raises.
"""

import io
import json
import os
import sys

import treq

from twisted.application.service import Application, IServiceCollection
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.trial.unittest import TestCase

from shim import tap
from shim.logs import make_observer
from shim.plugins.dummy import DummyBackend
from shim.test.support import (  # noqa: F401 (twistd_command: test_security's)
    REPO, repo_env, run_twistd, twistd_command)

GOOD = (
    "[shim]\n"
    "controller_name = SimServer\n"
    "host_list = compute1, compute2\n"
    "etcd_endpoints = http://127.0.0.1:2379\n"
    "backend = dummy\n"
)


class TwistdTests(TestCase):
    """
    C{twistd shimserver} run as a process.
    """

    def write(self, text):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "shim.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertStopsWith(self, path, expected):
        """
        twistd started with the config file at C{path} exits non-zero, printing the
        one line C{shimserver: <path>: <expected>} and no traceback.
        """
        d = run_twistd("-n", "--pidfile=", "shimserver", "--config", path)

        def check(result):
            out, err, code = result
            output = (out + err).decode("utf-8", "replace")
            self.assertNotEqual(code, 0, output)
            self.assertNotIn("Traceback", output)
            lines = [line for line in output.splitlines() if line.strip()]
            self.assertEqual(lines, ["shimserver: %s: %s" % (path, expected)])
            self.assertEqual(out, b"")

        return d.addCallback(check)

    def assertHostListEmpty(self, d, path):
        """
        The process run by C{d} (firing with C{(out, err, code)}) exits non-zero,
        its standard error the one line saying that C{path}'s host_list is empty.
        """
        def check(result):
            out, err, code = result
            self.assertNotEqual(code, 0)
            self.assertEqual(
                err.decode().strip(),
                "shimserver: %s: [shim] host_list: empty; list at least one host or *"
                % (path,))

        return d.addCallback(check)

    def test_missing_file(self):
        path = os.path.join(os.path.abspath(self.mktemp()), "nowhere.conf")
        return self.assertStopsWith(
            path, "cannot read the configuration file: No such file or directory")

    def test_unknown_backend(self):
        path = self.write(GOOD.replace("backend = dummy", "backend = nosuch"))
        d = run_twistd("-n", "--pidfile=", "shimserver", "--config", path)

        def check(result):
            out, err, code = result
            output = (out + err).decode()
            self.assertNotEqual(code, 0)
            self.assertNotIn("Traceback", output)
            lines = output.splitlines()
            self.assertEqual(len(lines), 1, output)
            prefix = "shimserver: %s: [shim] backend: 'nosuch': no such backend " \
                     "plugin; available: " % (path,)
            self.assertTrue(lines[0].startswith(prefix), lines[0])
            self.assertIn("dummy", lines[0])

        return d.addCallback(check)

    def test_bad_endpoint(self):
        path = self.write(GOOD.replace("http://127.0.0.1:2379", "etcd:2379"))
        return self.assertStopsWith(
            path, "[shim] etcd_endpoints: bad URL 'etcd:2379': the scheme must be http "
                  "or https, as in http://127.0.0.1:2379")

    def test_empty_host_list(self):
        path = self.write(GOOD.replace("compute1, compute2", ""))
        return self.assertStopsWith(
            path, "[shim] host_list: empty; list at least one host or *")

    def test_config_file_option(self):
        """
        C{--config-file} (the original's spelling) works like C{--config}.
        """
        path = self.write(GOOD.replace("compute1, compute2", " , "))
        return self.assertHostListEmpty(
            run_twistd("-n", "--pidfile=", "shimserver", "--config-file", path), path)

    def test_seed_command(self):
        """
        The seed's own command, C{shimserver --config-file=shim.conf} (the console
        script L{shim.server.main}), runs the same service through twistd: a bad
        file stops it with the same one line.
        """
        path = self.write(GOOD.replace("compute1, compute2", " , "))
        return self.assertHostListEmpty(getProcessOutputAndValue(
            sys.executable, ["-m", "shim.server", "--config-file=" + path],
            env=repo_env(), path=REPO), path)

    def test_help(self):
        d = run_twistd("shimserver", "--help")

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err)
            text = out.decode()
            for option in ("--config=", "-c", "--config-file=", "--log-level=",
                           "--log-format="):
                self.assertIn(option, text)

        return d.addCallback(check)

    def test_listed(self):
        """
        twistd lists the plugin among its commands.
        """
        d = run_twistd("--help")

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err)
            self.assertIn("shimserver", out.decode())
            self.assertIn("Gluon net-l3vpn shim layer server", out.decode())

        return d.addCallback(check)


class OptionsTests(TestCase):
    """
    The command line of C{twistd shimserver}.
    """

    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_default(self):
        options = self.parse()
        self.assertEqual(options["config"], "shim.conf")
        self.assertIsNone(options["log-level"])
        self.assertIsNone(options["log-format"])

    def test_spellings(self):
        self.assertEqual(self.parse("-c", "a.conf")["config"], "a.conf")
        self.assertEqual(self.parse("--config=a.conf")["config"], "a.conf")
        self.assertEqual(self.parse("--config-file=b.conf")["config"], "b.conf")
        self.assertEqual(
            self.parse("--config=a.conf", "--config-file=a.conf")["config"], "a.conf")

    def test_disagreeing(self):
        error = self.assertRaises(usage.UsageError, self.parse, "--config=a",
                                  "--config-file=b")
        self.assertIn("disagree", str(error))

    def test_log_overrides(self):
        options = self.parse("--log-level=WARN", "--log-format=json")
        self.assertEqual((options["log-level"], options["log-format"]), ("warn", "json"))

    def test_bad_log_overrides(self):
        error = self.assertRaises(usage.UsageError, self.parse, "--log-level=loud")
        self.assertIn("debug, info, warn, error, critical", str(error))
        error = self.assertRaises(usage.UsageError, self.parse, "--log-format=xml")
        self.assertIn("text, json", str(error))


class MakeServiceTests(TestCase):
    """
    L{tap.makeService} with a good configuration builds, without starting anything,
    the shim's service, and hands twistd's application its log observer.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.log_path = os.path.join(self.directory, "shim.log")

    def make(self, extra="", *args):
        path = os.path.join(self.directory, "shim.conf")
        with open(path, "w") as f:
            f.write(GOOD + "log_file = %s\n" % (self.log_path,) + extra)
        options = tap.Options()
        options.parseOptions(["--config", path] + list(args))
        top = tap.makeService(options)
        self.addCleanup(self.close_log, top)
        return top

    def close_log(self, top):
        top.log_stream.close()

    def test_service(self):
        top = self.make()
        self.assertIsInstance(top, tap.ShimServerService)
        shim = top.getServiceNamed("shim")
        self.assertIsInstance(shim.config.controller_name, str)
        self.assertEqual(shim.config.controller_name, "SimServer")
        self.assertFalse(shim.running)
        self.assertEqual([s.name for s in top], ["shim"])

    @inlineCallbacks
    def test_metrics_service(self):
        """
        With C{[metrics] listen}, a second service serves the shim's metrics there.
        Only it is started here (on a free port), not the shim.
        """
        top = self.make("[metrics]\nlisten = 127.0.0.1:0\n")
        self.assertEqual(sorted(s.name for s in top), ["metrics", "shim"])
        metrics = top.getServiceNamed("metrics")
        metrics.startService()
        self.addCleanup(metrics.stopService)
        listening = Deferred()

        def got(port):
            listening.callback(port)
            return port  # stopService needs it

        metrics._waitingForPort.addCallback(got)
        port = yield listening
        response = yield treq.get(
            "http://127.0.0.1:%d/metrics" % (port.getHost().port,), persistent=False)
        body = yield response.text()
        self.assertEqual(response.code, 200)
        self.assertIn("shim_backend_calls", body)
        self.assertFalse(top.getServiceNamed("shim").running)

    def test_overrides(self):
        top = self.make("log_level = info\n", "--log-level", "error")
        self.assertEqual(top.getServiceNamed("shim").config.log_level, "error")

    def test_observer_on_application(self):
        """
        Joining twistd's application sets the ILogObserver component that twistd's
        AppLogger starts logging to; it writes at the configured level and format to
        the configured file.
        """
        top = self.make("log_level = warn\nlog_format = json\n")
        application = Application("shimserver")
        top.setServiceParent(application)
        self.assertIn(top, list(IServiceCollection(application)))
        observer = application.getComponent(ILogObserver)
        self.assertIs(observer, top.observer)

        log = Logger(namespace="shim.test", observer=observer)
        log.info("not shown {n}", n=1)
        log.warn("shown {n}", n=2)
        with open(self.log_path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1, lines)
        event = json.loads(lines[0])
        self.assertEqual(event["log_format"], "shown {n}")
        self.assertEqual(event["n"], 2)

    def test_plain_parent(self):
        """
        Under a parent that is not an application (a test's MultiService), the
        service joins without touching the parent's components.
        """
        from twisted.application.service import MultiService

        top = self.make()
        parent = MultiService()
        top.setServiceParent(parent)
        self.assertIs(top.parent, parent)

    def test_config_error_exits(self):
        options = tap.Options()
        options.parseOptions(["--config", os.path.join(self.directory, "none.conf")])
        error = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertEqual(
            str(error.code),
            "shimserver: %s: cannot read the configuration file: No such file or "
            "directory" % (os.path.join(self.directory, "none.conf"),))

    def test_unwritable_log_file(self):
        path = os.path.join(self.directory, "shim.conf")
        bad_log = os.path.join(self.directory, "no-dir", "shim.log")
        with open(path, "w") as f:
            f.write(GOOD + "log_file = %s\n" % (bad_log,))
        options = tap.Options()
        options.parseOptions(["--config", path])
        error = self.assertRaises(SystemExit, tap.makeService, options)
        message = str(error.code)
        self.assertTrue(message.startswith(
            "shimserver: %s: [shim] log_file: %s: cannot open it" % (path, bad_log)),
            message)


class ObserverTests(TestCase):
    """
    L{make_observer}: text or JSON lines, filtered by level.
    """

    def emit(self, level, fmt):
        stream = io.StringIO()
        log = Logger(namespace="shim.test", observer=make_observer(level, fmt, stream))
        log.debug("debug {x}", x=1)
        log.info("info {x}", x=2)
        log.warn("warn {x}", x=3)
        log.error("error {x}", x=4)
        log.critical("critical {x}", x=5)
        return stream.getvalue().splitlines()

    def test_text(self):
        lines = self.emit("info", "text")
        self.assertEqual(len(lines), 4)
        self.assertIn("[shim.test#info] info 2", lines[0])
        self.assertIn("[shim.test#critical] critical 5", lines[3])

    def test_levels(self):
        self.assertEqual(len(self.emit("debug", "text")), 5)
        self.assertEqual(len(self.emit("warn", "text")), 3)
        self.assertEqual(len(self.emit("critical", "text")), 1)

    def test_json(self):
        lines = self.emit("error", "json")
        self.assertEqual(len(lines), 2)
        events = [json.loads(line) for line in lines]
        self.assertEqual([e["x"] for e in events], [4, 5])
        self.assertEqual(events[0]["log_level"]["name"], "error")
        self.assertEqual(events[0]["log_namespace"], "shim.test")

    def test_bad_arguments(self):
        self.assertRaises(ValueError, make_observer, "loud", "text", io.StringIO())
        self.assertRaises(ValueError, make_observer, "info", "xml", io.StringIO())

    def test_dummy_lines_readable(self):
        """
        A dummy backend's line comes out in text as one line.
        """
        stream = io.StringIO()
        observer = make_observer("info", "text", stream)
        backend = DummyBackend({})
        backend.log = Logger(namespace="shim.dummy", observer=observer)
        backend.delete_service_binding(None, {"id": "p1", "vpn_instance": "v1"})
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertIn("delete_service_binding p1: was in VPN instance 'v1'", lines[0])
