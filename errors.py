"""Expected errors: one line on stderr, exit status 2, never a traceback."""

import sys


class UserError(Exception):
    """Something the user can fix: a bad flag, config value, prompt or checkpoint."""


def run_main(main):
    """Run a script's main(); turn UserError and Ctrl-C into one line and an exit status."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
