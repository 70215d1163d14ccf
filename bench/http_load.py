"""
The http backend under load: ten thousand binds at once, next to the same requests
sent with treq directly.

    python bench/http_load.py [--binds 10000] [--files 1024] [--rounds 3]
                              [--max-in-flight 64] [--unbounded]

A vendor web service (twisted.web, answering every POST with a bind result) runs in a
child process of its own (this same file, C{serve}), so that server and client each
have a core.  This process lowers its open-file limit to C{--files}, then, C{--rounds}
times, alternately:

  - B{baseline}: the same C{--binds} JSON requests POSTed with treq, at most
    C{--max-in-flight} at once (a DeferredSemaphore) over a connection pool of that
    size, each answer read and decoded;
  - B{backend alone}: C{--binds} calls of C{bind_port} made at once to an
    L{HttpBackend} with C{max_in_flight = --max-in-flight};
  - B{backend via caller}: the same, made as the shim makes them, through
    L{shim.calls.BackendCaller} (whose time limit is C{--caller-timeout}).

Each run prints its time (and this process's CPU time, steadier on a busy machine),
successes, failures (by outcome), how many answered within
the shim's default C{bind_timeout} (2.5 s from the call), and latency percentiles
measured from the moment the first call was made.  The summary gives the medians and
their ratios to the baseline's.  C{--unbounded} adds one run with
C{max_in_flight} as large as the burst, which is what the backend did before the bound:
with 1024 files it fails with "Too many open files".
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import treq  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import (  # noqa: E402
    Deferred, DeferredList, DeferredSemaphore, inlineCallbacks)
from twisted.internet.protocol import ProcessProtocol  # noqa: E402
from twisted.internet.defer import TimeoutError  # noqa: E402
from twisted.logger import LogLevel, globalLogBeginner  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

from shim import keys  # noqa: E402
from shim.calls import BackendCaller  # noqa: E402
from shim.metrics import Metrics  # noqa: E402
from shim.model import Changes, Model, decode  # noqa: E402
from shim.plugins.http import HttpBackend  # noqa: E402
from shim.proton import encode_object, port_defaults  # noqa: E402

VIF = {"vif_type": "vhostuser",
       "vif_details": {"sock": "/run/vhu/port.sock", "port_filter": False}}

#: The shim's default [shim] bind_timeout: a bind answered later is useless to proton.
BIND_TIMEOUT = 2.5


# -- the vendor's web service (child process)

def serve():
    """
    Listen on a free loopback port, print it, and answer every POST with L{VIF}.
    """
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    answer = json.dumps(VIF).encode("utf-8")

    class Vendor(Resource):
        isLeaf = True

        def render_POST(self, request):
            json.loads(request.content.read())
            request.setHeader(b"content-type", b"application/json")
            return answer

    site = Site(Vendor())
    site.log = lambda request: None
    port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=4096)
    print(port.getHost().port, flush=True)
    reactor.run()


class _Server(ProcessProtocol):
    def __init__(self):
        self.listening = Deferred()
        self.ended = Deferred()
        self._out = b""

    def outReceived(self, data):
        self._out += data
        if b"\n" in self._out and not self.listening.called:
            self.listening.callback(int(self._out.split(b"\n")[0]))

    def errReceived(self, data):
        sys.stderr.write(data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(reason)
        self.ended.callback(None)


# -- what is sent

def bind_requests(count):
    """
    C{count} ports, each in its VPN, as a model, and their C{(uuid, changes)} binds.
    """
    model = Model()
    model.put(keys.VPN_AFCONFIG, "100:1", decode(keys.VPN_AFCONFIG, encode_object(
        {"vrf_rt_value": "100:1", "vrf_rt_type": "both"}), 1))
    model.put(keys.VPN_INSTANCE, "vpn-1", decode(keys.VPN_INSTANCE, encode_object(
        {"id": "vpn-1", "ipv4_family": "100:1", "ipv6_family": None}), 1))
    binds = []
    for i in range(count):
        uuid = "port-%05d" % (i,)
        attrs = dict(port_defaults(uuid), host_id="compute-1", device_id="vm-%d" % i)
        port = decode(keys.PORT, encode_object(attrs), 2)
        model.put(keys.PORT, uuid, port)
        model.put(keys.VPN_PORT, uuid, decode(keys.VPN_PORT, encode_object(
            {"id": uuid, "vpn_instance": "vpn-1"}), 1))
        binds.append((uuid, Changes.between(None, port)))
    return model, binds


# -- the two runs

class Run:
    """
    One run's figures.
    """

    def __init__(self, name, started, finished, outcomes, latencies, cpu):
        self.name = name
        self.seconds = finished - started
        self.cpu = cpu
        self.outcomes = outcomes
        self.ok = outcomes.get("ok", 0)
        self.failed = sum(n for o, n in outcomes.items() if o != "ok")
        latencies = sorted(latencies)
        self.in_time = sum(1 for t in latencies if t <= BIND_TIMEOUT)
        self.p50 = latencies[len(latencies) // 2] if latencies else float("nan")
        self.p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
        self.max = latencies[-1] if latencies else float("nan")

    def line(self):
        return ("%-18s %5.2f s (cpu %5.2f s)  ok %5d  failed %5d %-28s within %.1f s: "
                "%5d  p50 %.2f s  p99 %.2f s  max %.2f s" % (
                    self.name, self.seconds, self.cpu, self.ok, self.failed,
                    "(%s)" % ", ".join("%s %d" % kv for kv in sorted(
                        self.outcomes.items()) if kv[0] != "ok") if self.failed else "",
                    BIND_TIMEOUT, self.in_time, self.p50, self.p99, self.max))


@inlineCallbacks
def baseline(reactor, url, model, binds, concurrency):
    """
    The same requests with treq: at most C{concurrency} at once, over as many
    persistent connections.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = concurrency
    http = HTTPClient(Agent(reactor, pool=pool))
    limit = DeferredSemaphore(concurrency)
    outcomes = {}
    latencies = []

    def body(uuid, changes):
        b = {"callback": "bind_port", "uuid": uuid,
             "changes": {"new": dict(changes.new), "prev": dict(changes.prev)},
             "port": dict(model.ports[uuid])}
        b.update(HttpBackend._vpn_context(uuid, model))  # the same bodies
        return json.dumps(b, sort_keys=True).encode("utf-8")

    @inlineCallbacks
    def one(uuid, changes):
        try:
            response = yield http.post(
                url, data=body(uuid, changes), allow_redirects=False,
                headers={b"Content-Type": [b"application/json"],
                         b"Accept": [b"application/json"]})
            answer = json.loads((yield treq.content(response)))
            outcome = "ok" if 200 <= response.code < 300 and answer == VIF else "error"
        except Exception as e:
            outcome = "error: %s" % (type(e).__name__,)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        latencies.append(time.monotonic() - started)

    cpu = time.process_time()
    started = time.monotonic()
    calls = [limit.run(one, uuid, changes) for uuid, changes in binds]
    yield DeferredList(calls, consumeErrors=True)
    finished = time.monotonic()
    cpu = time.process_time() - cpu
    yield pool.closeCachedConnections()
    return Run("baseline (treq)", started, finished, outcomes, latencies, cpu)


