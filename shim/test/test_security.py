"""
The shim against a secured etcd: TLS with client certificates, etcd's authentication
with a role limited to what the shim needs, both together, and the start-up failures an
operator sees when the credentials are wrong.

Every test runs a real etcd (C{$ETCD_BIN}); the start-up failures run the real
C{twistd shimserver}, since what matters there is the process's exit status and output.
Users and roles are made with C{etcdctl}, with the very commands docs/security.md gives.
"""

import os
import shutil
import signal
import ssl
import subprocess

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from shim import keys
from shim.etcd import AuthFailed, EtcdClient, TLSFailed
from shim.portstate import BOUND, UNBOUND
from shim.proton import ProtonClient
from shim.test import test_service
from shim.test.certs import make_pki
from shim.test.etcdserver import start_etcd
from shim.test.support import RecordingBackend, ShimRunner, read_result, wait_for
from shim.test.test_tap import REPO, run_twistd, twistd_command

ROOT_PASSWORD = "root-secret-7f3a"
SHIM_PASSWORD = "shim-secret-41c9"
WRONG_PASSWORD = "not-the-password-9e2b"

#: The etcdctl commands that give the shim its role and turn authentication on, as
#: docs/security.md gives them: (arguments, what goes to standard input).
AUTH_COMMANDS = (
    (("user", "add", "root", "--interactive=false"), "ROOT"),
    (("role", "add", "root"), None),
    (("user", "grant-role", "root", "root"), None),
    (("role", "add", "shim"), None),
    (("role", "grant-permission", "shim", "--prefix=true", "read", "/proton/"), None),
    (("role", "grant-permission", "shim", "--prefix=true", "readwrite", "/controller/"),
     None),
    (("user", "add", "shim", "--interactive=false"), "SHIM"),
    (("user", "grant-role", "shim", "shim"), None),
    (("auth", "enable"), None),
)


def etcdctl_binary(etcd_binary):
    """
    The etcdctl shipped beside C{etcd_binary}, else the one on C{PATH}.
    """
    beside = os.path.join(os.path.dirname(etcd_binary), "etcdctl")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("etcdctl")
    if found is None:
        raise RuntimeError("no etcdctl beside %s nor on PATH" % (etcd_binary,))
    return found


def etcdctl(server, pki, *args, user=None, stdin=None, cert=None, key=None):
    """
    Run etcdctl (gRPC, not the gateway) against C{server}; the completed process.
    Over TLS it presents C{cert}/C{key}, by default the certificate without a
    Common Name, so that the identity is C{user}'s.
    """
    command = [etcdctl_binary(server.binary), "--endpoints", server.client_url,
               "--dial-timeout", "5s", "--command-timeout", "10s"]
    if server.scheme == "https":
        command += ["--cacert", pki.ca, "--cert", cert or pki.anonymous_cert,
                    "--key", key or pki.anonymous_key]
    if user is not None:
        command += ["--user", user]
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(command + list(args), input=stdin, capture_output=True,
                          text=True, timeout=60, env=env)


def enable_auth(server, pki):
    """
    Make the root and shim users and roles, and turn authentication on.
    """
    passwords = {"ROOT": ROOT_PASSWORD, "SHIM": SHIM_PASSWORD}
    for args, stdin in AUTH_COMMANDS:
        done = etcdctl(server, pki, *args,
                       stdin=passwords[stdin] + "\n" if stdin else None)
        if done.returncode != 0:
            raise RuntimeError("etcdctl %s failed: %s%s" % (
                " ".join(args), done.stdout, done.stderr))


def start_secure_etcd(testcase, pki, tls=True, client_auth=True, auth=False,
                      server_cert=None, server_key=None):
    """
    A fresh etcd: with C{tls}, https with C{server_cert} (the trusted CA's by
    default), and with C{client_auth} demanding client certificates of that CA;
    with C{auth}, the users and roles of L{AUTH_COMMANDS}.
    """
    kwargs = {}
    if tls:
        args = ["--cert-file", server_cert or pki.server_cert,
                "--key-file", server_key or pki.server_key]
        context = ssl.create_default_context(cafile=pki.ca)
        if server_cert is not None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client_auth:
            args += ["--client-cert-auth", "--trusted-ca-file", pki.ca]
            context.load_cert_chain(pki.anonymous_cert, pki.anonymous_key)
        kwargs = dict(scheme="https", extra_args=args, ssl_context=context)
    server = start_etcd(testcase, **kwargs)
    if auth:
        enable_auth(server, pki)
    return server


