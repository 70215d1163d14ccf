"""
Calling the vendor's backend.

Every callback may return a plain value or a Deferred.  L{BackendCaller} gives each call
a time limit, logs an exception, a failed Deferred or a time-out with the callback's name
and the object it was about, counts the outcome, and hands the caller a result that never
fails: C{(True, value)} or C{(False, None)}, at once when the callback answered at once.
A misbehaving backend therefore never stops the shim nor corrupts its model.
"""

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.python.failure import Failure
from twisted.logger import Logger

OK = "ok"
REJECTED = "rejected"
ERROR = "error"
TIMEOUT = "timeout"


class BackendCaller:
    """
    Calls one backend's callbacks with a per-call time limit.
    """

    log = Logger()

    def __init__(self, backend, timeout, clock, metrics, bind_timeout=None):
        self.backend = backend
        self.timeout = timeout
        #: C{bind_port} has a time limit of its own, short enough that a retry still
        #: fits in proton's 8 s wait.
        self.bind_timeout = bind_timeout if bind_timeout is not None else timeout
        self._clock = clock
        self._metrics = metrics

    def limit(self, callback):
        """
        The time limit of C{callback}.
        """
        return self.bind_timeout if callback == "bind_port" else self.timeout

    def malformed(self, callback, about, answer, problem):
        """
        Count and log an answer that cannot be used: a failed call.
        """
        self._metrics.child(self._metrics.callbacks, callback, ERROR).inc()
        self.log.error(
            "backend {callback} for {about} answered {answer!r}, which cannot be used: "
            "{problem}; trying again later",
            callback=callback, about=about, answer=_short(answer), problem=problem,
        )

    def call(self, callback, about, *args):
        """
        Call C{backend.<callback>(*args)}.

        @param about: what the call is about, for the log (e.g. C{"port <uuid>"}).
        @return: C{(True, value)}, or C{(False, None)} when the callback raised,
            failed or did not answer within the time limit; a Deferred firing with
            that when the callback returned a Deferred that has not fired yet.  (Most
            callbacks answer at once, and the event path then costs no Deferred.)
        """
        started = self._clock.seconds()
        try:
            value = getattr(self.backend, callback)(*args)
        except Exception:
            return self._failed(Failure(), callback, about, started)
        if not isinstance(value, Deferred):
            return self._succeeded(value, callback, started)
        if not value.called:
            value.addTimeout(self.limit(callback), self._clock)
        value.addCallbacks(
            self._succeeded, self._failed,
            callbackArgs=(callback, started), errbackArgs=(callback, about, started),
        )
        return value

    def _succeeded(self, value, callback, started):
        # An empty answer to bind_port is the backend refusing the port.
        outcome = REJECTED if callback == "bind_port" and not value else OK
        self._record(callback, outcome, started)
        return (True, value)

    def _failed(self, failure, callback, about, started):
        if failure.check(TimeoutError, CancelledError):
            self._record(callback, TIMEOUT, started)
            if type(failure.value) not in (TimeoutError, CancelledError):
                # The backend's own time-out (a subclass) says what timed out.
                self.log.error(
                    "backend {callback} for {about} timed out: {reason}",
                    callback=callback, about=about, reason=failure.getErrorMessage(),
                )
                return (False, None)
            self.log.error(
                "backend {callback} for {about} did not answer within {timeout}s",
                callback=callback, about=about, timeout=self.limit(callback),
            )
        else:
            self._record(callback, ERROR, started)
            self.log.failure(
                "backend {callback} for {about} failed", failure,
                callback=callback, about=about,
            )
        return (False, None)

    def _record(self, callback, outcome, started):
        m = self._metrics
        m.child(m.callbacks, callback, outcome).inc()
        m.child(m.callback_latency, callback).observe(self._clock.seconds() - started)


def _short(answer, limit=200):
    """
    An answer as shown in the log: its repr, cut to C{limit} characters.
    """
    try:
        text = repr(answer)
    except Exception as e:
        text = "<unprintable %s: %r>" % (type(answer).__name__, e)
    return text if len(text) <= limit else text[:limit] + "..."
