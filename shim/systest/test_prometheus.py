"""
A real Prometheus server scrapes a real shim following a real etcd: every metric named by
the alert rules (C{contrib/prometheus/alerts.yml}) and the dashboard
(C{contrib/grafana/shim.json}) exists, every rule evaluates without error, and every
dashboard expression evaluates, with Grafana's variables substituted first.

Needs C{prometheus} on the PATH (C{scripts/setup-prometheus} installs Debian's package);
skips, saying so, without it.  Runs once per test run.
"""

import json
import os
import re
import shutil

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from shim import web
from shim.systest import once_per_run
from shim.test.etcdserver import free_port, start_etcd
from shim.test.support import ShimRunner, proton_side, sleep, wait_for

#: The repository's root, holding contrib/.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALERTS = os.path.join(_ROOT, "contrib", "prometheus", "alerts.yml")
DASHBOARD = os.path.join(_ROOT, "contrib", "grafana", "shim.json")

#: What Grafana's variables become before an expression is sent to Prometheus.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "15000",
    "instance": ".*",
    "controller": ".*",
}

#: PromQL words that are not metric names.
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan", "atan2",
}


def substitute(expr):
    """
    C{expr} with Grafana's C{$name}, C{${name}} and C{[[name]]} variables replaced by
    L{GRAFANA_VARIABLES}.

    @raise KeyError: a variable this test does not know.
    """
    def value(match):
        return GRAFANA_VARIABLES[match.group(1) or match.group(2) or match.group(3)]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def metric_names(expr):
    """
    The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in matchers and in C{by}, C{on} ... lists) or numbers.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )
    expr = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?([smhdwy]|ms)?\b", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        if word.lower() in _KEYWORDS or expr[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def dashboard_queries(path=DASHBOARD):
    """
    The dashboard's PromQL: C{[(where, expression)]} for every panel target, and the
    selector inside every templating variable's C{label_values(...)}.
    """
    with open(path) as f:
        dashboard = json.load(f)
    queries = []
    panels = list(dashboard.get("panels", ()))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", ()))
        for target in panel.get("targets", ()):
            if target.get("expr"):
                queries.append(("panel %r, target %s" % (panel["title"],
                                                        target.get("refId")),
                                target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", ()):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") != "query" or not query:
            continue
        match = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", query)
        if match:
            query = match.group(1)
        queries.append(("variable %r" % (variable["name"],), query))
    return queries


class MetricNamesTests(TestCase):
    """
    L{metric_names} and L{substitute}, which the live test relies on.
    """

    def test_names(self):
        self.assertEqual(
            metric_names('histogram_quantile(0.99, sum by (instance, le) '
                         '(rate(shim_bind_seconds_bucket{job="a"}[5m]))) > 1'),
            {"shim_bind_seconds_bucket"})
        self.assertEqual(
            metric_names('(shim_leader == 1) * on (instance, job) group_left '
                         '(controller_name, group) shim_info or absent(shim_info)'),
            {"shim_leader", "shim_info"})
        self.assertEqual(
            metric_names('up == 0 and on (instance, job) count_over_time('
                         'shim_ready[1h]) > 0 offset 5m'),
            {"up", "shim_ready"})
        self.assertEqual(metric_names('sum(rate(x_total[1m])) by (a) / 1e3'),
                         {"x_total"})

    def test_substitute(self):
        self.assertEqual(
            substitute('rate(x{instance=~"$instance"}[$__rate_interval]) '
                       '[${__interval}] [[__range]]'),
            'rate(x{instance=~".*"}[1m]) [15s] 1h')
        self.assertRaises(KeyError, substitute, "$unknown")

    def test_dashboard_queries(self):
        """
        The dashboard has the panels the issue asks for, each with a query.
        """
        where = " ".join(w for w, _ in dashboard_queries())
        for title in ("Binds per second", "Bind round trip", "Backend calls by outcome",
                      "Ports per state", "Revision applied", "Role"):
            self.assertIn("panel %r" % (title,), where)


class _PrometheusProcess(ProcessProtocol):
    """
    A Prometheus server run by a test; its output is kept for failure messages.
    """

    def __init__(self):
        self.output = []
        self.ended = Deferred()

    def outReceived(self, data):
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    def tail(self, lines=30):
        return "\n".join(b"".join(self.output).decode("utf-8", "replace")
                         .splitlines()[-lines:])


class PrometheusTests(TestCase):
    """
    A shim, its operations endpoint, a bound port, and a Prometheus scraping it every
    second with the shim's alert rules loaded.
    """

    timeout = 240

    @inlineCallbacks
    def setUp(self):
        once_per_run()
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise SkipTest(
                "prometheus not found on PATH: scripts/setup-prometheus installs "
                "Debian's prometheus package, which brings it"
            )
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.etcd = start_etcd(self)
        self.client, self.proton = proton_side(self, self.etcd)
        self.shim = yield ShimRunner(self, [self.etcd.client_url]).start(
            extra="[election]\nenabled = false\n")
        port = yield web.listen(self.shim, ("127.0.0.1", 0), reactor)
        self.addCleanup(port.stopListening)
        self.target = "127.0.0.1:%d" % (port.getHost().port,)
        yield self.proton.create_route_target("100:1")
        yield self.proton.create_vpn("vpn-1", ipv4_family=["100:1"])
        yield self.proton.create_port("p1")
        yield self.proton.create_vpn_port("p1", "vpn-1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertTrue(outcome.result, "the bind was not answered")
        yield self.start_prometheus()

    def start_prometheus(self):
        """
        Start Prometheus on a free loopback port, with a configuration and a data
        directory of the test's own; stop it when the test ends.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "data"))
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n"
                "  scrape_interval: 1s\n"
                "  evaluation_interval: 1s\n"
                "rule_files:\n"
                "  - %s\n"
                "scrape_configs:\n"
                "  - job_name: shim\n"
                "    static_configs:\n"
                "      - targets: [\"%s\"]\n" % (json.dumps(ALERTS), self.target)
            )
        self.web_port = free_port()
        self.api = "http://127.0.0.1:%d" % (self.web_port,)
        self.process = _PrometheusProcess()
        reactor.spawnProcess(
            self.process, self.binary,
            [self.binary,
             "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(directory, "data"),
             "--web.listen-address=127.0.0.1:%d" % (self.web_port,),
             "--log.level=warn"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            path=directory,
        )
        self.addCleanup(self.stop_prometheus)
        return wait_for(self.prometheus_ready, timeout=60,
                        what="Prometheus to start on %s" % (self.api,))

    @inlineCallbacks
    def stop_prometheus(self):
        if self.process.ended.called:
            return
        self.process.transport.signalProcess("TERM")
        stopped = yield wait_for(lambda: self.process.ended.called, timeout=30,
                                 what="Prometheus to stop").addErrback(lambda _: False)
        if not stopped and not self.process.ended.called:
            self.process.transport.signalProcess("KILL")
            yield self.process.ended

    @inlineCallbacks
    def prometheus_ready(self):
        if self.process.ended.called:
            self.fail("Prometheus exited:\n" + self.process.tail())
        try:
            response = yield self.http.get(self.api + "/-/ready", timeout=2)
            yield response.content()
        except Exception:
            return False
        return response.code == 200

    @inlineCallbacks
    def api_get(self, path, **params):
        """
        GET one of Prometheus's API paths: its C{(status, data or error)}.
        """
        response = yield self.http.get(self.api + path, params=params, timeout=10)
        answer = yield response.json()
        if answer.get("status") == "success":
            return "success", answer["data"]
        return answer.get("status"), "%s: %s" % (answer.get("errorType"),
                                                 answer.get("error"))

    @inlineCallbacks
    def query(self, expr):
        status, data = yield self.api_get("/api/v1/query", query=expr)
        self.assertEqual(status, "success", "%s: %s" % (expr, data))
        return data["result"]

    @inlineCallbacks
    def binds_scraped(self, count):
        """
        Whether Prometheus's last scrape of the shim saw C{count} binds.
        """
        found = yield self.query('shim_bind_seconds_count{job="shim"} >= %d' % (count,))
        return bool(found)

    @inlineCallbacks
    def rules_evaluated(self):
        """
        The alert rules as loaded, once every one has been evaluated.
        """
        status, data = yield self.api_get("/api/v1/rules")
        self.assertEqual(status, "success", data)
        rules = [rule for group in data["groups"] for rule in group["rules"]]
        if not rules or any(rule.get("health") == "unknown" for rule in rules):
            return None
        return rules

    @inlineCallbacks
    def test_metrics_rules_and_dashboard(self):
        """
        After a bind, Prometheus has every metric the rules and the dashboard name;
        every rule evaluates without error; every dashboard query evaluates, and the
        main panels have data.
        """
        yield wait_for(lambda: self.binds_scraped(1), timeout=60,
                       what="Prometheus to scrape the shim after the first bind")
        # A second bind while Prometheus watches, so that rates are above zero.
        yield self.proton.create_port("p2")
        yield self.proton.create_vpn_port("p2", "vpn-1")
        outcome = yield self.proton.bind("p2", "compute2", "vm2")
        self.assertTrue(outcome.result, "the second bind was not answered")
        yield wait_for(lambda: self.binds_scraped(2), timeout=60,
                       what="Prometheus to scrape the shim after the second bind")
        yield sleep(2.5)
        rules = yield wait_for(self.rules_evaluated, timeout=60,
                               what="Prometheus to evaluate every alert rule")
        with open(ALERTS) as f:
            alert_names = set(re.findall(r"^\s*- alert: (\w+)\s*$", f.read(), re.M))
        self.assertEqual({rule["name"] for rule in rules}, alert_names)
        for rule in rules:
            self.assertEqual((rule["health"], rule.get("lastError", "")), ("ok", ""),
                             rule["name"])

        status, existing = yield self.api_get("/api/v1/label/__name__/values")
        self.assertEqual(status, "success", existing)
        existing = set(existing)
        used = {}
        for rule in rules:
            for name in metric_names(rule["query"]):
                used.setdefault(name, []).append("alert " + rule["name"])
        for where, expr in dashboard_queries():
            for name in metric_names(substitute(expr)):
                used.setdefault(name, []).append(where)
        self.assertIn("shim_bind_seconds_bucket", used)
        self.assertIn("shim_leader", used)
        missing = {name: places for name, places in used.items()
                   if name not in existing}
        self.assertEqual(missing, {}, "metrics used but not exported")

        empty = []
        for where, expr in dashboard_queries():
            result = yield self.query(substitute(expr))
            if not result:
                empty.append(where)
        # The panel that only shows trouble (resyncs after the start's, watch
        # restarts, bad input) is empty on a healthy shim; the others have data.
        for where in empty:
            self.assertIn("'Resyncs, watch restarts, bad input'", where,
                          "no data for " + where)
        # Nothing is wrong with this shim: no alert fires.
        yield sleep(1.5)
        firing = yield self.query('ALERTS{alertstate="firing"}')
        self.assertEqual([a["metric"]["alertname"] for a in firing], [])
