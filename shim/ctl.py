"""
C{shimctl}: the operator's command for a running shim, through its metrics listener
(C{[metrics] listen}, served by L{shim.web}).

  - C{shimctl status --url http://127.0.0.1:9105}: one screen from C{/readyz} and
    C{/model}: role, readiness and its reason, revision, objects per type, ports per
    binding state, the last resync and its cause, the work-queue depth, and the
    backend's calls and errors.  Exit status 0 when the shim is ready, 1 when it is
    not, 2 when it cannot be reached.
  - C{shimctl resync --url ...}: read everything from etcd again and repair the
    differences (C{POST /admin/resync}).
  - C{shimctl step-down --url ...}: the acting shim hands its role to a standby
    (C{POST /admin/step-down}).

The two actions need C{[metrics] admin = true} in the shim's configuration; they exit 0
when done, 1 when the shim refused, 2 when it cannot be reached.

A short-lived command, not part of the daemon: it uses the standard library's blocking
HTTP client.
"""

import argparse
import json
import sys
import urllib.error
import urllib.request

from shim import __version__

#: Exit statuses.
READY, NOT_READY, UNREACHABLE = 0, 1, 2

#: Where C{[metrics] listen = 9105} serves.
DEFAULT_URL = "http://127.0.0.1:9105"

#: Port binding states, in the order printed.
_STATES = ("Bound", "InUse", "Unbound")


class Unreachable(Exception):
    """
    The shim did not answer at all (refused, timed out, not HTTP).
    """


def _request(url, method="GET", timeout=5.0, headers=None):
    """
    One HTTP request: C{(status code, body text)}, whatever the status.

    @raise Unreachable: no HTTP answer came.
    """
    request = urllib.request.Request(url, method=method, headers=headers or {})
    if method == "POST":
        request.data = b""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable("%s: %s" % (url, reason)) from None


def _counts(mapping, order=None):
    """
    C{"a 1, b 2"} for C{{"a": 1, "b": 2}}, in C{order} first, then sorted.
    """
    if not mapping:
        return "none"
    names = [n for n in (order or ()) if n in mapping]
    names += sorted(n for n in mapping if n not in names)
    return ", ".join("%s %s" % (n, mapping[n]) for n in names)


def _ago(seconds):
    if seconds < 120:
        return "%.0f s ago" % (seconds,)
    if seconds < 7200:
        return "%.0f min ago" % (seconds / 60,)
    if seconds < 172800:
        return "%.1f h ago" % (seconds / 3600,)
    return "%.1f days ago" % (seconds / 86400,)


def format_status(url, ready_code, ready_text, model):
    """
    The screen C{shimctl status} prints.

    @param ready_code: C{/readyz}'s status code.
    @param ready_text: C{/readyz}'s body.
    @param model: C{/model}'s JSON, or C{None} when it could not be read.
    @rtype: str
    """
    lines = ready_text.strip().splitlines() or [""]
    role = None
    for line in lines[1:]:
        if line.startswith("role:"):
            role = line.split(":", 1)[1].strip()
    model = model or {}
    role = model.get("role", role) or "unknown"
    if ready_code == 200:
        readiness = "ready"
    else:
        reason = model.get("not_ready_reason")
        if not reason:
            first = lines[0]
            reason = first.split(":", 1)[1].strip() if ":" in first else first
        readiness = "NOT READY: %s" % (reason or "no reason given",)
    name = model.get("controller_name") or "?"
    out = ["shim %s (version %s) at %s" % (name, model.get("version", "?"), url),
           "  role          %s" % (role,),
           "  readiness     %s" % (readiness,)]
    if not model:
        out.append("  (no /model: this shim does not say more)")
        return "\n".join(out) + "\n"
    last = model.get("last_resync")
    if last:
        resync = "%s, %s" % (last.get("cause", "?"), _ago(last.get("ago", 0.0)))
    else:
        resync = "not known"
    backend = model.get("backend") or {}
    calls = backend.get("calls") or {}
    errors = {
        callback: outcomes.get("error", 0) + outcomes.get("timeout", 0)
        for callback, outcomes in calls.items()
        if outcomes.get("error", 0) + outcomes.get("timeout", 0)
    }
    out += [
        "  revision      %s" % (model.get("revision"),),
        "  objects       %s" % (_counts(model.get("objects")),),
        "  ports         %s" % (_counts(model.get("ports"), _STATES),),
        "  last resync   %s" % (resync,),
        "  work queue    %s objects" % (model.get("queue_depth", "?"),),
        "  backend       %s calls, %s errors or timeouts"
        % (backend.get("total", 0), backend.get("errors", 0)),
    ]
    for callback in sorted(calls):
        out.append("    %-24s %s" % (callback, _counts(calls[callback])))
    if errors:
        out.append("  failing       %s" % (_counts(errors),))
    return "\n".join(out) + "\n"