def write_password(directory, password, mode=0o600, name="etcd-password"):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(password + "\n")
    os.chmod(path, mode)
    return path


def etcd_section(pki=None, cert=None, key=None, username=None, password_file=None):
    """
    The C{[etcd]} section of a shim.conf.
    """
    lines = ["[etcd]", "timeout = 5"]
    if pki is not None:
        lines.append("ca_file = %s" % (pki.ca,))
    if cert is not None:
        lines += ["cert_file = %s" % (cert,), "key_file = %s" % (key,)]
    if username is not None:
        lines += ["username = %s" % (username,), "password_file = %s" % (password_file,)]
    return "\n".join(lines) + "\n"


class SecureServiceCase(test_service.ServiceTestCase):
    """
    A shim service against a secured etcd, with proton's side as root (over TLS with
    the certificate without a Common Name).
    """

    tls = False
    auth = False

    @inlineCallbacks
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.pki = make_pki(os.path.join(self.directory, "pki"))
        self.etcd = start_secure_etcd(self, self.pki, tls=self.tls, auth=self.auth)
        self.client = self.etcd_client(
            username="root" if self.auth else None, password=ROOT_PASSWORD,
            cert=self.pki.anonymous_cert if self.tls else None)
        self.proton = ProtonClient(self.client)
        self.shims = ShimRunner(self, [self.etcd.client_url])
        yield self.client.status()

    def etcd_client(self, username=None, password=None, cert=None, key=None,
                    ca=True):
        """
        An L{EtcdClient} on the test's etcd, closed at the end of the test.
        """
        if cert is not None and key is None:
            key = {self.pki.client_cert: self.pki.client_key,
                   self.pki.anonymous_cert: self.pki.anonymous_key}[cert]
        client = EtcdClient(
            [self.etcd.client_url], timeout=5, username=username, password=password,
            ca_file=self.pki.ca if (self.tls and ca) else None,
            cert_file=cert, key_file=key)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def bind_and_unbind(self, extra):
        """
        A shim configured with C{extra} binds a port on its host and unbinds it.
        """
        backend = RecordingBackend()
        shim = yield self.shims.start(backend, extra=extra)
        yield self.make_vpn()
        yield self.make_port("p1")
        outcome = yield self.proton.bind("p1", "compute1", "vm1")
        self.assertEqual(outcome.result["controller"], "SimServer")
        self.assertEqual(outcome.result["vif_type"], "ovs")
        self.assertEqual(shim.model.ports["p1"].binding, BOUND)
        yield self.proton.unbind("p1")
        yield self.settled(shim)
        self.assertEqual(backend.called("unbind_port", "p1"), 1)
        self.assertEqual(shim.model.ports["p1"].binding, UNBOUND)
        result = yield read_result(self.client, "p1")
        self.assertEqual(result, {})
        return shim

    @inlineCallbacks
    def start_failure(self, extra):
        """
        A shim configured with C{extra} gives up at start-up; the error it gives.
        """
        shim = yield self.shims.start(RecordingBackend(), extra=extra, wait=False)
        error = yield shim.start_failed
        self.assertFalse(shim.ready)
        return error


