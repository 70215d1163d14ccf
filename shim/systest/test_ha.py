"""
High availability with real shim processes (C{twistd -n shimserver}) and real etcd:
a pair of shims of one group, the acting one killed, stalled, stopped, or losing its
etcd member, while proton (L{shim.proton.ProtonClient}) binds ports.

Every shim's backend is L{HALogBackend}: it appends one line per callback,
C{"<pid> <callback> <uuid> <epoch> <monotonic time>"}, to a file shared by the pair,
and answers C{bind_port} with a C{vif_details} naming its pid, so that each bind
result in etcd says which process wrote it.  Linux's monotonic clock is one for the
whole machine, so the times of the shims and of the test compare.

Two properties are checked in every test:
  - every bind proton asks for is answered within proton's 8 s
    (C{ProtonClient.bind(timeout=8)});
  - never do two shims act at once: in the call log, once a process has taken over
    no earlier process calls the backend again (L{assert_no_interleaving}).

No test asserts a speed of its own; bench/failover.py measures the failover time.
"""

import json
import os
import signal
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from shim import keys
from shim.etcd import EtcdClient
from shim.interfaces import IBackend
from shim.proton import ProtonClient
from shim.test.etcdserver import free_port, start_cluster, start_etcd
from shim.test.support import (  # noqa: F401 (twistd_command: bench/soak.py's)
    get_readyz, sleep, spawn_shimserver, tail, twistd_command, write_config)

HOST = "compute1"
CONTROLLER = "SimServer"
BACKEND = "shim.systest.test_ha:HALogBackend"


# -- the backend inside each shim process -------------------------------------

@implementer(IBackend)
class HALogBackend(object):
    """
    Appends C{"<pid> <callback> <uuid> <epoch> <monotonic>"} to the file named by the
    C{record} option for every callback (one C{write} on an C{O_APPEND} file: lines of
    several processes never mix), and binds every port, answering a C{vif_details}
    with its pid.  A port whose uuid starts with the C{slow_prefix} option is bound
    after C{slow_delay} seconds (a call still in flight when the test strikes).

    The epoch is the model's C{epoch} (the leader's, set by the service), or C{-}.
    """

    def __init__(self, options):
        self.path = options["record"]
        self.slow_prefix = options.get("slow_prefix") or None
        self.slow_delay = float(options.get("slow_delay", "2"))
        self.pid = os.getpid()

    def _record(self, callback, uuid, model):
        epoch = getattr(model, "epoch", None)
        line = "%d %s %s %s %.6f\n" % (self.pid, callback, uuid,
                                       "-" if epoch is None else epoch, time.monotonic())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("ascii"))
        finally:
            os.close(fd)

    def bind_port(self, uuid, model, changes):
        self._record("bind_port", uuid, model)
        answer = {"vif_type": "ovs",
                  "vif_details": {"port_filter": False, "bridge_name": "br-gluon",
                                  "pid": self.pid}}
        if self.slow_prefix and uuid.startswith(self.slow_prefix):
            return deferLater(reactor, self.slow_delay, lambda: answer)
        return answer

    def unbind_port(self, uuid, model, changes):
        self._record("unbind_port", uuid, model)

    def modify_port(self, uuid, model, changes):
        self._record("modify_port", uuid, model)

    def delete_port(self, uuid, model, port):
        self._record("delete_port", uuid, model)

    def modify_service(self, uuid, model, changes):
        self._record("modify_service", uuid, model)

    def delete_service(self, uuid, model, service):
        self._record("delete_service", uuid, model)

    def modify_service_binding(self, uuid, model, prev_binding):
        self._record("modify_service_binding", uuid, model)

    def delete_service_binding(self, model, prev_binding):
        self._record("delete_service_binding", (prev_binding or {}).get("id"), model)


class Call(object):
    """One line of the call log."""

    def __init__(self, line):
        pid, self.callback, self.uuid, epoch, when = line.split()
        self.pid = int(pid)
        self.epoch = None if epoch == "-" else int(epoch)
        self.time = float(when)

    def __repr__(self):
        return "<Call %d %s %s epoch=%s at %.3f>" % (
            self.pid, self.callback, self.uuid, self.epoch, self.time)