def status(url, timeout, as_json=False, out=None, err=None):
    """
    C{shimctl status}: print the screen; return the exit status.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        code, text = _request(url + "/readyz", timeout=timeout)
        model_code, model_text = _request(url + "/model", timeout=timeout)
    except Unreachable as e:
        print("shimctl: cannot reach the shim: %s" % (e,), file=err)
        return UNREACHABLE
    if code not in (200, 503):
        print("shimctl: %s/readyz answered %d: %s" % (url, code, text.strip()),
              file=err)
        return UNREACHABLE
    model = None
    if model_code == 200:
        try:
            model = json.loads(model_text)
        except ValueError:
            print("shimctl: %s/model is not JSON" % (url,), file=err)
    if as_json:
        out.write(json.dumps(
            {"ready": code == 200, "readyz": text, "model": model},
            indent=2, sort_keys=True) + "\n")
    else:
        out.write(format_status(url, code, text, model))
    return READY if code == 200 else NOT_READY


def act(url, action, timeout, out=None, err=None):
    """
    C{shimctl resync} or C{shimctl step-down}: POST C{/admin/<action>}; return the
    exit status.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        code, text = _request(
            url + "/admin/" + action, method="POST", timeout=timeout,
            headers={"X-Shim-Admin": "shimctl %s" % (__version__,)},
        )
    except Unreachable as e:
        print("shimctl: cannot reach the shim: %s" % (e,), file=err)
        return UNREACHABLE
    if 200 <= code < 300:
        out.write(text if text.endswith("\n") else text + "\n")
        return 0
    if code == 404:
        text = "this shim has no /admin/%s (an older version?)" % (action,)
    print("shimctl: %s refused (%d): %s" % (action, code, text.strip()),
          file=err)
    return 1


def parser():
    p = argparse.ArgumentParser(
        prog="shimctl",
        description="Ask a running shim how it is doing, or act on it, through its "
                    "metrics listener ([metrics] listen).",
    )
    p.add_argument("--version", action="version", version="shimctl " + __version__)
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, what in (
        ("status", "one screen on the shim's state; exit 0 ready, 1 not ready, "
                   "2 unreachable"),
        ("resync", "read everything from etcd again and repair the differences "
                   "(needs [metrics] admin = true)"),
        ("step-down", "hand the acting role to a standby (needs [metrics] admin = "
                      "true)"),
    ):
        c = commands.add_parser(name, help=what, description=what)
        c.add_argument("--url", default=DEFAULT_URL,
                       help="the shim's metrics listener (default %(default)s)")
        c.add_argument("--timeout", type=float, default=5.0,
                       help="seconds to wait for an answer (default %(default)s)")
        if name == "status":
            c.add_argument("--json", action="store_true",
                           help="print /readyz and /model as JSON instead")
    return p


def main(argv=None, out=None, err=None):
    """
    The C{shimctl} console script: returns its exit status (the console script's
    wrapper exits with it).
    """
    args = parser().parse_args(argv)
    url = args.url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if args.command == "status":
        return status(url, args.timeout, as_json=args.json, out=out, err=err)
    return act(url, args.command, args.timeout, out=out, err=err)


if __name__ == "__main__":
    sys.exit(main())
