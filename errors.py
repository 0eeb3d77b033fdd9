"""Expected errors: one line on stderr, exit status 2, never a traceback."""

import os
import sys


class UserError(Exception):
    """Something the user can fix: a bad flag, config value, prompt or checkpoint."""


def run_main(main):
    """Run a script's main(); turn UserError and Ctrl-C into one line and an exit status.

    Under torchrun each process prints its own line, naming its rank where that is not 0.
    """
    try:
        main()
    except UserError as error:
        rank = os.environ.get("RANK", "0")
        print(f"error: {error}" if rank == "0" else f"error (rank {rank}): {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