@inlineCallbacks
def through_backend(reactor, url, model, binds, max_in_flight, caller_timeout, name):
    """
    The binds made at once through an L{HttpBackend}: as the shim calls it (through a
    L{BackendCaller} with time limit C{caller_timeout}), or, when C{caller_timeout} is
    C{None}, by calling C{bind_port} directly.
    """
    backend = HttpBackend({"url": url, "max_in_flight": str(max_in_flight)},
                          reactor=reactor)
    metrics = Metrics()
    caller = None
    if caller_timeout is not None:
        caller = BackendCaller(backend, caller_timeout, reactor, metrics)
    latencies = []
    outcomes = {}

    def answered(result):
        latencies.append(time.monotonic() - started)
        return result

    def direct(result):
        latencies.append(time.monotonic() - started)
        if isinstance(result, Failure):
            outcome = "timeout" if result.check(TimeoutError) else "error"
        else:
            outcome = "ok" if result == VIF else "error"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    cpu = time.process_time()
    started = time.monotonic()
    calls = []
    for uuid, changes in binds:
        if caller is not None:
            d = caller.call("bind_port", "port %s" % (uuid,), uuid, model, changes)
            if isinstance(d, Deferred):
                d.addCallback(answered)
        else:
            d = backend.bind_port(uuid, model, changes)
            d.addBoth(direct)
        calls.append(d)
    yield DeferredList([d for d in calls if isinstance(d, Deferred)],
                       consumeErrors=True)
    finished = time.monotonic()
    cpu = time.process_time() - cpu
    yield backend.close()
    if caller is not None:
        for outcome in ("ok", "rejected", "error", "timeout"):
            n = metrics.registry.get_sample_value(
                "shim_backend_calls_total",
                {"callback": "bind_port", "outcome": outcome})
            if n:
                outcomes[outcome] = int(n)
    return Run(name, started, finished, outcomes, latencies, cpu)


