"""
Process-heavy system tests: real proton-server, high availability with real shim
processes, a real Prometheus.  C{scripts/test} runs them after the unit and etcd
tests, in one trial process (serially), once per etcd version; those marked
L{once_per_run} only on the first.
"""

import os

from twisted.trial.unittest import SkipTest


def once_per_run():
    """
    Skip the calling test unless this is the first etcd version of the test run.
    """
    if os.environ.get("SHIM_FIRST_ETCD", "1") != "1":
        raise SkipTest("runs once per test run, with the first etcd version")
