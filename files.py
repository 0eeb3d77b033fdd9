"""Writing files without losing any: atomic writes, one writer per output folder, folders checked first.

Every file the project writes goes through atomic_write: a temporary file beside the target is
filled, flushed, fsynced and renamed over it, so a kill at any moment leaves the old file or the
new one, never half of one.
"""

import fcntl
import os
import tempfile
from pathlib import Path

from errors import UserError


def atomic_write(path, write):
    """Create or replace `path` so that a kill at any moment leaves either the old file or the new one.

    write(f) fills a temporary file beside `path` (opened "wb"); it is flushed, fsynced and renamed
    over `path`, and the folder is fsynced so that the rename itself survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def lock_output_dir(path):
    """Hold OUTPUT_DIR/.lock for as long as this process runs: a second trainer on the same folder is
    refused with one line instead of interleaving checkpoints. The lock (flock) dies with its process,
    so a killed run never leaves a stale one. Then sweep temporary files that killed writers left."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another run is writing to {path}; wait for it or choose another --output_dir")
    for stale in path.glob(".*.tmp"):  # no other writer holds the folder: these are left by killed ones
        stale.unlink(missing_ok=True)
    return handle  # keep it open: closing it releases the lock


def check_output_dir(path):
    """Refuse, before any work, an output folder that cannot be written: a file, under a file, read-only."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise UserError(f"--output_dir {path}: {part} is a file, not a folder; choose another --output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # a file can be made there
    except OSError as error:
        raise UserError(f"--output_dir {path} cannot be written ({error.strerror}); choose another --output_dir")