class TLSTests(SecureServiceCase):
    """
    etcd over https demanding a client certificate of its CA.
    """

    tls = True

    def test_bind_over_tls(self):
        """
        A shim with ca_file, cert_file and key_file binds and unbinds a port.
        """
        return self.bind_and_unbind(etcd_section(
            self.pki, self.pki.client_cert, self.pki.client_key))

    @inlineCallbacks
    def test_no_client_certificate(self):
        """
        Without a client certificate the handshake fails: the shim stops with
        L{TLSFailed}, naming the endpoint and etcd's refusal.
        """
        error = yield self.start_failure(etcd_section(self.pki))
        self.assertIsInstance(error, TLSFailed)
        self.assertIn(self.etcd.client_url, str(error))
        self.assertIn("TLS handshake failed", str(error))
        self.assertIn("etcd refused our client certificate, or wanted one", str(error))

    @inlineCallbacks
    def test_untrusted_server(self):
        """
        An etcd whose certificate another CA signed is refused, and so is one whose
        certificate is for another host.
        """
        for cert, key, reason in [
                (self.pki.other_server_cert, self.pki.other_server_key,
                 "certificate verify failed"),
                (self.pki.misnamed_server_cert, self.pki.misnamed_server_key,
                 "does not name this endpoint's host")]:
            etcd = start_secure_etcd(self, self.pki, client_auth=False,
                                     server_cert=cert, server_key=key)
            client = EtcdClient([etcd.client_url], timeout=5, ca_file=self.pki.ca)
            self.addCleanup(client.close)
            error = yield self.assertFailure(client.status(), TLSFailed)
            self.assertIn("etcd probe at %s: TLS handshake failed" % (etcd.client_url,),
                          str(error))
            self.assertIn(reason, str(error))


class AuthTests(SecureServiceCase):
    """
    etcd with authentication on; the shim is the user C{shim} with the role C{shim}:
    read /proton/, read and write /controller/.
    """

    auth = True

    def password_file(self, password=SHIM_PASSWORD):
        return write_password(self.directory, password)

    def test_bind_as_shim_user(self):
        """
        The shim works with exactly the role the documentation gives it.
        """
        return self.bind_and_unbind(etcd_section(
            username="shim", password_file=self.password_file()))

    @inlineCallbacks
    def test_role_enforced(self):
        """
        The shim user reads /proton/ and writes /controller/, and nothing else.
        """
        yield self.make_vpn()
        shim = self.etcd_client(username="shim", password=SHIM_PASSWORD)
        found = yield shim.get(keys.PROTON_PREFIX, prefix=True)
        self.assertTrue(found.kvs)
        yield shim.put(keys.result_key("p9"), b"{}")
        yield shim.delete(keys.result_key("p9"))
        error = yield self.assertFailure(
            shim.put(keys.proton_key(keys.PORT, "p9"), b"{}"), AuthFailed)
        self.assertIn("permission denied", str(error))
        error = yield self.assertFailure(shim.get("/other/", prefix=True), AuthFailed)
        self.assertIn("permission denied", str(error))
        yield self.assertFailure(shim.delete(keys.PROTON_PREFIX, prefix=True),
                                 AuthFailed)

    @inlineCallbacks
    def test_wrong_password(self):
        """
        A wrong password stops the shim at start-up with L{AuthFailed} naming the
        user and the endpoint.
        """
        error = yield self.start_failure(etcd_section(
            username="shim", password_file=self.password_file(WRONG_PASSWORD)))
        self.assertIsInstance(error, AuthFailed)
        self.assertIn("authenticate as user 'shim' at %s" % (self.etcd.client_url,),
                      str(error))
        self.assertIn("authentication failed", str(error))
        self.assertNotIn(WRONG_PASSWORD, str(error))

    @inlineCallbacks
    def test_no_credentials(self):
        """
        Without a user nothing under /proton/ can be read: etcd says the user name is
        empty.
        """
        client = self.etcd_client()
        error = yield self.assertFailure(client.get(keys.PROTON_PREFIX, prefix=True),
                                         AuthFailed)
        self.assertIn("user name is empty", str(error))


