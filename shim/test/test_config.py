"""
Tests for L{shim.config}: every option, its default, and a one-line error naming the
file, section and option for each kind of mistake.
"""

import os

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from shim.config import ConfigError, ShimConfig, load_config

MINIMAL = (
    "[shim]\n"
    "controller_name = SimServer\n"
    "host_list = compute1, compute2\n"
)


class ConfigTestCase(TestCase):
    """
    Helpers writing configuration files into the test's temporary directory.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write(self, text, name="shim.conf", mode=None):
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        if mode is not None:
            os.chmod(path, mode)
        return path

    def load(self, text):
        return load_config(self.write(text))

    def assertError(self, text, *fragments, where=None):
        """
        Loading C{text} fails with a one-line L{ConfigError} that names the file, the
        C{where} (C{"[section] option"}) and contains every fragment.
        """
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(path + ": "), message)
        if where is not None:
            self.assertTrue(message.startswith("%s: %s: " % (path, where)), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


class DefaultsTests(ConfigTestCase):
    """
    A minimal file gives the documented defaults.
    """

    def test_defaults(self):
        config = self.load(MINIMAL)
        self.assertIsInstance(config, ShimConfig)
        self.assertEqual(config.controller_name, "SimServer")
        self.assertEqual(config.host_list, ("compute1", "compute2"))
        self.assertEqual(config.etcd_endpoints, ("http://127.0.0.1:2379",))
        self.assertEqual(config.backend, "dummy")
        self.assertEqual(config.backend_timeout, 30.0)
        self.assertEqual(config.resync_interval, 600.0)
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.log_format, "text")
        self.assertEqual(config.log_file, "-")
        self.assertEqual(config.etcd_timeout, 5.0)
        self.assertEqual(config.watch_idle_timeout, 1500.0)
        self.assertIsNone(config.ca_file)
        self.assertIsNone(config.cert_file)
        self.assertIsNone(config.key_file)
        self.assertIsNone(config.username)
        self.assertIsNone(config.password)
        self.assertEqual(config.backend_options, {})
        self.assertIsNone(config.metrics_listen)

    def test_example_file(self):
        """
        The project's example shim.conf loads, with the demo's values.
        """
        here = os.path.dirname(os.path.abspath(__file__))
        config = load_config(os.path.join(here, "..", "..", "shim.conf"))
        self.assertEqual(config.controller_name, "SimServer")
        self.assertEqual(config.host_list, ("compute1", "compute2"))
        self.assertEqual(config.etcd_endpoints, ("http://127.0.0.1:2379",))
        self.assertEqual(config.backend, "dummy")


class ShimSectionTests(ConfigTestCase):
    """
    The options of C{[shim]}.
    """

    def test_every_option(self):
        config = self.load(
            "[shim]\n"
            "controller_name = Ctl-1\n"
            "host_list = a ,b,, c\n"
            "etcd_endpoints = http://10.0.0.1:2379, https://etcd.example:2380/\n"
            "backend = acme.backend:Backend\n"
            "backend_timeout = 2.5\n"
            "resync_interval = 0\n"
            "log_level = DEBUG\n"
            "log_format = json\n"
            "log_file = /var/log/shim.log\n"
        )
        self.assertEqual(config.controller_name, "Ctl-1")
        self.assertEqual(config.host_list, ("a", "b", "c"))
        self.assertEqual(
            config.etcd_endpoints,
            ("http://10.0.0.1:2379", "https://etcd.example:2380"),
        )
        self.assertEqual(config.backend, "acme.backend:Backend")
        self.assertEqual(config.backend_timeout, 2.5)
        self.assertEqual(config.resync_interval, 0.0)
        self.assertEqual(config.log_level, "debug")
        self.assertEqual(config.log_format, "json")
        self.assertEqual(config.log_file, "/var/log/shim.log")

    def test_ipv6_endpoint(self):
        config = self.load(MINIMAL + "etcd_endpoints = http://[::1]:2379\n")
        self.assertEqual(config.etcd_endpoints, ("http://[::1]:2379",))

    def test_etcd_host_and_port(self):
        """
        Without etcd_endpoints, the original example's etcd_host and etcd_port name
        the endpoint.
        """
        config = self.load(MINIMAL + "etcd_host = 192.0.2.7\netcd_port = 4001\n")
        self.assertEqual(config.etcd_endpoints, ("http://192.0.2.7:4001",))

    def test_etcd_endpoints_win(self):
        config = self.load(
            MINIMAL + "etcd_host = 192.0.2.7\netcd_endpoints = http://192.0.2.8:2379\n"
        )
        self.assertEqual(config.etcd_endpoints, ("http://192.0.2.8:2379",))

    def test_bad_etcd_port(self):
        self.assertError(MINIMAL + "etcd_port = twenty\n", "'twenty'",
                         where="[shim] etcd_port")

    def test_missing_controller_name(self):
        self.assertError("[shim]\nhost_list = a\n", "missing",
                         where="[shim] controller_name")

    def test_empty_controller_name(self):
        self.assertError("[shim]\ncontroller_name =\nhost_list = a\n", "empty",
                         where="[shim] controller_name")

    def test_empty_host_list(self):
        message = self.assertError("[shim]\ncontroller_name = x\nhost_list = , ,\n",
                                   where="[shim] host_list")
        self.assertTrue(
            message.endswith("[shim] host_list: empty; list at least one host or *"),
            message)

    def test_missing_host_list(self):
        self.assertError("[shim]\ncontroller_name = x\n", "missing",
                         where="[shim] host_list")

    def test_star_alone(self):
        self.assertError("[shim]\ncontroller_name = x\nhost_list = a, *\n", "*",
                         where="[shim] host_list")

    def test_host_with_space(self):
        self.assertError("[shim]\ncontroller_name = x\nhost_list = a b\n", "'a b'",
                         where="[shim] host_list")

    def test_is_our_host(self):
        config = self.load(MINIMAL)
        self.assertTrue(config.is_our_host("compute1"))
        self.assertTrue(config.is_our_host("compute2"))
        self.assertFalse(config.is_our_host("compute3"))
        self.assertFalse(config.is_our_host(""))
        self.assertFalse(config.is_our_host(None))
        self.assertFalse(config.all_hosts)

    def test_every_host(self):
        config = self.load("[shim]\ncontroller_name = x\nhost_list = *\n")
        self.assertTrue(config.all_hosts)
        self.assertTrue(config.is_our_host("anything"))
        self.assertFalse(config.is_our_host(""))
        self.assertFalse(config.is_our_host(None))

    def test_bad_endpoints(self):
        """
        Each bad URL is named, under [shim] etcd_endpoints.
        """
        for url, why in [
            ("ftp://h:1", "scheme"),
            ("127.0.0.1:2379", "scheme"),
            ("http://:2379", "no host"),
            ("http://h", "no port"),
            ("http://h:99999", "port"),
            ("http://h:x", "port"),
            ("http://h:2379/v3", "path"),
            ("http://u:p@h:2379", "credentials"),
        ]:
            self.assertError(
                MINIMAL + "etcd_endpoints = http://ok:2379, %s\n" % (url,),
                repr(url), why, where="[shim] etcd_endpoints",
            )

    def test_empty_endpoints(self):
        self.assertError(MINIMAL + "etcd_endpoints = ,\n", "empty",
                         where="[shim] etcd_endpoints")

    def test_bad_numbers(self):
        for option, value, why in [
            ("backend_timeout", "0", "more than 0"),
            ("backend_timeout", "-1", "more than 0"),
            ("backend_timeout", "soon", "not a number"),
            ("backend_timeout", "nan", "not a number"),
            ("resync_interval", "-5", "0 (off) or more"),
            ("resync_interval", "inf", "not a number"),
        ]:
            self.assertError(MINIMAL + "%s = %s\n" % (option, value), why,
                             where="[shim] " + option)

    def test_bad_choices(self):
        self.assertError(MINIMAL + "log_level = loud\n", "'loud'", "debug",
                         where="[shim] log_level")
        self.assertError(MINIMAL + "log_format = xml\n", "'xml'", "json",
                         where="[shim] log_format")

    def test_unknown_option(self):
        self.assertError(MINIMAL + "host_lists = a\n", "unknown option",
                         where="[shim] host_lists")

    def test_unknown_section(self):
        self.assertError(MINIMAL + "[shin]\n", "unknown section", where="[shin]")

    def test_missing_shim_section(self):
        self.assertError("[etcd]\ntimeout = 1\n", "missing", where="[shim]")


class FileErrorTests(ConfigTestCase):
    """
    A file that cannot be read or parsed gives one line naming it.
    """

    def test_missing_file(self):
        path = os.path.join(self.directory, "nowhere.conf")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            str(error),
            "%s: cannot read the configuration file: No such file or directory" % (path,),
        )

    def test_directory(self):
        error = self.assertRaises(ConfigError, load_config, self.directory)
        self.assertIn(self.directory + ": cannot read", str(error))
        self.assertNotIn("\n", str(error))

    def test_no_section_header(self):
        self.assertError("controller_name = x\n" + MINIMAL, "syntax error", "line 1")

    def test_bad_line(self):
        self.assertError(MINIMAL + "this is not an option\n", "syntax error", "line 4")

    def test_duplicate_option(self):
        self.assertError(MINIMAL + "host_list = x\n", "syntax error", "host_list",
                         "twice")

    def test_not_utf8(self):
        path = os.path.join(self.directory, "latin.conf")
        with open(path, "wb") as f:
            f.write(MINIMAL.encode() + b"log_file = \xe9\xff\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("UTF-8", str(error))


class EtcdSectionTests(ConfigTestCase):
    """
    The options of C{[etcd]}.
    """

    def test_timeouts(self):
        config = self.load(MINIMAL + "[etcd]\ntimeout = 1.5\nwatch_idle_timeout = 0\n")
        self.assertEqual(config.etcd_timeout, 1.5)
        self.assertEqual(config.watch_idle_timeout, 0.0)

    def test_bad_timeouts(self):
        self.assertError(MINIMAL + "[etcd]\ntimeout = 0\n", "more than 0",
                         where="[etcd] timeout")
        self.assertError(MINIMAL + "[etcd]\nwatch_idle_timeout = -1\n", "or more",
                         where="[etcd] watch_idle_timeout")

    def test_tls_files(self):
        ca = self.write("ca", "ca.pem")
        cert = self.write("cert", "cert.pem")
        key = self.write("key", "key.pem")
        config = self.load(MINIMAL + "[etcd]\nca_file = %s\ncert_file = %s\n"
                           "key_file = %s\n" % (ca, cert, key))
        self.assertEqual((config.ca_file, config.cert_file, config.key_file),
                         (ca, cert, key))

    def test_missing_tls_file(self):
        for option in ("ca_file", "cert_file", "key_file"):
            missing = os.path.join(self.directory, "missing-" + option)
            self.assertError(MINIMAL + "[etcd]\n%s = %s\n" % (option, missing),
                             missing, "no such file", where="[etcd] " + option)

    def test_unreadable_tls_file(self):
        if os.getuid() == 0:
            # root reads every file; make the path a directory instead, which no one
            # can use as a certificate.
            path = os.path.join(self.directory, "adir")
            os.makedirs(path)
            self.assertError(MINIMAL + "[etcd]\nca_file = %s\n" % (path,),
                             "not a regular file", where="[etcd] ca_file")
        else:
            path = self.write("x", "ca.pem", mode=0)
            self.assertError(MINIMAL + "[etcd]\nca_file = %s\n" % (path,),
                             "not readable", where="[etcd] ca_file")

    def test_cert_without_key(self):
        cert = self.write("cert", "cert.pem")
        self.assertError(MINIMAL + "[etcd]\ncert_file = %s\n" % (cert,), "cert_file",
                         "both", where="[etcd] key_file")

    def test_key_without_cert(self):
        key = self.write("key", "key.pem")
        self.assertError(MINIMAL + "[etcd]\nkey_file = %s\n" % (key,), "key_file",
                         "both", where="[etcd] cert_file")

    def test_password_file(self):
        secret = self.write("s3cret-Pw\n", "password", mode=0o600)
        with capturedLogs() as events:
            config = self.load(MINIMAL + "[etcd]\nusername = shim\npassword_file = %s\n"
                               % (secret,))
        self.assertEqual(config.username, "shim")
        self.assertEqual(config.password, "s3cret-Pw")
        self.assertEqual(config.password_file, secret)
        self.assertNotIn("s3cret", repr(config))
        self.assertNotIn("s3cret", str(config))
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])

    def test_world_readable_password_file(self):
        """
        A password file every user can read loads, with one warning naming it; the
        password appears in no log event.
        """
        secret = self.write("s3cret-Pw\n", "password", mode=0o644)
        with capturedLogs() as events:
            config = self.load(MINIMAL + "[etcd]\nusername = shim\npassword_file = %s\n"
                               % (secret,))
        self.assertEqual(config.password, "s3cret-Pw")
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        text = formatEvent(warnings[0])
        self.assertIn(secret, text)
        self.assertIn("readable by every user", text)
        for event in events:
            self.assertNotIn("s3cret", formatEvent(event))
            self.assertNotIn("s3cret", repr(event))

    def test_missing_password_file(self):
        missing = os.path.join(self.directory, "nopw")
        self.assertError(MINIMAL + "[etcd]\nusername = shim\npassword_file = %s\n"
                         % (missing,), missing, "no such file",
                         where="[etcd] password_file")

    def test_empty_password_file(self):
        empty = self.write("\n", "password", mode=0o600)
        self.assertError(MINIMAL + "[etcd]\nusername = shim\npassword_file = %s\n"
                         % (empty,), "empty", where="[etcd] password_file")

    def test_username_without_password(self):
        self.assertError(MINIMAL + "[etcd]\nusername = shim\n", "missing",
                         where="[etcd] password_file")

    def test_password_without_username(self):
        secret = self.write("pw\n", "password", mode=0o600)
        self.assertError(MINIMAL + "[etcd]\npassword_file = %s\n" % (secret,),
                         "missing", where="[etcd] username")

    def test_unknown_option(self):
        self.assertError(MINIMAL + "[etcd]\npassword = x\n", "unknown option",
                         where="[etcd] password")


class BackendAndMetricsTests(ConfigTestCase):
    """
    The C{[backend]} and C{[metrics]} sections.
    """

    def test_backend_options(self):
        config = self.load(MINIMAL + "[backend]\nurl = https://sdn:8443/a%20b\n"
                           "Retries = 3\n")
        self.assertEqual(config.backend_options,
                         {"url": "https://sdn:8443/a%20b", "retries": "3"})

    def test_metrics_listen(self):
        config = self.load(MINIMAL + "[metrics]\nlisten = 127.0.0.1:9100\n")
        self.assertEqual(config.metrics_listen, ("127.0.0.1", 9100))
        config = self.load(MINIMAL + "[metrics]\nlisten = [::1]:9100\n")
        self.assertEqual(config.metrics_listen, ("::1", 9100))
        config = self.load(MINIMAL + "[metrics]\nlisten = localhost:0\n")
        self.assertEqual(config.metrics_listen, ("localhost", 0))

    def test_metrics_off(self):
        config = self.load(MINIMAL + "[metrics]\n")
        self.assertIsNone(config.metrics_listen)

    def test_metrics_bare_port_is_loopback(self):
        config = self.load(MINIMAL + "[metrics]\nlisten = 9105\n")
        self.assertEqual(config.metrics_listen, ("127.0.0.1", 9105))

    def test_new_options(self):
        config = self.load(MINIMAL)
        self.assertEqual(
            (config.bind_timeout, config.api_model, config.etcd_api,
             config.election_enabled, config.election_ttl, config.metrics_admin),
            (2.5, "net-l3vpn", "v3", True, 3, False))
        config = self.load(
            MINIMAL.replace("[shim]\n", "[shim]\nbind_timeout = 1\n"
                            "api_model = net-l3vpn-v1.0\n")
            + "[etcd]\napi = v2\n[election]\nenabled = no\nttl = 5\n"
            "[metrics]\nadmin = true\n")
        self.assertEqual(
            (config.bind_timeout, config.api_model, config.etcd_api,
             config.election_enabled, config.election_ttl, config.metrics_admin,
             config.watch_idle_timeout),
            (1.0, "net-l3vpn-v1.0", "v2", False, 5, True, 0.0))

    def test_bad_new_options(self):
        self.assertError(MINIMAL + "[election]\nttl = 0\n", "'0'", where="[election] ttl")
        self.assertError(MINIMAL + "[election]\nenabled = maybe\n", "'maybe'",
                         where="[election] enabled")
        self.assertError(MINIMAL + "[etcd]\napi = v4\n", "'v4'", where="[etcd] api")

    def test_bad_metrics_listen(self):
        for value in ("host:", ":9100", "host:port", "host:70000", "host:-1"):
            self.assertError(MINIMAL + "[metrics]\nlisten = %s\n" % (value,),
                             repr(value), "host:port", where="[metrics] listen")