class _Errors:
    """
    A log observer keeping a count of error events and the first message of each
    kind, instead of printing thousands of tracebacks.
    """

    def __init__(self):
        self.count = 0
        self.kinds = {}

    def __call__(self, event):
        level = event.get("log_level")
        if level is None or level < LogLevel.error:
            return
        self.count += 1
        failure = event.get("log_failure")
        text = failure.getErrorMessage() if failure is not None else \
            event.get("log_format", "")
        kind = "Too many open files" if "Too many open files" in text else text[-80:]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


@inlineCallbacks
def main(reactor, args):
    errors = _Errors()
    globalLogBeginner.beginLoggingTo([errors], redirectStandardIO=False)

    server = _Server()
    process = reactor.spawnProcess(
        server, sys.executable, [sys.executable, os.path.abspath(__file__), "serve"],
        env=dict(os.environ, PYTHONPATH=REPO), path=REPO)
    port = yield server.listening
    url = "http://127.0.0.1:%d/shim" % (port,)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.files, hard))
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    import twisted
    print("# http backend under load, %s" % (
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),))
    print("# machine: %s, %d cores, Python %s, Twisted %s, treq %s" % (
        platform.platform(), os.cpu_count(), platform.python_version(),
        twisted.__version__, treq.__version__))
    print("# %d binds at once; open-file limit %d; max_in_flight %d; caller time "
          "limit %gs; %d rounds" % (args.binds, files, args.max_in_flight,
                                    args.caller_timeout, args.rounds))

    model, binds = bind_requests(args.binds)
    # Warm up both paths (connections, imports) before measuring.
    yield baseline(reactor, url, model, binds[:200], args.max_in_flight)
    yield through_backend(reactor, url, model, binds[:200], args.max_in_flight,
                          args.caller_timeout, "warm-up")
    errors.count = 0
    errors.kinds.clear()

    kinds = [
        ("baseline (treq)", "baseline: treq, %d at once" % (args.max_in_flight,),
         lambda: baseline(reactor, url, model, binds, args.max_in_flight)),
        ("backend alone", "http backend alone (bind_port called directly)",
         lambda: through_backend(reactor, url, model, binds, args.max_in_flight, None,
                                 "backend alone")),
        ("backend via caller", "http backend via BackendCaller (as the shim calls it)",
         lambda: through_backend(reactor, url, model, binds, args.max_in_flight,
                                 args.caller_timeout, "backend via caller")),
    ]
    runs = {name: [] for name, _, _ in kinds}
    for _ in range(args.rounds):
        for name, _, measure in kinds:
            run = yield measure()
            print(run.line(), flush=True)
            runs[name].append(run)
    if errors.count:
        print("# errors logged: %d: %s" % (errors.count, errors.kinds))

    print()
    print("| %d binds at once, %d files, max_in_flight %d | time (median of %d) | "
          "ratio | client cpu | ratio | ok | failed | within %.1f s |" % (
              args.binds, files, args.max_in_flight, args.rounds, BIND_TIMEOUT))
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(r.seconds for r in runs["baseline (treq)"])
    base_cpu = statistics.median(r.cpu for r in runs["baseline (treq)"])
    for name, title, _ in kinds:
        t = statistics.median(r.seconds for r in runs[name])
        cpu = statistics.median(r.cpu for r in runs[name])
        print("| %s | %.2f s | %.2fx | %.2f s | %.2fx | %s | %s | %s |" % (
            title, t, t / base, cpu, cpu / base_cpu,
            "/".join(str(r.ok) for r in runs[name]),
            "/".join(str(r.failed) for r in runs[name]),
            "/".join(str(r.in_time) for r in runs[name])))

    if args.unbounded:
        errors.count = 0
        errors.kinds.clear()
        run = yield through_backend(reactor, url, model, binds, args.binds,
                                    args.caller_timeout,
                                    "unbounded (%d)" % (args.binds,))
        print()
        print(run.line())
        print("# errors logged: %d: %s" % (errors.count, errors.kinds))

    process.signalProcess("TERM")
    yield server.ended


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binds", type=int, default=10000)
    parser.add_argument("--files", type=int, default=1024,
                        help="this process's open-file limit (default 1024)")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--caller-timeout", type=float, default=30.0,
                        help="BackendCaller's time limit ([shim] backend_timeout, "
                        "default 30)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unbounded", action="store_true",
                        help="also run with max_in_flight = --binds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    else:
        arguments = parse_args(sys.argv[1:])
        task.react(main, [arguments])