class TLSAndAuthTests(SecureServiceCase):
    """
    TLS with client certificates and authentication together: the certificate
    secures the connection, the user and password carry the identity.
    """

    tls = True
    auth = True

    def test_bind(self):
        """
        With a client certificate without a Common Name and the shim user, the shim
        binds and unbinds a port.
        """
        path = write_password(self.directory, SHIM_PASSWORD)
        return self.bind_and_unbind(etcd_section(
            self.pki, self.pki.anonymous_cert, self.pki.anonymous_key,
            username="shim", password_file=path))

    @inlineCallbacks
    def test_common_name_refused_by_gateway(self):
        """
        A client certificate with a Common Name is refused by etcd's gateway once
        authentication is on, whatever the user: the shim stops at start-up with
        L{TLSFailed} saying so.
        """
        path = write_password(self.directory, SHIM_PASSWORD)
        error = yield self.start_failure(etcd_section(
            self.pki, self.pki.client_cert, self.pki.client_key,
            username="shim", password_file=path))
        self.assertIsInstance(error, TLSFailed)
        self.assertIn(self.etcd.client_url, str(error))
        self.assertIn("client certificate because it has a Common Name", str(error))

    @inlineCallbacks
    def test_certificate_identity_not_through_gateway(self):
        """
        Over gRPC (etcdctl) etcd takes a client certificate's Common Name as the user
        name: the certificate named C{shim} reads /proton/ but may not write there.
        Through the gateway that identity does not pass: a certificate with a Common
        Name is refused outright, and one without gives no identity at all.
        """
        yield self.make_vpn()
        cert = dict(cert=self.pki.client_cert, key=self.pki.client_key)
        read = etcdctl(self.etcd, self.pki, "get", "/proton/", "--prefix",
                       "--keys-only", **cert)
        self.assertEqual(read.returncode, 0, read.stderr)
        self.assertIn(keys.proton_key(keys.VPN_INSTANCE, test_service.VPN), read.stdout)
        write = etcdctl(self.etcd, self.pki, "put", "/proton/x", "1", **cert)
        self.assertNotEqual(write.returncode, 0)
        self.assertIn("permission denied", write.stderr)

        for username in (None, "root"):
            named = self.etcd_client(username=username, password=ROOT_PASSWORD,
                                     cert=self.pki.client_cert)
            error = yield self.assertFailure(
                named.get(keys.PROTON_PREFIX, prefix=True), TLSFailed)
            self.assertIn("Common Name", str(error))

        anonymous = self.etcd_client(cert=self.pki.anonymous_cert)
        error = yield self.assertFailure(
            anonymous.get(keys.PROTON_PREFIX, prefix=True), AuthFailed)
        self.assertIn("user name is empty", str(error))

    @inlineCallbacks
    def test_server_certificate_name_is_an_identity(self):
        """
        A gateway request without a token and without an C{Accept} header runs as
        the user the server certificate's Common Name names (the gateway's own
        certificate towards etcd's gRPC side): with a server certificate for C{root},
        any holder of a client certificate is root.  The shim's client sends
        C{Accept}, so without credentials it gets no identity at all.
        """
        pki = make_pki(os.path.join(self.directory, "root-pki"), server_name="root")
        etcd = start_secure_etcd(self, pki, auth=True)
        # The harness's blocking calls send neither a token nor Accept.
        answer = etcd.call("auth/user/list", {})
        self.assertEqual(sorted(answer.get("users", [])), ["root", "shim"], answer)
        client = EtcdClient([etcd.client_url], timeout=5, ca_file=pki.ca,
                            cert_file=pki.anonymous_cert, key_file=pki.anonymous_key)
        self.addCleanup(client.close)
        error = yield self.assertFailure(client.get("/", prefix=True), AuthFailed)
        self.assertIn("user name is empty", str(error))


class TwistdProcess(protocol.ProcessProtocol):
    """
    A C{twistd shimserver} process that keeps running: its output so far, and
    C{ended}, firing with the exit status (or the signal) when it exits.
    """

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    @property
    def output(self):
        return (self.out + self.err).decode("utf-8", "replace")


def spawn_twistd(*args):
    executable, prefix = twistd_command()
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"]
                                if env.get("PYTHONPATH") else "")
    process = TwistdProcess()
    argv = [executable] + prefix + list(args)
    reactor.spawnProcess(process, executable, argv, env=env, path=REPO)
    return process


