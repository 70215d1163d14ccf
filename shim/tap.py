"""
The C{twistd shimserver} command: its options, and the service it runs.

    twistd -n shimserver --config shim.conf

Everything is checked before the reactor starts: the configuration file, the backend
(found and made), and the log destination.  A problem stops start-up with one line on
standard error, C{shimserver: <file>: <where>: <what is wrong>}, and a non-zero exit
status; twistd prints the message of the L{SystemExit} raised here and nothing else.

Logging is set up here too.  twistd's L{twisted.application.app.AppLogger} starts
logging after C{makeService} has returned, and uses the application's
L{twisted.logger.ILogObserver} component when it has one; L{ShimServerService}
installs that component when twistd adds it to the application, so the shim's log
goes to C{[shim] log_file} (standard output by default) at C{[shim] log_level}, in
C{[shim] log_format}.  twistd's own C{--logfile} is therefore not used; twistd's
C{--logger} still overrides everything.

A failure that retrying cannot mend at start-up (etcd refusing the user and password,
a TLS handshake failing: L{shim.service.ShimService.start_failed}) stops twistd too:
the shim logs it, L{ShimServerService} writes C{shimserver: cannot start: <why>} on
standard error and stops the reactor, and the process exits with status 1 once twistd
has cleaned up (twistd itself has no way to set the exit status, see L{_exit_status}).
"""

import atexit
import dataclasses
import os
import sys

from twisted.application import internet
from twisted.application.service import MultiService
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from shim import __version__
from shim.backends import load_backend
from shim.config import LOG_FORMATS, LOG_LEVELS, ConfigError, load_config
from shim.logs import make_observer

DEFAULT_CONFIG = "shim.conf"


class Options(usage.Options):
    """
    The options of C{twistd shimserver}.
    """

    synopsis = "[--config FILE] [--log-level LEVEL] [--log-format FORMAT]"

    longdesc = (
        "The Gluon net-l3vpn shim layer server: watches proton's objects in etcd, "
        "binds ports on the hosts of its host_list through a vendor backend, and "
        "writes the bind results back to etcd. Everything else is set in the "
        "configuration file."
    )

    optParameters = [
        ["config", "c", None,
         "The configuration file [default: %s]." % (DEFAULT_CONFIG,)],
        ["config-file", None, None, "The same as --config."],
        ["log-level", None, None,
         "Override [shim] log_level: one of %s." % (", ".join(LOG_LEVELS),)],
        ["log-format", None, None,
         "Override [shim] log_format: one of %s." % (", ".join(LOG_FORMATS),)],
    ]

    def opt_version(self):
        """
        Print the shim's version and exit.
        """
        print("shimserver %s" % (__version__,))
        sys.exit(0)

    def postOptions(self):
        config, config_file = self["config"], self["config-file"]
        if config and config_file and config != config_file:
            raise usage.UsageError(
                "--config %s and --config-file %s disagree; give one" % (
                    config, config_file))
        self["config"] = config or config_file or DEFAULT_CONFIG
        self["config-file"] = self["config"]
        level = self["log-level"]
        if level is not None:
            if level.lower() not in LOG_LEVELS:
                raise usage.UsageError("--log-level %s: must be one of %s" % (
                    level, ", ".join(LOG_LEVELS)))
            self["log-level"] = level.lower()
        fmt = self["log-format"]
        if fmt is not None:
            if fmt.lower() not in LOG_FORMATS:
                raise usage.UsageError("--log-format %s: must be one of %s" % (
                    fmt, ", ".join(LOG_FORMATS)))
            self["log-format"] = fmt.lower()


