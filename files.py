"""Every file the project writes, and the checks on the folders it writes into.

Nothing already written is lost and nothing outside the output folder is touched:
  - a file is written whole to a temporary file beside it, flushed, synced and renamed over the
    target (atomic_write), so a kill leaves the old file or the new one, never a part; the rename
    replaces a symbolic link at the target instead of writing through it, and the new file gets
    the replaced file's mode, or the umask's for a new one;
  - the temporary files are named `.<name>.<random>.dalle-tmp`, and the sweep of those a killed
    writer left deletes only names of that pattern;
  - a trainer holds OUTPUT_DIR/.lock, and starts over a folder that holds a run only when told to.
"""

import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from errors import UserError, shorten

TEMPORARY_SUFFIX = ".dalle-tmp"
MIN_FREE_BYTES = 64 * 2**20  # an output folder with less free space than this is refused before any work
RUN_FILES = ("latest.pt", "metrics.csv")  # a folder holding one of these, or a numbered checkpoint, holds a run


def describe(path):
    """What is at `path`, in a few words, for an error line: 'not found', 'a folder', 'an ELF executable' ..."""
    path = Path(path)
    if not path.exists():
        return "not found"
    if path.is_dir():
        return "a folder, not a file"
    if not path.is_file():
        return "not a regular file (a device, pipe or socket)"
    with path.open("rb") as f:
        head = f.read(512)
    kinds = {b"\x7fELF": "an ELF executable", b"\x89PNG": "a PNG image", b"\x1f\x8b": "a gzip file",
             b"PK\x03\x04": "a zip archive", b"%PDF": "a PDF document", b"\xff\xd8\xff": "a JPEG image"}  # fmt: skip
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return kind
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data"
    return "a text file"


def _temporary(path, mode):
    """A new file beside `path` with a name only this module makes; (descriptor, its path)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}{TEMPORARY_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode), tmp
        except FileExistsError:
            continue
    raise UserError(f"cannot make a temporary file in {path.parent}; it is full of them")


def _kept_mode(path):
    """The mode of the regular file being replaced, or None (a new file, or a link being replaced)."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    return stat.S_IMODE(status.st_mode) if stat.S_ISREG(status.st_mode) else None


def atomic_write(path, write):
    """Create or replace `path` so that a kill at any moment leaves either the old file or the new one.

    write(f) fills a temporary file beside `path` (opened "wb"); it is flushed, fsynced and renamed
    over `path`, and the folder is fsynced so that the rename itself survives a power cut. A link at
    `path` is replaced, never followed. A failure (a full disk) is one line, and the old file stays.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary(path, 0o666)  # 0o666 less the umask, as open() would give
    except OSError as error:
        raise UserError(f"cannot write {shorten(path)}: {error.strerror}; choose another --output_dir")
    try:
        mode = _kept_mode(path)
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UserError(f"cannot write {shorten(path)}: {error.strerror}; the previous file, if any, is unchanged")
        raise
    _sync_folder(path.parent)


def _sync_folder(folder):
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(path, text):
    """atomic_write for text (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_text(path, text):
    """Append to a file this run created; a link put in its place is refused, not followed."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except OSError as error:
        raise UserError(f"cannot append to {shorten(path)}: {_reason(error)}; it was replaced while this run wrote it")
    try:
        with os.fdopen(descriptor, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as error:
        raise UserError(f"cannot append to {shorten(path)}: {error.strerror}; the rows written before are kept")


def _reason(error):
    return "it is a symbolic link, which this never writes through" if error.errno == errno.ELOOP else error.strerror


def read_own_text(path):
    """The text of a file this project wrote, or None where there is none: a link is not followed."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a pipe there must not block
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as f:
        return f.read().decode("utf-8", errors="replace") if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None


def check_output_dir(path, flag="--output_dir", free=MIN_FREE_BYTES):
    """Refuse, before any work, an output folder that cannot be written: a file, under a file, read-only,
    a name too long, a full disk. Nothing is created: a run refused later leaves no folder behind."""
    path = Path(path)
    missing = [part for part in [path, *path.parents] if not os.path.exists(part)]  # os.path: never raises
    existing = path.parents[len(missing) - 1] if missing else path
    broken = [part for part in missing if os.path.lexists(part)]
    if broken:
        raise UserError(f"{flag} {shorten(path)}: {shorten(broken[0])} is a broken or looping symbolic link")
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {shorten(path)}: {shorten(existing)} is a file, not a folder; choose another {flag}")
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX")
        if any(len(os.fsencode(part.name)) > longest for part in missing):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        tempfile.TemporaryFile(dir=existing).close()  # a file can be made there
        status = os.statvfs(existing)
    except OSError as error:
        raise UserError(f"{flag} {shorten(path)} cannot be written ({error.strerror}); choose another {flag}")
    if status.f_bavail * status.f_frsize < free:
        raise UserError(
            f"{flag} {shorten(path)} has {status.f_bavail * status.f_frsize / 2**20:.0f} MiB free, less than the "
            f"{free / 2**20:.0f} MiB this needs; free some space or choose another {flag}"
        )


def holds_run(path, name):
    """The first file in `path` that belongs to a training run (latest.pt, metrics.csv, <name>-<step>.pt), or None."""
    path = Path(path)
    found = [path / f for f in RUN_FILES if os.path.lexists(path / f)] + sorted(path.glob(f"{name}-*.pt"))
    return found[0].name if found else None


def check_fresh_start(path, name, resume, overwrite):
    """A new run may start only in a folder without one, or with --overwrite; --resume continues one."""
    if resume and overwrite:
        raise UserError("--resume continues the run in --output_dir and --overwrite starts it over; choose one")
    found = None if resume or overwrite else holds_run(path, name)
    if found:
        raise UserError(
            f"{shorten(path)} already holds a run ({found}); continue it with --resume, start it over with "
            "--overwrite, or choose another --output_dir"
        )


def _open_lock(path):
    try:
        return os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        raise UserError(f"cannot open {shorten(path / '.lock')}: {_reason(error)}; remove it")


def _try_lock(path, how):
    """OUTPUT_DIR/.lock opened and flock-ed (`how`: shared or exclusive), or one line saying the folder is busy."""
    descriptor = _open_lock(path)
    try:
        fcntl.flock(descriptor, how | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise UserError(f"another run is writing to {shorten(path)}; wait for it or choose another --output_dir")
    return os.fdopen(descriptor, "rb")


def lock_output_dir(path):
    """Hold OUTPUT_DIR/.lock for as long as this process runs: a second trainer on the same folder is
    refused with one line instead of interleaving checkpoints. The lock (flock) dies with its process,
    so a killed run never leaves a stale one. Then sweep the temporary files killed writers left."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make {shorten(path)} ({error.strerror}); choose another --output_dir")
    handle = _try_lock(Path(path), fcntl.LOCK_EX)
    sweep(path)
    return handle  # keep it open: closing it releases the lock


def check_not_busy(path):
    """Refuse at once a folder a trainer holds, before other checks name its files. The probe is a shared
    lock, so that the processes of one torchrun, probing together, do not refuse each other."""
    if os.path.lexists(Path(path) / ".lock"):
        _try_lock(Path(path), fcntl.LOCK_SH).close()


def sweep(path):
    """Delete the temporary files killed writers left: only names atomic_write makes, never a user's file."""
    for stale in Path(path).glob(f".*{TEMPORARY_SUFFIX}"):
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
