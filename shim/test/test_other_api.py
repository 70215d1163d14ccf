"""
A shim configured for one etcd API while proton's objects are in the other's store:
it says which setting to change.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from shim.etcd import EtcdClient
from shim.etcd.v2 import EtcdV2Client
from shim.test.etcdserver import start_etcd
from shim.test.support import ShimRunner, wait_for


class OtherAPITests(TestCase):
    @inlineCallbacks
    def check(self, configured, write_with):
        etcd = start_etcd(self, extra_args=["--enable-v2=true"])
        writer = write_with([etcd.client_url])
        self.addCleanup(writer.close)
        yield writer.put("/proton/net-l3vpn/ProtonBasePort/p1", b'{"id": "p1"}')
        seen = []

        def observe(event):
            if "holds proton's objects" in (event.get("log_format") or ""):
                seen.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        yield ShimRunner(self, [etcd.client_url]).start(
            extra="[etcd]\napi = %s\n[election]\nenabled = false\n" % (configured,))
        yield wait_for(lambda: seen, what="the warning naming the setting")
        self.assertEqual(seen[0]["other"], "v2" if configured == "v3" else "v3")

    def test_v3_configured_data_in_v2(self):
        """
        Proton-server writes over v2; a shim left at api = v3 sees nothing and says
        to set [etcd] api = v2.
        """
        return self.check("v3", EtcdV2Client)

    def test_v2_configured_data_in_v3(self):
        return self.check("v2", EtcdClient)
