"""
The shim's log observer: text or JSON lines, filtered by level.
"""

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)


def make_observer(level, fmt, stream):
    """
    A log observer writing the events at C{level} or above to C{stream}.

    @param level: C{"debug"}, C{"info"}, C{"warn"}, C{"error"} or C{"critical"}.
    @param fmt: C{"text"} for Twisted's usual one line per event, or C{"json"} for
        one JSON object per line (for log collectors).
    @param stream: a text file, such as C{sys.stdout}.  It is bound now: twistd later
        replaces C{sys.stdout} with a file that logs, and writing the log to that
        would loop.
    @return: a L{twisted.logger.ILogObserver}.
    @raise ValueError: an unknown level or format.
    """
    try:
        log_level = LogLevel.levelWithName(level)
    except Exception:
        raise ValueError("unknown log level %r" % (level,)) from None
    if fmt == "text":
        observer = textFileLogObserver(stream)
    elif fmt == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        raise ValueError("unknown log format %r" % (fmt,))
    predicate = LogLevelFilterPredicate(defaultLogLevel=log_level)
    return FilteringLogObserver(observer, [predicate])
