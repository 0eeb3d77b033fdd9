"""Nothing already written is lost, and nothing outside the output folder is touched (files.py): every
write replaces a symbolic link instead of writing through it, keeps the umask's mode or the replaced
file's, and the sweep deletes only the temporary files atomic_write makes."""

import ast
import os
import stat

import pytest

from conftest import ROOT
from errors import UserError
from files import (
    append_text,
    atomic_write,
    check_fresh_start,
    check_output_dir,
    lock_output_dir,
    sweep,
    write_text,
)
from training import MetricsLog


@pytest.fixture
def victim(tmp_path):
    """A user's file outside the output folder, which a symbolic link inside it points to."""
    path = tmp_path / "victim.txt"
    path.write_text("the user's file\n")
    return path


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_write_replaces_a_symbolic_link_and_leaves_its_target_alone(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("metrics.json", "bench.json", "latest.pt"):
        (out / name).symlink_to(victim)
        write_text(out / name, "new\n")
        assert not (out / name).is_symlink() and (out / name).read_text() == "new\n"
    assert victim.read_text() == "the user's file\n"


def test_new_files_take_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.pt", lambda f: f.write(b"x"))
    finally:
        os.umask(previous)
    assert mode(tmp_path / "new.pt") == 0o640  # not mkstemp's 0600
    (tmp_path / "shared.png").write_bytes(b"old")
    (tmp_path / "shared.png").chmod(0o664)
    atomic_write(tmp_path / "shared.png", lambda f: f.write(b"new"))
    assert mode(tmp_path / "shared.png") == 0o664


def test_the_sweep_deletes_only_what_atomic_write_leaves(tmp_path):
    mine = [tmp_path / ".notes.tmp", tmp_path / ".latest.pt.tmp", tmp_path / "draft.dalle-tmp"]
    for path in mine:
        path.write_text("the user's")
    killed = tmp_path / ".latest.pt.0123456789ab.dalle-tmp"
    killed.write_bytes(b"half a checkpoint")
    sweep(tmp_path)
    assert not killed.exists()
    assert all(path.read_text() == "the user's" for path in mine)


def test_a_failed_write_is_one_line_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"the previous checkpoint")

    def full_disk(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="No space left on device"):
        atomic_write(tmp_path / "latest.pt", full_disk)
    assert (tmp_path / "latest.pt").read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_metrics_log_replaces_a_link_and_refuses_one_put_in_its_place(tmp_path, victim):
    (tmp_path / "metrics.csv").symlink_to(victim)
    log = MetricsLog(tmp_path / "metrics.csv", start_step=3)  # a resumed run does not read through the link
    log.write(1, {"loss": 0.5})
    assert (tmp_path / "metrics.csv").read_text() == "step,metric,value\n1,loss,0.5\n"
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "metrics.csv").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        log.write(2, {"loss": 0.4})
    assert victim.read_text() == "the user's file\n"


@pytest.mark.parametrize("tail", ["\n", "4,lo", "4,loss,", "\x00\xff"])
def test_a_resumed_metrics_log_drops_what_a_kill_left_half_written(tmp_path, tail):
    (tmp_path / "metrics.csv").write_text("step,metric,value\n1,loss,0.5\n2,loss,0.4\n" + tail)
    MetricsLog(tmp_path / "metrics.csv", start_step=2)
    assert (tmp_path / "metrics.csv").read_text() == "step,metric,value\n1,loss,0.5\n2,loss,0.4\n"


def test_a_metrics_log_that_is_a_pipe_is_replaced_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "metrics.csv")
    MetricsLog(tmp_path / "metrics.csv", start_step=2)
    assert (tmp_path / "metrics.csv").read_text() == "step,metric,value\n"


def test_appending_never_follows_a_link(tmp_path, victim):
    (tmp_path / "log.csv").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        append_text(tmp_path / "log.csv", "x\n")
    assert victim.read_text() == "the user's file\n"


def test_a_lock_file_that_is_a_link_is_refused(tmp_path, victim):
    (tmp_path / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        lock_output_dir(tmp_path)
    assert victim.read_text() == "the user's file\n"


@pytest.mark.parametrize("found", ["latest.pt", "metrics.csv", "dvae-500.pt"])
def test_a_new_run_over_an_earlier_one_needs_overwrite(tmp_path, found):
    (tmp_path / found).write_bytes(b"an earlier run's")
    with pytest.raises(UserError, match=f"already holds a run \\({found}\\); continue it with --resume, .*--overwrite"):
        check_fresh_start(tmp_path, "dvae", resume=False, overwrite=False)
    check_fresh_start(tmp_path, "dvae", resume=False, overwrite=True)
    check_fresh_start(tmp_path, "dvae", resume=True, overwrite=False)
    assert (tmp_path / found).read_bytes() == b"an earlier run's"


def test_an_output_dir_on_a_full_disk_is_refused(tmp_path, monkeypatch):
    full = os.statvfs(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda path: type(full)((*full[:4], 0, *full[5:])))  # f_bavail = 0
    with pytest.raises(UserError, match="MiB free"):
        check_output_dir(tmp_path / "out")


WRITERS = {"save_image": 1, "torch.save": 1, "savefig": 0, "np.savez": 0}  # call -> position of its file argument


def call_name(node):
    """'save_image', 'torch.save', 'savefig' (any object's), 'np.savez' ... of a call."""
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        return f"{owner}.{node.func.attr}" if owner in ("torch", "np") else node.func.attr
    return ""


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.py")), ids=lambda p: p.name)
def test_every_file_the_project_writes_goes_through_files_py(path):
    """No write_text, write_bytes or open() for writing outside files.py; save_image, torch.save,
    savefig and np.savez only into the file object atomic_write hands them (named f)."""
    if path.name == "files.py":
        return
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = call_name(node)
        if name in ("write_text", "write_bytes") and isinstance(node.func, ast.Attribute):
            bad.append(node.lineno)
        if name == "open" and any(isinstance(a, ast.Constant) and str(a.value)[:1] in "wax" for a in node.args[1:]):
            bad.append(node.lineno)
        position = WRITERS.get(name)
        if position is not None and len(node.args) > position:
            target = node.args[position]
            if not (isinstance(target, ast.Name) and target.id == "f"):
                bad.append(node.lineno)
    assert not bad, f"{path.name}: writes outside files.atomic_write at lines {bad}"
