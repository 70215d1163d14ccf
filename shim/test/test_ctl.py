"""
C{shimctl} (L{shim.ctl}) run as a command against a real shim following a real etcd,
through the shim's operations endpoint.
"""

import io
import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import shim
from shim import ctl, web
from shim.test.etcdserver import refused_url, start_etcd
from shim.test.support import OperationsCase, ShimRunner, wait_for

#: The directory holding the C{shim} package being tested.
_SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(shim.__file__)))


@inlineCallbacks
def shimctl(*args):
    """
    Run C{python -m shim.ctl ARGS}: C{(exit status, standard output, standard
    error)}.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = _SOURCE + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    out, err, code = yield getProcessOutputAndValue(
        sys.executable, ("-m", "shim.ctl") + args, env=env, reactor=reactor
    )
    return code, out.decode("utf-8"), err.decode("utf-8")


class ShimctlTests(OperationsCase):
    """
    shimctl and a shim with the default configuration.
    """

    @inlineCallbacks
    def test_status_ready(self):
        """
        A ready shim: exit status 0, and one screen with the role, readiness,
        revision, objects, ports, last resync, work queue and backend calls.
        """
        yield self.proton.create_route_target("100:1")
        yield self.proton.create_vpn("vpn-1", ipv4_family=["100:1"])
        yield self.proton.create_port("p1")
        yield self.proton.create_vpn_port("p1", "vpn-1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertTrue(outcome.result)
        code, out, err = yield shimctl("status", "--url", self.url)
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn("shim SimServer (version %s) at %s" % (shim.__version__, self.url),
                      out)
        self.assertRegex(out, r"role +single")
        self.assertRegex(out, r"readiness +ready")
        self.assertRegex(out, r"revision +%d" % (self.shim.revision,))
        self.assertRegex(out, r"objects +ProtonBasePort 1, VPNPort 1, VpnAfConfig 1, "
                              r"VpnInstance 1")
        self.assertRegex(out, r"ports +Bound 1, InUse 0, Unbound 0")
        self.assertRegex(out, r"last resync +")
        self.assertRegex(out, r"work queue +\d+ objects")
        self.assertRegex(out, r"backend +\d+ calls, 0 errors or timeouts")
        self.assertRegex(out, r"bind_port +ok 1")

    @inlineCallbacks
    def test_status_json(self):
        """
        C{--json} prints /readyz and /model as one JSON object.
        """
        code, out, _ = yield shimctl("status", "--json", "--url", self.url + "/")
        self.assertEqual(code, 0)
        status = json.loads(out)
        self.assertTrue(status["ready"])
        self.assertEqual(status["model"]["revision"], self.shim.revision)
        self.assertEqual(status["model"]["role"], "single")

    @inlineCallbacks
    def test_status_not_ready(self):
        """
        A shim that lost etcd: exit status 1, and the reason.
        """
        self.etcd.stop()
        yield wait_for(lambda: not self.shim.ready, what="the shim to lose etcd")
        code, out, _ = yield shimctl("status", "--url", self.url)
        self.assertEqual(code, 1, out)
        self.assertRegex(
            out, r"readiness +NOT READY: (watch ended|etcd unavailable|synchronising)")

    @inlineCallbacks
    def test_status_unreachable(self):
        """
        Nothing listening: exit status 2, naming the URL.
        """
        url = refused_url(self)
        code, out, err = yield shimctl("status", "--url", url, "--timeout", "2")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("cannot reach the shim: %s/readyz" % (url,), err)

    @inlineCallbacks
    def test_actions_off(self):
        """
        Without C{[metrics] admin = true}: resync and step-down exit 1, saying how to
        allow them; an unreachable shim gives 2.
        """
        for action in ("resync", "step-down"):
            code, out, err = yield shimctl(action, "--url", self.url)
            self.assertEqual((code, out), (1, ""))
            self.assertIn("[metrics] admin = true", err)
        code, _, _ = yield shimctl("resync", "--url", refused_url(self))
        self.assertEqual(code, 2)


class ShimctlAdminTests(OperationsCase):
    """
    shimctl and a shim with C{[metrics] admin = true}.
    """

    extra = "[election]\nenabled = false\n[metrics]\nadmin = true\n"

    @inlineCallbacks
    def test_actions(self):
        """
        With admin on, resync is done (exit 0, counted with cause admin), and
        step-down without election exits 1, saying that election is off.
        """
        code, out, err = yield shimctl("resync", "--url", self.url)
        self.assertEqual((code, out, err), (0, "resync requested\n", ""))
        registry = self.shim.metrics.registry
        yield wait_for(
            lambda: registry.get_sample_value(
                "shim_resyncs_total", {"cause": "admin"}) == 1,
            what="the admin resync to be counted")
        code, out, err = yield shimctl("step-down", "--url", self.url)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("election is off", err)


class FormatTests(TestCase):
    """
    L{ctl.format_status} for answers without a full /model.
    """

    def test_no_model(self):
        """
        An older shim without /model: role and readiness from /readyz only.
        """
        text = ctl.format_status("http://h:1", 503, "not ready: synchronising (start)\n",
                                 None)
        self.assertIn("readiness     NOT READY: synchronising (start)", text)
        self.assertIn("no /model", text)

    def test_failing_callbacks(self):
        model = {
            "role": "leader", "ready": True, "revision": 9, "objects": {},
            "ports": {"Unbound": 2, "Bound": 1, "InUse": 0},
            "last_resync": {"time": 0, "ago": 7200.0, "cause": "takeover"},
            "queue_depth": 3,
            "backend": {"calls": {"bind_port": {"ok": 4, "timeout": 2}},
                        "total": 6, "errors": 2},
        }
        text = ctl.format_status("http://h:1", 200, "ready\nrole: leader\n", model)
        self.assertIn("role          leader", text)
        self.assertIn("ports         Bound 1, InUse 0, Unbound 2", text)
        self.assertIn("last resync   takeover, 2.0 h ago", text)
        self.assertIn("work queue    3 objects", text)
        self.assertIn("backend       6 calls, 2 errors or timeouts", text)
        self.assertIn("failing       bind_port 2", text)

    def test_usage(self):
        """
        A command is required; --url defaults to the loopback port of the README.
        """
        args = ctl.parser().parse_args(["status"])
        self.assertEqual(args.url, ctl.DEFAULT_URL)
        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, ctl.parser().parse_args, [])
        self.assertIn("required: COMMAND", sys.stderr.getvalue())


class ShimctlElectionTests(TestCase):
    """
    shimctl and two shims of one group, electing the acting one.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.etcd = start_etcd(self)
        runner = ShimRunner(self, [self.etcd.client_url])
        extra = "[election]\nenabled = true\n[metrics]\nadmin = true\n"
        self.shims = []
        for _ in range(2):
            service = yield runner.start(extra=extra, wait=False)
            port = yield web.listen(service, ("127.0.0.1", 0), reactor)
            self.addCleanup(port.stopListening)
            service.url = "http://127.0.0.1:%d" % (port.getHost().port,)
            self.shims.append(service)
        yield wait_for(lambda: sorted(s.role for s in self.shims) == ["leader", "standby"],
                       what="one shim to act and the other to stand by")

    def by_role(self, role):
        return next(s for s in self.shims if s.role == role)

    @inlineCallbacks
    def test_status_and_step_down(self):
        """
        status reports each shim's role; step-down on the standby is refused; on the
        acting shim it hands the role over, and the standby takes it.
        """
        leader, standby = self.by_role("leader"), self.by_role("standby")
        code, out, _ = yield shimctl("status", "--url", leader.url)
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"role +leader")
        yield wait_for(lambda: standby.ready, what="the standby to be ready")
        code, out, _ = yield shimctl("status", "--url", standby.url)
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"role +standby")

        code, out, err = yield shimctl("step-down", "--url", standby.url)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("standby, not the acting shim", err)

        code, out, err = yield shimctl("step-down", "--url", leader.url)
        self.assertEqual((code, out, err), (0, "stepped down: now standby\n", ""))
        yield wait_for(lambda: standby.role == "leader",
                       what="the standby to take over")
        code, out, _ = yield shimctl("status", "--url", standby.url)
        self.assertRegex(out, r"role +leader")
        # The shim that stepped down campaigns again after a while; let it, so that
        # its timer does not outlive the test.
        yield wait_for(lambda: not [
            call for call in reactor.getDelayedCalls()
            if getattr(call.func, "__self__", None) is leader.election
            and getattr(call.func, "__name__", None) == "start"
        ], what="the shim that stepped down to campaign again")
