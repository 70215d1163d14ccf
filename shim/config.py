"""
The shim's configuration file (C{shim.conf}) read into a L{ShimConfig}.

The file is an INI file read with the standard library's L{configparser}, without
interpolation (a C{%} in a URL or a path means itself).  Sections:

  - C{[shim]}: who this shim is, which hosts it binds for, where etcd is, which backend
    it drives, and how it logs.
  - C{[etcd]}: timeouts, TLS and authentication of the etcd connection.
  - C{[backend]}: free-form options handed to the backend class as a dict of strings.
  - C{[metrics]}: where to serve Prometheus metrics (off when absent).

Every problem is reported as one L{ConfigError} whose text is a single line naming the
file, the section and option, and what is wrong, so that an operator can fix it without
reading a traceback.
"""

import ast
import configparser
import math
import os
import stat
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twisted.logger import Logger

log = Logger()

#: Values of C{[shim] log_level}, most verbose first.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

#: Values of C{[shim] log_format}.
LOG_FORMATS = ("text", "json")

#: The model generations proton writes: the seed's (2016) and Gluon 1.x's (2017).
API_MODELS = ("net-l3vpn", "net-l3vpn-v1.0")

#: The etcd APIs the shim speaks.
ETCD_APIS = ("v3", "v2")

#: The host_list value meaning "every host".
ALL_HOSTS = "*"


class ConfigError(Exception):
    """
    The configuration file cannot be used.  C{str()} is one line: the file, where in
    it, and what is wrong.
    """

    def __init__(self, path, where, problem):
        """
        @param path: the configuration file's path.
        @param where: C{"[section] option"}, C{"[section]"}, or C{None} for the whole
            file.
        @param problem: what is wrong, and where useful, what to do about it.
        """
        self.path = path
        self.where = where
        self.problem = " ".join(str(problem).split())
        Exception.__init__(self, str(self))

    def __str__(self):
        if self.where:
            return "%s: %s: %s" % (self.path, self.where, self.problem)
        return "%s: %s" % (self.path, self.problem)


@dataclass(frozen=True)
class ShimConfig:
    """
    A checked configuration.  Every value has its final type; optional paths and
    credentials are C{None} when not configured.

    @ivar host_list: the hosts this shim binds ports for, as a tuple; C{("*",)} means
        every host.
    @ivar etcd_endpoints: a tuple of C{scheme://host:port} URLs.
    @ivar backend_options: the C{[backend]} section, option name to string.
    @ivar metrics_listen: C{(host, port)} for the metrics endpoint, or C{None}.
    @ivar password: the etcd password read from C{password_file}; never shown by
        C{repr()}.
    """

    path: str
    controller_name: str
    host_list: tuple
    etcd_endpoints: tuple
    backend: str = "dummy"
    backend_timeout: float = 30.0
    resync_interval: float = 600.0
    log_level: str = "info"
    log_format: str = "text"
    log_file: str = "-"
    etcd_timeout: float = 5.0
    watch_idle_timeout: float = 1500.0
    ca_file: str = None
    cert_file: str = None
    key_file: str = None
    username: str = None
    password_file: str = None
    password: str = field(default=None, repr=False)
    backend_options: dict = field(default_factory=dict)
    metrics_listen: tuple = None
    bind_timeout: float = 2.5
    api_model: str = "net-l3vpn"
    etcd_api: str = "v3"
    election_enabled: bool = True
    election_ttl: int = 3
    metrics_admin: bool = False

    @property
    def all_hosts(self):
        """
        Whether this shim binds ports on every host (C{host_list = *}).
        """
        return ALL_HOSTS in self.host_list

    def is_our_host(self, host):
        """
        Whether a bind request for C{host} is this shim's to answer.  An empty or
        missing host is nobody's.
        """
        if not host:
            return False
        return self.all_hosts or host in self.host_list


