"""
The exceptions raised by the etcd client.

Every failure of a call to etcd becomes an L{EtcdError} carrying etcd's gRPC status
code (or C{None} when etcd never answered) and a message that names the call and the
endpoint, so a log line alone tells an operator what failed where. The subclasses let
callers react to the conditions they can do something about (retry on
L{ConnectionFailed}/L{Timeout}/L{Unavailable}, resynchronise on L{Compacted}, ...).
"""

# gRPC status codes etcd puts in the "code" field of its error JSON.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16


class EtcdError(Exception):
    """
    A call to etcd failed.

    @ivar code: etcd's gRPC status code, or C{None} when there is none (no answer).
    @ivar message: a human-readable description naming the call and the endpoint.
    """

    def __init__(self, code=None, message=""):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return self.message

    def __repr__(self):
        return "%s(code=%r, message=%r)" % (type(self).__name__, self.code, self.message)


class ConnectionFailed(EtcdError):
    """No endpoint could be reached, or the connection broke before an answer."""


class TLSFailed(ConnectionFailed):
    """
    The TLS handshake with an endpoint failed: an untrusted server certificate, a client
    certificate the server refused, or a name mismatch.  Retrying does not mend it.
    """


class Timeout(EtcdError):
    """etcd did not answer within the call's timeout (or reported a deadline)."""


class Compacted(EtcdError):
    """
    The requested revision has been compacted away.

    @ivar compact_revision: the oldest revision still available, when etcd said
        (watches say; unary range calls do not, then it is C{None}).
    """

    def __init__(self, compact_revision=None, message=None, code=OUT_OF_RANGE):
        if message is None:
            message = "etcd: revision compacted (compact_revision=%s)" % (compact_revision,)
        EtcdError.__init__(self, code, message)
        self.compact_revision = compact_revision

    def __repr__(self):
        return "Compacted(compact_revision=%r, message=%r)" % (
            self.compact_revision, self.message)


class AuthFailed(EtcdError):
    """Authentication failed: wrong user/password, invalid token, permission denied."""


class RequestTooLarge(EtcdError):
    """The request exceeded etcd's or the gateway's size limit."""


class Unavailable(EtcdError):
    """etcd is up but cannot serve the request now (no leader, request timed out, ...)."""


class NotFound(EtcdError):
    """The object (for instance a lease) does not exist."""


class MessageTooLarge(EtcdError):
    """
    One message of a watch stream is larger than the client accepts
    (L{shim.etcd.watch.MAX_WATCH_MESSAGE}).  Resuming would read it again: the
    caller resynchronises fully instead.
    """


def is_auth_refusal(text):
    """
    Whether etcd's text (a watch's C{cancel_reason}, an error message) says that our
    credentials or permissions were refused: an invalid or expired token, no user
    name (a token etcd no longer knows), permission denied, a token older than the
    last change of users and roles.
    """
    lower = (text or "").lower()
    return ("invalid auth token" in lower or "user name is empty" in lower
            or "permission denied" in lower or "auth token" in lower
            or "unauthenticated" in lower or "authentication failed" in lower
            or "permissiondenied" in lower or "auth store is old" in lower)


def is_invalid_token(error):
    """
    Whether C{error} says our auth token is no longer accepted, so that a fresh
    authentication and one retry may succeed.
    """
    if not isinstance(error, EtcdError):
        return False
    text = error.message
    return ("invalid auth token" in text or "user name is empty" in text
            or error.code == UNAUTHENTICATED)


def error_from_status(code, message, call, endpoint):
    """
    Turn etcd's error report into the matching L{EtcdError} subclass.

    @param code: the gRPC status code from etcd's error JSON (int or C{None}).
    @param message: etcd's error message.
    @param call: the name of the client call, for the message.
    @param endpoint: the endpoint that answered, for the message.
    """
    text = "etcd %s at %s failed: %s (code %s)" % (call, endpoint, message, code)
    lower = (message or "").lower()
    if "request is too large" in lower or "larger than max" in lower:
        return RequestTooLarge(code, text)
    if "compacted" in lower:
        return Compacted(None, text, code if code is not None else OUT_OF_RANGE)
    if (code in (UNAUTHENTICATED, PERMISSION_DENIED) or "authentication" in lower
            or "auth token" in lower or "user name is empty" in lower
            or "permission denied" in lower):
        return AuthFailed(code, text)
    if code == DEADLINE_EXCEEDED:
        return Timeout(code, text)
    if code == UNAVAILABLE:
        return Unavailable(code, text)
    if code == NOT_FOUND:
        return NotFound(code, text)
    return EtcdError(code, text)


def describe_failure(failure):
    """
    A short text for a connection failure: the web client wraps its reasons in
    lists of Failures, which would otherwise print as their reprs.
    """
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(describe_failure(r) for r in reasons)
    text = str(value) or type(value).__name__
    return text
