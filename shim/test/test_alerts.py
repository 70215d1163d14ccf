"""
The alert rules of C{contrib/prometheus/alerts.yml}, checked and unit-tested by Debian's
C{promtool} (installed by C{scripts/setup-prometheus}; these tests skip, saying so, when
it is missing).
"""

import os
import re
import shutil

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

#: The directory holding alerts.yml and alerts_test.yml.
RULES_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "contrib", "prometheus",
)


def promtool():
    """
    The path of C{promtool}, or skip the test with the reason.
    """
    path = shutil.which("promtool")
    if path is None:
        raise SkipTest(
            "promtool not found on PATH: scripts/setup-prometheus installs Debian's "
            "prometheus package, which brings it"
        )
    return path


class PromtoolTests(TestCase):
    """
    C{promtool check rules} and C{promtool test rules} pass.
    """

    timeout = 120

    def run_promtool(self, *args):
        """
        Run promtool in L{RULES_DIR}; fail the test with its output unless it exits 0.
        """
        tool = promtool()
        d = getProcessOutputAndValue(
            tool, args, env=dict(os.environ), path=RULES_DIR, reactor=reactor
        )

        def check(result):
            out, err, code = result
            text = (out + err).decode("utf-8", "replace")
            self.assertEqual(code, 0, "promtool %s failed:\n%s" % (" ".join(args), text))
            return text

        return d.addCallback(check)

    def test_check_rules(self):
        """
        alerts.yml is valid: every expression parses and every template renders.
        """
        d = self.run_promtool("check", "rules", "alerts.yml")
        d.addCallback(lambda text: self.assertIn("SUCCESS", text))
        return d

    def test_unit_tests(self):
        """
        Every alert fires on the series where it should and stays quiet on the others
        (alerts_test.yml).
        """
        d = self.run_promtool("test", "rules", "alerts_test.yml")
        d.addCallback(lambda text: self.assertIn("SUCCESS", text))
        return d

    def test_every_alert_is_tested(self):
        """
        alerts_test.yml has a test of every alert of alerts.yml, both firing and
        quiet, and docs/operations.md a runbook entry for it.
        """
        with open(os.path.join(RULES_DIR, "alerts.yml")) as f:
            alerts = set(re.findall(r"^\s*- alert: (\w+)\s*$", f.read(), re.M))
        with open(os.path.join(RULES_DIR, "alerts_test.yml")) as f:
            cases = re.findall(
                r"^\s*alertname: (\w+)\s*\n\s*exp_alerts:(.*)$", f.read(), re.M
            )
        self.assertTrue(alerts)
        firing = {name for name, rest in cases if rest.strip() != "[]"}
        quiet = {name for name, rest in cases if rest.strip() == "[]"}
        self.assertEqual(alerts - firing, set(), "alerts never tested firing")
        self.assertEqual(alerts - quiet, set(), "alerts never tested quiet")
        docs = os.path.join(os.path.dirname(os.path.dirname(RULES_DIR)), "docs",
                            "operations.md")
        with open(docs) as f:
            runbook = f.read()
        for alert in sorted(alerts):
            self.assertIn("### %s" % (alert,), runbook, "no runbook entry for " + alert)