def load_config(path):
    """
    Read and check the configuration file at C{path}.

    @return: a L{ShimConfig}.
    @raise ConfigError: the file is missing, unreadable, not an INI file, or one of
        its values is wrong.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as e:
        raise ConfigError(path, None, "cannot read the configuration file: %s"
                          % (e.strerror or e,))
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, "not UTF-8 text: %s" % (e.reason,))
    except configparser.Error as e:
        raise ConfigError(path, None, "syntax error: %s" % (_parser_problem(e),))
    return _Reader(path, parser).read()


def _parser_problem(error):
    """
    One line describing a configparser error, without repeating the file name.
    """
    if isinstance(error, configparser.MissingSectionHeaderError):
        return "line %d: %r comes before any [section] header" % (
            error.lineno, error.line.strip())
    if isinstance(error, configparser.DuplicateOptionError):
        return "line %d: option %r appears twice in [%s]" % (
            error.lineno, error.option, error.section)
    if isinstance(error, configparser.DuplicateSectionError):
        return "line %d: section [%s] appears twice" % (error.lineno, error.section)
    if isinstance(error, configparser.ParsingError):
        lines = ", ".join("line %d: %r" % (n, _unrepr(text).strip())
                          for n, text in error.errors)
        return "cannot parse %s" % (lines,)
    return str(error)


def _unrepr(text):
    """
    configparser keeps a bad line as its repr(); the line itself.
    """
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


class _Reader:
    """
    Reads the options of one parsed file, turning each problem into a L{ConfigError}.
    """

    SHIM_OPTIONS = frozenset([
        "controller_name", "host_list", "etcd_endpoints", "etcd_host", "etcd_port",
        "backend", "backend_timeout", "resync_interval", "log_level", "log_format",
        "log_file", "bind_timeout", "api_model",
    ])
    ETCD_OPTIONS = frozenset([
        "timeout", "watch_idle_timeout", "ca_file", "cert_file", "key_file",
        "username", "password_file", "api",
    ])
    ELECTION_OPTIONS = frozenset(["enabled", "ttl"])
    METRICS_OPTIONS = frozenset(["listen", "admin"])

    def __init__(self, path, parser):
        self.path = path
        self.parser = parser

    def error(self, section, option, problem):
        where = "[%s] %s" % (section, option) if option else "[%s]" % (section,)
        return ConfigError(self.path, where, problem)

    def get(self, section, option, default=None):
        """
        The stripped value of an option, or C{default} when it is absent or empty.
        """
        if not self.parser.has_option(section, option):
            return default
        value = self.parser.get(section, option).strip()
        return value if value else default

    def read(self):
        if not self.parser.has_section("shim"):
            raise ConfigError(self.path, "[shim]", "section missing; it must name at "
                              "least controller_name and host_list")
        known = {"shim": self.SHIM_OPTIONS, "etcd": self.ETCD_OPTIONS,
                 "election": self.ELECTION_OPTIONS, "metrics": self.METRICS_OPTIONS}
        for section, options in known.items():
            if not self.parser.has_section(section):
                continue
            for option in self.parser.options(section):
                if option not in options:
                    raise self.error(section, option, "unknown option; known options "
                                     "are " + ", ".join(sorted(options)))
        for section in self.parser.sections():
            if section not in known and section != "backend":
                raise ConfigError(self.path, "[%s]" % (section,), "unknown section; "
                                  "known sections are [shim], [etcd], [election], "
                                  "[backend], [metrics]")

        username, password_file, password = self.credentials()
        cert_file = self.readable_file("etcd", "cert_file")
        key_file = self.readable_file("etcd", "key_file")
        if (cert_file is None) != (key_file is None):
            missing = "key_file" if key_file is None else "cert_file"
            present = "cert_file" if key_file is None else "key_file"
            raise self.error("etcd", missing, "missing; %s is set, and a client "
                             "certificate needs both cert_file and key_file" % (present,))
        config = ShimConfig(
            path=self.path,
            controller_name=self.controller_name(),
            host_list=self.host_list(),
            etcd_endpoints=self.endpoints(),
            backend=self.get("shim", "backend", "dummy"),
            backend_timeout=self.seconds("shim", "backend_timeout", 30.0, zero=False),
            bind_timeout=self.seconds("shim", "bind_timeout", 2.5, zero=False),
            api_model=self.choice("shim", "api_model", API_MODELS, API_MODELS[0]),
            etcd_api=self.choice("etcd", "api", ETCD_APIS, "v3"),
            election_enabled=self.boolean("election", "enabled", True),
            election_ttl=self.whole_seconds("election", "ttl", 3),
            metrics_admin=self.boolean("metrics", "admin", False),
            resync_interval=self.seconds("shim", "resync_interval", 600.0),
            log_level=self.choice("shim", "log_level", LOG_LEVELS, "info"),
            log_format=self.choice("shim", "log_format", LOG_FORMATS, "text"),
            log_file=self.get("shim", "log_file", "-"),
            etcd_timeout=self.seconds("etcd", "timeout", 5.0, zero=False),
            # v2 sends no progress notifications: a quiet v2 watch is not a dead one.
            # v3: after sending a watch events, etcd skips its next notification, so
            # a quiet watch may hear nothing for twice etcd's interval (default 10
            # minutes, plus up to a tenth of jitter): 1,320 s.
            watch_idle_timeout=self.seconds(
                "etcd", "watch_idle_timeout",
                0.0 if self.choice("etcd", "api", ETCD_APIS, "v3") == "v2" else 1500.0),
            ca_file=self.readable_file("etcd", "ca_file"),
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password_file=password_file,
            password=password,
            backend_options=self.backend_options(),
            metrics_listen=self.metrics_listen(),
        )
        return config

    # -- [shim]

    def controller_name(self):
        name = self.get("shim", "controller_name")
        if name is None:
            raise self.error("shim", "controller_name", "missing or empty; name this "
                             "shim (it is written into every bind result)")
        return name

    def host_list(self):
        if not self.parser.has_option("shim", "host_list"):
            raise self.error("shim", "host_list", "missing; list the compute hosts this "
                             "shim binds ports for, or * for every host")
        hosts = _split(self.parser.get("shim", "host_list"))
        if not hosts:
            raise self.error("shim", "host_list", "empty; list at least one host or *")
        if ALL_HOSTS in hosts and len(hosts) > 1:
            raise self.error("shim", "host_list", "* means every host and must stand "
                             "alone, not beside other host names")
        for host in hosts:
            if any(c.isspace() for c in host):
                raise self.error("shim", "host_list", "host %r contains white space; "
                                 "separate host names with commas" % (host,))
        return tuple(dict.fromkeys(hosts))

    def endpoints(self):
        if self.parser.has_option("shim", "etcd_endpoints"):
            urls = _split(self.parser.get("shim", "etcd_endpoints"))
            if not urls:
                raise self.error("shim", "etcd_endpoints", "empty; list at least one "
                                 "URL such as http://127.0.0.1:2379")
            return tuple(self.endpoint(url) for url in urls)
        host = self.get("shim", "etcd_host", "127.0.0.1")
        port = self.get("shim", "etcd_port", "2379")
        try:
            number = int(port)
        except ValueError:
            number = 0
        if not 0 < number < 65536:
            raise self.error("shim", "etcd_port", "%r is not a port number "
                             "(1-65535)" % (port,))
        if ":" in host and not host.startswith("["):
            host = "[%s]" % (host,)
        return (self.endpoint("http://%s:%d" % (host, number), "etcd_host"),)

    def endpoint(self, url, option="etcd_endpoints"):
        """
        Check one etcd URL: C{http} or C{https}, a host and a port, nothing else.
        """
        def bad(problem):
            return self.error("shim", option, "bad URL %r: %s" % (url, problem))

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise bad("the scheme must be http or https, as in http://127.0.0.1:2379")
        if not parts.hostname:
            raise bad("no host")
        try:
            port = parts.port
        except ValueError:
            raise bad("the port is not a number from 1 to 65535")
        if not port:
            raise bad("no port; etcd's client port is usually 2379")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise bad("only scheme://host:port is allowed, without a path")
        if parts.username or parts.password:
            raise bad("put credentials in [etcd] username and password_file, "
                      "not in the URL")
        return "%s://%s" % (parts.scheme, parts.netloc)

    def seconds(self, section, option, default, zero=True):
        """
        A number of seconds: C{> 0}, or C{>= 0} when C{zero} (0 turning it off).
        """
        text = self.get(section, option)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or math.isnan(value) or math.isinf(value):
            raise self.error(section, option, "%r is not a number of seconds" % (text,))
        if value < 0 or (value == 0 and not zero):
            raise self.error(section, option, "%s seconds: must be %s" % (
                text, "0 (off) or more" if zero else "more than 0"))
        return value

    def choice(self, section, option, choices, default):
        value = self.get(section, option)
        if value is None:
            return default
        if value.lower() not in choices:
            raise self.error(section, option, "%r is not one of %s" % (
                value, ", ".join(choices)))
        return value.lower()

    def boolean(self, section, option, default):
        text = self.get(section, option)
        if text is None:
            return default
        value = text.lower()
        if value in ("true", "yes", "on", "1"):
            return True
        if value in ("false", "no", "off", "0"):
            return False
        raise self.error(section, option, "%r is not true or false" % (text,))

    def whole_seconds(self, section, option, default):
        text = self.get(section, option)
        if text is None:
            return default
        if not text.isdigit() or int(text) < 1:
            raise self.error(section, option, "%r is not a whole number of seconds, "
                             "1 or more" % (text,))
        return int(text)

    # -- [etcd]

    def readable_file(self, section, option):
        path = self.get(section, option)
        if path is None:
            return None
        if not os.path.exists(path):
            raise self.error(section, option, "%s: no such file" % (path,))
        if not os.path.isfile(path):
            raise self.error(section, option, "%s: not a regular file" % (path,))
        if not os.access(path, os.R_OK):
            raise self.error(section, option, "%s: not readable by this process"
                             % (path,))
        return path

    def credentials(self):
        """
        The etcd user name, password file and password; all C{None} without auth.
        """
        username = self.get("etcd", "username")
        password_file = self.readable_file("etcd", "password_file")
        if username is None and password_file is None:
            return None, None, None
        if username is None:
            raise self.error("etcd", "username", "missing; password_file is set, and "
                             "etcd authentication needs both")
        if password_file is None:
            raise self.error("etcd", "password_file", "missing; username is set, and "
                             "etcd authentication needs a file holding the password")
        try:
            with open(password_file, encoding="utf-8") as f:
                password = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise self.error("etcd", "password_file", "%s: cannot read it: %s" % (
                password_file, getattr(e, "strerror", None) or e))
        password = password.rstrip("\r\n")
        if not password:
            raise self.error("etcd", "password_file", "%s: empty" % (password_file,))
        mode = os.stat(password_file).st_mode
        if mode & stat.S_IROTH:
            log.warn(
                "{path}: [etcd] password_file {password_file} is readable by every user "
                "(mode {mode}); chmod o-r it",
                path=self.path, password_file=password_file,
                mode=oct(stat.S_IMODE(mode)),
            )
        return username, password_file, password

    # -- [backend] and [metrics]

    def backend_options(self):
        if not self.parser.has_section("backend"):
            return {}
        return {name: value for name, value in self.parser.items("backend")}

    def metrics_listen(self):
        text = self.get("metrics", "listen")
        if text is None:
            return None
        if text.isdigit():
            # A bare port: loopback only, since the listener may serve admin actions.
            text = "127.0.0.1:" + text
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            number = int(port)
        except ValueError:
            number = -1
        if not sep or not host or not port.isdigit() or not 0 <= number < 65536:
            raise self.error("metrics", "listen", "%r is not host:port, as in "
                             "127.0.0.1:9100 (port 0: any free port)" % (text,))
        return (host, number)


def _split(text):
    """
    The non-empty, stripped items of a comma-separated list.
    """
    return [item.strip() for item in text.split(",") if item.strip()]