class TwistdTests(TestCase):
    """
    C{twistd -n shimserver} against a secured etcd: what the operator sees.
    """

    timeout = 120

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.pki = make_pki(os.path.join(self.directory, "pki"))

    def write_config(self, etcd, extra):
        path = os.path.join(self.directory, "shim.conf")
        with open(path, "w") as f:
            f.write("[shim]\ncontroller_name = SimServer\nhost_list = compute1\n"
                    "etcd_endpoints = %s\nbackend = dummy\nresync_interval = 0\n%s"
                    % (etcd, extra))
        return path

    @inlineCallbacks
    def assertCannotStart(self, path, *expected):
        """
        twistd with the config at C{path} exits non-zero; standard error is one line,
        C{shimserver: cannot start: ...}, holding each of C{expected}; no traceback
        anywhere, and no password.
        """
        out, err, code = yield run_twistd("-n", "--pidfile=", "shimserver",
                                          "--config", path)
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 1, output)
        self.assertNotIn("Traceback", output)
        lines = err.decode("utf-8", "replace").splitlines()
        self.assertEqual(len(lines), 1, output)
        self.assertTrue(lines[0].startswith("shimserver: cannot start: "), lines[0])
        for text in expected:
            self.assertIn(text, lines[0])
        # The shim logged it too, once, as critical.
        self.assertEqual(output.count("#critical] cannot start: "), 1, output)
        for password in (ROOT_PASSWORD, SHIM_PASSWORD, WRONG_PASSWORD):
            self.assertNotIn(password, output)
        return lines[0]

    def test_wrong_password(self):
        etcd = start_secure_etcd(self, self.pki, tls=False, auth=True)
        password_file = write_password(self.directory, WRONG_PASSWORD)
        path = self.write_config(etcd.client_url, etcd_section(
            username="shim", password_file=password_file))
        return self.assertCannotStart(
            path, "user 'shim'", etcd.client_url, "authentication failed")

    def test_untrusted_server_certificate(self):
        etcd = start_secure_etcd(self, self.pki, client_auth=False,
                                 server_cert=self.pki.other_server_cert,
                                 server_key=self.pki.other_server_key)
        path = self.write_config(etcd.client_url, etcd_section(self.pki))
        return self.assertCannotStart(
            path, etcd.client_url, "TLS handshake failed", "certificate verify failed")

    @inlineCallbacks
    def test_missing_key_file(self):
        """
        A key file that is not there is a configuration error, reported before
        anything starts.
        """
        missing = os.path.join(self.directory, "nowhere-key.pem")
        path = self.write_config("https://127.0.0.1:2379", etcd_section(
            self.pki, self.pki.client_cert, missing))
        out, err, code = yield run_twistd("-n", "--pidfile=", "shimserver",
                                          "--config", path)
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        self.assertEqual(err.decode().splitlines(), [
            "shimserver: %s: [etcd] key_file: %s: no such file" % (path, missing)])

    @inlineCallbacks
    def test_readable_password_file(self):
        """
        A password file every user may read gives a warning in the running shim's
        log; the shim works, and its log never shows the password, even at debug.
        """
        etcd = start_secure_etcd(self, self.pki, tls=False, auth=True)
        password_file = write_password(self.directory, SHIM_PASSWORD, mode=0o644)
        path = self.write_config(etcd.client_url, "log_level = debug\n" + etcd_section(
            username="shim", password_file=password_file))
        process = spawn_twistd("-n", "--pidfile=", "shimserver", "--config", path)
        try:
            yield wait_for(lambda: "shim ready" in process.output or process.ended.called,
                           timeout=60, what="the shim to be ready")
        finally:
            if not process.ended.called:
                process.transport.signalProcess(signal.SIGTERM)
            yield process.ended
        output = process.output
        self.assertIn("shim ready", output)
        self.assertIn("password_file %s is readable by every user (mode 0o644)"
                      % (password_file,), output)
        self.assertNotIn(SHIM_PASSWORD, output)
        self.assertNotIn("Traceback", output)
