"""
C{shimserver}: the seed's own command, C{shimserver --config-file=shim.conf}.

It runs the same service as C{twistd -n shimserver --config shim.conf}, in the
foreground, through twistd itself: the options after the command name are
C{shimserver}'s own (C{--config}, C{--config-file}, C{--log-level},
C{--log-format}), and twistd's exit status is the command's.
"""

import sys

from twisted.scripts.twistd import run


def main(argv=None):
    """
    Run the shim in the foreground as C{twistd --nodaemon shimserver ARGS}.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["shimserver", "--nodaemon", "--pidfile=", "shimserver"] + args
    run()


if __name__ == "__main__":
    main()
