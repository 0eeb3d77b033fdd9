"""Expected errors: one line on stderr, exit status 2, never a traceback."""

import argparse
import os
import sys

import torch.distributed as dist


class UserError(Exception):
    """Something the user can fix: a bad flag, config value, prompt or checkpoint."""


LONGEST_LINE = 600  # characters of an error line; what a user typed is echoed at most ECHOED long
ECHOED = 120


def shorten(text, limit=ECHOED):
    """`text` as typed, or its start and end around ' ... ' when longer than `limit` characters."""
    text = str(text)
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def one_line(text):
    """Newlines flattened and the length capped: an error is always one line a terminal can show."""
    return shorten(" ".join(str(text).split()), LONGEST_LINE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line gets one line pointing to --help instead of the usage,
    that a flag given as an empty string is refused (an empty --output_dir would be the current folder), and
    that a numeric flag may carry its range: add_argument(..., between=(lowest, highest, why)); a value
    outside it, inf and nan included, is refused before any work."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.ranges = {}

    def add_argument(self, *names, between=None, **kwargs):
        action = super().add_argument(*names, **kwargs)
        if between is not None:
            self.ranges[action.dest] = (action.option_strings[0], *between)
        return action

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for action in self._actions:
            if action.option_strings and getattr(parsed, action.dest, None) == "":
                self.error(f"{action.option_strings[0]} is empty; give a value or leave the flag out")
        for dest, (flag, lowest, highest, why) in self.ranges.items():
            value = getattr(parsed, dest)
            if value is not None and not lowest <= value <= highest:
                self.error(f"{flag} must be between {lowest:,} and {highest:,} ({why}), got {shorten(value)}")
        return parsed

    def error(self, message):
        self.exit(2, f"error: {one_line(message)}; see {self.prog} --help\n")


def run_main(main):
    """Run a script's main(); turn UserError and Ctrl-C into one line and an exit status.

    Under torchrun each process prints its own line, naming its rank where that is not 0.
    """
    try:
        main()
    except UserError as error:
        rank = os.environ.get("RANK", "0")
        line = one_line(error)
        print(f"error: {line}" if rank == "0" else f"error (rank {rank}): {line}", file=sys.stderr)
        leave_process_group()
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        leave_process_group()
        sys.exit(130)


def leave_process_group():
    """Under torchrun, close this process's connections before exiting on an error. Left to the
    interpreter's exit, a process could still be tearing its group down when the other one closed
    its side, and gloo then aborted it (exit -6 instead of 2, seen once in CI)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