def read_calls(path):
    """The calls logged in C{path}, in time order."""
    try:
        with open(path) as f:
            calls = [Call(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return sorted(calls, key=lambda call: call.time)


def acting_spans(calls):
    """
    The call log cut into spans of one process each: C{[(pid, [calls])]}.  With no two
    shims acting at once, no pid has two spans.
    """
    spans = []
    for call in calls:
        if spans and spans[-1][0] == call.pid:
            spans[-1][1].append(call)
        else:
            spans.append((call.pid, [call]))
    return spans


def interleavings(calls):
    """The pids that act again after another process acted; empty when all is well."""
    seen = set()
    again = []
    for pid, _ in acting_spans(calls):
        if pid in seen:
            again.append(pid)
        seen.add(pid)
    return again


# -- a shim process --------------------------------------------------------------

class ShimProcess(object):
    """
    One shim of the group as a C{twistd -n shimserver} process with election on, its
    backend L{HALogBackend} logging to the shared C{record}, its C{/readyz} on a free
    loopback port.
    """

    def __init__(self, directory, name, endpoints, record, ttl=3, backend_options=None,
                 etcd_timeout=2):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.name = name
        self.record = record
        self.metrics_port = free_port()
        self.log_file = os.path.join(self.directory, "shim-%s.log" % (name,))
        options = {"record": record}
        options.update(backend_options or {})
        sections = ("[etcd]\n"
                    "timeout = %s\n"
                    "[election]\n"
                    "enabled = true\n"
                    "ttl = %d\n"
                    "[metrics]\n"
                    "listen = %d\n"
                    "[backend]\n" % (etcd_timeout, ttl, self.metrics_port))
        sections += "".join("%s = %s\n" % (key, value)
                            for key, value in sorted(options.items()))
        self.config = write_config(self.directory, endpoints, controller=CONTROLLER,
                                   hosts=HOST, backend=BACKEND, extra=sections)
        self.process = None
        self.transport = None
        self._pid = None

    def __repr__(self):
        return "<ShimProcess %s pid %s>" % (self.name, self.pid)

    @property
    def pid(self):
        """The process id (kept after the process ended)."""
        return self._pid

    @property
    def running(self):
        return self.process is not None and self.process.running

    def spawn(self):
        self.process, self.transport = spawn_shimserver(self.config, self.log_file)
        self._pid = self.transport.pid
        return self

    @inlineCallbacks
    def readyz(self):
        """C{(HTTP code, role)} from C{/readyz}, or C{(None, None)} when unreachable."""
        try:
            code, body = yield get_readyz(self.metrics_port)
        except Exception:
            return None, None
        role = None
        for line in body.splitlines():
            if line.startswith("role:"):
                role = line.split(":", 1)[1].strip()
        return code, role

    @inlineCallbacks
    def wait_role(self, *roles, timeout=60.0):
        """
        Wait until C{/readyz} is 200 with one of C{roles}; return the role. Fails with
        the shim's output when it exits or takes longer than C{timeout} (liveness).
        """
        deadline = reactor.seconds() + timeout
        last = None
        while True:
            if self.process is not None and self.process.ended.called:
                raise AssertionError("shim %s exited; its output:\n%s"
                                     % (self.name, self.output()))
            code, role = yield self.readyz()
            last = (code, role)
            if code == 200 and role in roles:
                return role
            if code == 200 and role == "single":
                raise SkipTest("the shim runs without election (role single): the"
                               " service does not run the election yet")
            if reactor.seconds() > deadline:
                raise AssertionError("shim %s not ready as %s within %.0f s (last %r);"
                                     " its output:\n%s" % (self.name, "/".join(roles),
                                                           timeout, last, self.output()))
            yield sleep(0.02)

    def signal(self, name):
        """Send the signal C{name} (C{"STOP"}, C{"CONT"}, C{"TERM"}, C{"KILL"}...)."""
        if self.running:
            os.kill(self._pid, getattr(signal, "SIG" + name))

    def kill(self):
        """SIGKILL; a Deferred firing once the process is gone."""
        if not self.running:
            return succeed(None)
        self.signal("KILL")
        return self.process.ended

    def stop(self):
        """SIGCONT then SIGTERM; SIGKILL after 15 s. Fires once the process is gone."""
        if not self.running:
            return succeed(None)
        self.signal("CONT")
        self.signal("TERM")
        timer = reactor.callLater(15, lambda: self.running and self.signal("KILL"))

        def done(code):
            if timer.active():
                timer.cancel()
            return code
        return self.process.ended.addBoth(done)

    def output(self, lines=80):
        return tail(self.log_file, lines)


@inlineCallbacks
def start_pair(directory, endpoints, record, ttl=3, backend_options=None,
               second_endpoints=None, second_backend_options=None):
    """
    Two shims of one group: the first started and acting, then the second standing
    by (with C{second_endpoints} and C{second_backend_options} when given); fires
    with C{(leader, standby)}.
    """
    a = ShimProcess(os.path.join(directory, "a"), "a", endpoints, record, ttl=ttl,
                    backend_options=backend_options).spawn()
    try:
        yield a.wait_role("leader")
        b = ShimProcess(os.path.join(directory, "b"), "b",
                        second_endpoints or endpoints, record, ttl=ttl,
                        backend_options=(backend_options if second_backend_options is None
                                         else second_backend_options)).spawn()
    except Exception:
        yield a.kill()
        raise
    try:
        yield b.wait_role("standby")
    except Exception:
        yield a.kill()
        yield b.kill()
        raise
    return a, b


@inlineCallbacks
def leader_of(shims, timeout=60.0):
    """The one shim of C{shims} whose C{/readyz} says leader (waits for one)."""
    deadline = reactor.seconds() + timeout
    while True:
        for shim in shims:
            if shim.running:
                code, role = yield shim.readyz()
                if code == 200 and role == "leader":
                    return shim
        if reactor.seconds() > deadline:
            raise AssertionError("no leader among %r within %.0f s" % (shims, timeout))
        yield sleep(0.02)


class Binder(object):
    """
    Proton binding new ports on C{HOST} one after another, as fast as answers come,
    until stopped; keeps every L{shim.proton.BindOutcome} with the port and when it
    was asked (monotonic).
    """

    def __init__(self, proton, prefix):
        self.proton = proton
        self.prefix = prefix
        self.outcomes = []
        self.errors = []
        self._running = False
        self.done = None
        self.count = 0

    def start(self):
        self._running = True
        self.done = self._loop()
        return self

    def stop(self):
        self._running = False
        return self.done

    @inlineCallbacks
    def bind_one(self):
        self.count += 1
        uuid = "%s%04d" % (self.prefix, self.count)
        yield self.proton.create_port(uuid)
        asked = time.monotonic()
        outcome = yield self.proton.bind(uuid, HOST, "vm-" + uuid, timeout=8.0)
        self.outcomes.append((uuid, asked, outcome))
        return outcome

    @inlineCallbacks
    def _loop(self):
        while self._running:
            try:
                yield self.bind_one()
            except Exception as e:
                # proton's own etcd calls fail while its member is gone: not the shim's.
                self.errors.append(e)
                yield sleep(0.1)

    def unanswered(self):
        return [(uuid, outcome) for uuid, asked, outcome in self.outcomes
                if outcome.timed_out]


def result_pid(outcome):
    """The pid of the shim process whose bind result proton saw."""
    return (outcome.result or {}).get("vif_details", {}).get("pid")


class HATestsMixin(object):
    timeout = 300

    def record_path(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.directory = directory
        return os.path.join(directory, "calls.log")

    @inlineCallbacks
    def pair(self, endpoints, **kwargs):
        self.record = self.record_path()
        a, b = yield start_pair(self.directory, endpoints, self.record, **kwargs)
        self.addCleanup(b.stop)
        self.addCleanup(a.stop)
        self.shims = (a, b)
        return a, b

    def proton_on(self, endpoints):
        client = EtcdClient(list(endpoints), timeout=2.0)
        self.addCleanup(client.close)
        return client, ProtonClient(client)

    def assert_no_interleaving(self):
        calls = read_calls(self.record)
        self.assertEqual(interleavings(calls), [],
                         "two shims acted at once: %r" % (acting_spans(calls),))
        return calls

    def assert_epochs_grow(self, calls):
        """Each new acting process works under a newer epoch than the one before."""
        epochs = []
        for pid, span in acting_spans(calls):
            known = [c.epoch for c in span if c.epoch is not None]
            if known:
                self.assertEqual(len(set(known)), 1, span)
                epochs.append(known[0])
        self.assertEqual(epochs, sorted(set(epochs)), acting_spans(calls))

    @inlineCallbacks
    def watch_results(self, client, revision):
        """
        Collect every bind result written after C{revision}: C{[(pid, uuid)]}, the pid
        being the writer's (from the answer its backend gave).
        """
        seen = []
        prefix = keys.result_key("")

        def on_event(event):
            if event.type == "PUT" and event.value and event.value != b"{}":
                try:
                    value = json.loads(event.value)
                    pid = value.get("vif_details", {}).get("pid")
                except (ValueError, AttributeError):
                    pid = None
                seen.append((pid, event.key[len(prefix):]))
        watch = client.watch(prefix, revision + 1, on_event, prefix=True,
                             prev_kv=False, progress_notify=False)
        self.addCleanup(watch.stop)
        yield watch.started
        return seen


class SingleEtcdHATests(HATestsMixin, TestCase):
    """A pair of shims on one etcd."""

    def setUp(self):
        self.etcd = start_etcd(self)
        self.endpoints = [self.etcd.client_url]

    @inlineCallbacks
    def test_kill_leader_in_a_stream_of_binds(self):
        """
        kill -9 of the acting shim while proton binds port after port: every bind is
        answered within 8 s (the one in flight at the kill by the new leader), and the
        new leader acts only after the old one stopped.
        """
        a, b = yield self.pair(self.endpoints)
        client, proton = self.proton_on(self.endpoints)
        status = yield client.status()
        results = yield self.watch_results(client, status.revision)
        binder = Binder(proton, "k").start()
        yield wait_for(lambda: len(binder.outcomes) >= 5, "binds before the kill")
        yield a.kill()
        # The standby wrote no result while the acting shim lived.
        self.assertEqual(set(pid for pid, _ in results), {a.pid})
        # Binds asked from now on cannot have been seen by the dead shim.
        killed = time.monotonic()
        yield b.wait_role("leader")
        before = len(binder.outcomes)
        yield wait_for(lambda: len(binder.outcomes) >= before + 5, "binds after the kill")
        yield binder.stop()
        self.assertEqual(binder.unanswered(), [])
        self.assertEqual(binder.errors, [])
        pids = [result_pid(o) for _, asked, o in binder.outcomes if asked > killed]
        self.assertTrue(pids and all(pid == b.pid for pid in pids), pids)
        calls = self.assert_no_interleaving()
        self.assert_epochs_grow(calls)
        self.assertEqual([pid for pid, _ in acting_spans(calls)], [a.pid, b.pid])

    @inlineCallbacks
    def test_stall_past_the_lease(self):
        """
        SIGSTOP of the acting shim, with a bind in its backend, past its lease; the
        standby takes over and answers.  After SIGCONT the stalled shim makes no
        backend call and writes no result (not even the one its backend was computing
        when it stalled), and stands by.
        """
        # Only the first shim's backend is slow: a wide window to stall it in, and
        # the standby answers at once when it takes over.
        a, b = yield self.pair(self.endpoints,
                               backend_options={"slow_prefix": "slow", "slow_delay": "3"},
                               second_backend_options={})
        client, proton = self.proton_on(self.endpoints)
        yield Binder(proton, "s").bind_one()

        # A bind whose backend call is still running when the shim stalls.
        yield proton.create_port("slow1")
        slow = proton.bind("slow1", HOST, "vm-slow1", timeout=8.0)
        yield wait_for(lambda: [c for c in read_calls(self.record) if c.uuid == "slow1"],
                       "the slow bind under way")
        a.signal("STOP")
        outcome = yield slow
        self.assertFalse(outcome.timed_out, "the bind in flight at the stall")
        self.assertEqual(result_pid(outcome), b.pid)
        yield b.wait_role("leader")
        after = yield Binder(proton, "t").bind_one()
        self.assertEqual(result_pid(after), b.pid)

        status = yield client.get(keys.result_key("slow1"))
        results = yield self.watch_results(client, status.revision)
        woke = time.monotonic()
        a.signal("CONT")
        yield a.wait_role("standby")
        binder = Binder(proton, "u")
        for _ in range(3):
            outcome = yield binder.bind_one()
            self.assertEqual(result_pid(outcome), b.pid)
        # The slow call's answer came back in a at once (its timer was overdue), and
        # a's deadline and keepalive timers have run: give it time to misbehave.
        yield sleep(3)
        late = [c for c in read_calls(self.record) if c.pid == a.pid and c.time > woke]
        self.assertEqual(late, [])
        self.assertEqual([r for r in results if r[0] == a.pid], [])
        calls = self.assert_no_interleaving()
        self.assert_epochs_grow(calls)

    @inlineCallbacks
    def test_sigterm_handover(self):
        """
        SIGTERM of the acting shim: it hands over (revokes its lease once its work
        is done), the standby leads, and a bind asked at the signal is answered.
        The handover time is printed.
        """
        a, b = yield self.pair(self.endpoints)
        client, proton = self.proton_on(self.endpoints)
        yield Binder(proton, "h").bind_one()
        yield proton.create_port("h-term")
        signalled = time.monotonic()
        stopped = a.stop()
        outcome = yield proton.bind("h-term", HOST, "vm-h-term", timeout=8.0)
        yield b.wait_role("leader")
        handover = time.monotonic() - signalled
        yield stopped
        self.assertFalse(outcome.timed_out)
        print("\nSIGTERM handover: standby leading %.3f s after the signal; the bind"
              " asked at the signal answered in %.3f s" % (handover, outcome.elapsed))
        self.assert_no_interleaving()


class ClusterHATests(HATestsMixin, TestCase):
    """A pair of shims on a three-member cluster that loses a member."""

    def setUp(self):
        self.cluster = start_cluster(self)
        self.endpoints = self.cluster.client_urls

    @inlineCallbacks
    def test_member_of_the_leader_lost(self):
        """
        The member the acting shim talks to (its first endpoint) is killed: binds go
        on being answered, the group keeps a leader (the same or the other), and
        never do two act at once.
        """
        urls = self.endpoints
        a, b = yield self.pair(urls, second_endpoints=[urls[1], urls[2], urls[0]])
        survivors = [urls[1], urls[2]]
        client, proton = self.proton_on(survivors)
        yield Binder(proton, "c").bind_one()
        self.cluster.kill(0)
        yield wait_for(lambda: self.cluster.leader() is not None, "an etcd leader")
        binder = Binder(proton, "d")
        for _ in range(5):
            outcome = yield binder.bind_one()
            self.assertFalse(outcome.timed_out, binder.outcomes)
        leader = yield leader_of((a, b))
        code, role = yield (b if leader is a else a).readyz()
        self.assertEqual((code, role), (200, "standby"))
        calls = self.assert_no_interleaving()
        self.assert_epochs_grow(calls)


@inlineCallbacks
def wait_for(predicate, what, timeout=60.0):
    """Poll C{predicate} until true; fail naming C{what} after C{timeout} (liveness)."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError("timed out waiting for %s" % (what,))
        yield sleep(0.02)