class ShimServerService(MultiService):
    """
    The top service of C{twistd shimserver}: holds the shim's services, and gives the
    twistd application the shim's log observer.

    @ivar observer: the L{ILogObserver} the shim logs through.
    @ivar log_stream: the file the observer writes to.
    """

    def __init__(self, observer, log_stream=None):
        MultiService.__init__(self)
        self.observer = observer
        self.log_stream = log_stream

    def setServiceParent(self, parent):
        """
        Join C{parent}; when it is twistd's application (a L{Componentized}), make
        the shim's observer its log observer, which twistd starts logging to.
        """
        MultiService.setServiceParent(self, parent)
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)

    def startService(self):
        """
        Start the shim's services, and stop the process when the shim cannot start.
        """
        from twisted.internet import reactor

        MultiService.startService(self)
        shim = self.namedServices.get("shim")
        if shim is not None:
            shim.start_failed.addCallback(self.shim_failed)
        reactor.addSystemEventTrigger("after", "shutdown", _stopped_cleanly, reactor)

    def shim_failed(self, error):
        """
        The shim cannot start (C{error} says why, and the shim has logged it): say so
        in one line on standard error, stop the reactor, and make the process exit
        with status 1.
        """
        from twisted.internet import reactor

        # twistd has made sys.stderr a log stream by now; the line goes to the
        # process's own standard error, where configuration errors go too.
        stream = sys.__stderr__
        if stream is not None:
            stream.write("shimserver: cannot start: %s\n" % (error,))
            stream.flush()
        _exit_status(1, [self.log_stream])
        reactor.stop()
        return error


def _stopped_cleanly(reactor):
    """
    The shim has shut down in order: let twistd exit with status 0.

    After an orderly shutdown on SIGTERM or SIGINT, twistd sends the same signal to
    itself again (from the reactor's C{_exitSignal}), so the process would end killed
    by it; an operator or a supervisor asking the shim to stop expects 0.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def _exit_status(status, streams=()):
    """
    Make the process exit with C{status} once the interpreter is finishing.

    twistd runs the reactor, then removes its pid file and stops logging, then
    returns, and its caller exits with status 0; nothing on the way lets a service
    choose another status.  So this registers an L{atexit} handler, which runs after
    all of that, that flushes C{streams} and the standard streams and ends the
    process with C{status} at once.
    """
    def finish():
        for stream in list(streams) + [sys.stdout, sys.stderr, sys.__stdout__,
                                       sys.__stderr__]:
            try:
                if stream is not None and not stream.closed:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    atexit.register(finish)


def makeService(options):
    """
    Make the shim's service from the command line's options.

    @raise SystemExit: with a one-line message when the configuration is unusable.
    """
    try:
        return _make_service(options)
    except ConfigError as e:
        raise SystemExit("shimserver: %s" % (e,))


def _make_service(options):
    config = load_config(options["config"])
    overrides = {}
    if options.get("log-level"):
        overrides["log_level"] = options["log-level"]
    if options.get("log-format"):
        overrides["log_format"] = options["log-format"]
    if overrides:
        config = dataclasses.replace(config, **overrides)
    backend = load_backend(config)
    stream = _open_log(config)
    observer = make_observer(config.log_level, config.log_format, stream)

    from shim.service import ShimService

    top = ShimServerService(observer, stream)
    shim = ShimService(config, backend)
    shim.setName("shim")
    shim.setServiceParent(top)
    if config.metrics_listen is not None:
        _metrics_service(config, shim).setServiceParent(top)
    return top


def _open_log(config):
    """
    The stream the log goes to: standard output for C{-}, else the file, appended to.
    """
    if config.log_file == "-":
        return sys.stdout
    try:
        return open(config.log_file, "a", encoding="utf-8", buffering=1)
    except OSError as e:
        raise ConfigError(config.path, "[shim] log_file", "%s: cannot open it for "
                          "writing: %s" % (config.log_file, e.strerror or e))


def _metrics_service(config, shim):
    """
    The service answering C{/metrics} (and the other operations pages of
    L{shim.web}) at C{[metrics] listen}.
    """
    from twisted.internet import reactor

    from shim import web

    server = internet.StreamServerEndpointService(
        web.endpoint_for(config.metrics_listen, reactor), web.make_site(shim))
    server.setName("metrics")
    return server
