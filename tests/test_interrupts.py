"""Exact under torchrun and interrupts: kills, Ctrl-C and SIGTERM at random moments, a NaN on one
rank, two runs on one folder, and generate_mnist.py killed while writing."""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, TINY, run_script

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed in this build")

STEPS = 200
EVERY_STEP = {  # latest.pt after every step, so that a kill can land anywhere
    **TINY,
    "train_dvae": {**TINY["train_dvae"], "num_training_steps": STEPS, "sample_every": 100, "checkpoint_seconds": 0},
    "train_dall_e": {**TINY["train_dall_e"], "num_training_steps": STEPS, "sample_every": 100, "checkpoint_seconds": 0},
}
SINGLE = {  # one process, long enough to interrupt by hand
    **TINY,
    "train_dvae": {**TINY["train_dvae"], "num_training_steps": 300, "sample_every": 1000, "checkpoint_seconds": 0},
}
QUIET = {**os.environ, "OMP_NUM_THREADS": "1"}


def config_file(tmp_path, values, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def default_signals():
    """Background jobs start with SIGINT ignored; restore what a terminal gives, in a session of its own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()


def torchrun(script, *args):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        script,
        *map(str, args),
    ]


def start(command):
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=QUIET,
        preexec_fn=default_signals,
    )  # fmt: skip


def finish(command, timeout=240):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=QUIET, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def children_of():
    """{parent pid: [child pids]} from /proc (Linux)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    return children


def kill_tree(process):
    """SIGKILL torchrun and every process below it at once (its workers run in sessions of their own)."""
    children, tree, todo = children_of(), [], [process.pid]
    while todo:
        below = children.get(todo.pop(), [])
        tree += below
        todo += below
    for pid in [process.pid, *tree]:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)


def step_of(path):
    try:
        return torch.load(path, weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def wait_for_step(path, step, process, timeout=120):
    deadline = time.monotonic() + timeout
    while step_of(path) < step:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never reached step {step}"
        time.sleep(0.05)


def assert_same_weights(a_path, b_path):
    a, b = (torch.load(p, weights_only=True) for p in (a_path, b_path))
    assert a["step"] == b["step"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_dvae.py", "train_mnist.py"])
def test_two_processes_killed_at_a_random_step_resume_exactly(tmp_path, mnist_dir, script):
    config = config_file(tmp_path, EVERY_STEP)
    common = ["--config_path", config, "--data_dir", mnist_dir, "--device", "cpu"]
    if script == "train_mnist.py":
        finish(torchrun("train_dvae.py", *common, "--output_dir", tmp_path / "dvae"))
        common += ["--dvae_checkpoint", tmp_path / "dvae" / "latest.pt"]
    whole = tmp_path / "whole"
    finish(torchrun(script, *common, "--output_dir", whole))
    killed = tmp_path / "killed"
    process = start(torchrun(script, *common, "--output_dir", killed))
    wait_for_step(killed / "latest.pt", random.Random(script).randint(10, STEPS // 2), process)
    kill_tree(process)
    process.communicate()
    assert 0 < step_of(killed / "latest.pt") < STEPS
    resumed = [] if script == "train_dvae.py" else ["--dvae_checkpoint", tmp_path / "dvae" / "latest.pt"]
    common = [a for a in common if a not in resumed]
    finish(torchrun(script, *common, *resumed, "--output_dir", killed, "--resume"))
    assert_same_weights(whole / "latest.pt", killed / "latest.pt")


@pytest.mark.slow
def test_ctrl_c_and_sigterm_at_random_moments_resume_exactly(tmp_path, mnist_dir):
    config = config_file(tmp_path, SINGLE)
    common = ["train_dvae.py", "--config_path", config, "--data_dir", mnist_dir, "--device", "cpu"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    finish([sys.executable, *common, "--output_dir", whole])
    rng = random.Random(0)
    for trial, (sent, status) in enumerate([(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGINT, 130)]):
        process = start([sys.executable, *common, "--output_dir", cut, *(["--resume"] if trial else [])])
        wait_for_step(cut / "latest.pt", 1 if trial == 0 else step_of(cut / "latest.pt") + 1, process)
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(sent)
        _, stderr = process.communicate(timeout=60)
        if process.returncode == 0:  # the run ended before the signal came: nothing to check this time
            break
        assert process.returncode == status, stderr[-2000:]
        assert "Traceback" not in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("interrupted at step") and "--resume" in last
        assert step_of(cut / "latest.pt") == int(last.split()[3])  # saved at the step boundary it names
    finish([sys.executable, *common, "--output_dir", cut, "--resume"])
    assert_same_weights(whole / "latest.pt", cut / "latest.pt")


NAN_ON_RANK_1 = """
import os, runpy, sys
sys.path.insert(0, os.getcwd())
import dvae
original = dvae.DiscreteVAE.forward
calls = []
def forward(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 5:
        out["loss"] = out["loss"] * float("nan")
    return out
dvae.DiscreteVAE.forward = forward
sys.argv = ["train_dvae.py", *sys.argv[1:]]
runpy.run_path("train_dvae.py", run_name="__main__")
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_nan_on_one_rank_stops_every_rank_with_one_line(tmp_path, mnist_dir):
    """Both processes are started by hand with the environment torchrun gives them, to see each one's exit."""
    wrapper = tmp_path / "nan_on_rank_1.py"
    wrapper.write_text(NAN_ON_RANK_1)
    config = config_file(tmp_path, EVERY_STEP)
    port = free_port()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                wrapper,
                "--config_path",
                config,
                "--data_dir",
                mnist_dir,
                "--device",
                "cpu",
                "--output_dir",
                tmp_path / "out",
            ],  # fmt: skip
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **QUIET,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )  # fmt: skip
        for rank in (0, 1)
    ]
    results = [p.communicate(timeout=90) for p in processes]
    assert [p.returncode for p in processes] == [2, 2], results
    errors = [[line for line in stderr.splitlines() if line.startswith("error")] for _, stderr in results]
    assert len(errors[0]) == 1
    assert errors[0][0].startswith("error: dvae loss became non-finite on another process at step 5")
    assert len(errors[1]) == 1 and errors[1][0].startswith("error (rank 1): dvae loss became nan at step 5")
    assert "Traceback" not in results[0][1] + results[1][1]
    checkpoint = torch.load(tmp_path / "out" / "latest.pt", weights_only=True)
    assert checkpoint["step"] == 4
    assert all(t.isfinite().all() for t in checkpoint["model"].values() if t.is_floating_point())


def test_a_second_trainer_on_a_busy_folder_is_refused(tmp_path, mnist_dir):
    common = ["train_dvae.py", "--config_path", config_file(tmp_path, SINGLE), "--data_dir", mnist_dir]
    first = start([sys.executable, *common, "--output_dir", tmp_path / "out"])
    wait_for_step(tmp_path / "out" / "latest.pt", 1, first)
    first.send_signal(signal.SIGSTOP)  # paused while it holds the folder: it cannot finish before the second asks
    try:
        second = run_script(*common, "--output_dir", tmp_path / "out")
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    busy = f"error: another run is writing to {tmp_path / 'out'}; wait for it or choose another --output_dir"
    assert second.stderr.strip() == busy
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    assert step_of(tmp_path / "out" / "latest.pt") == 300


def test_generate_killed_at_random_moments_leaves_whole_files(trained, tmp_path):
    out = tmp_path / "samples"
    command = [sys.executable, "generate_mnist.py", "--dall_e_checkpoint", trained["dall_e"] / "latest.pt",
               "--output_dir", out, "--device", "cpu", "--prompt", "7", "--samples_per_prompt", "64"]  # fmt: skip
    finish(command)
    rng = random.Random(0)
    for _ in range(4):
        process = start([*command, "--seed", str(rng.randint(1, 100))])
        time.sleep(rng.uniform(1.0, 4.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        assert len(np.load(out / "samples.npz")["images"]) == 64  # the old file or the new one, never a part
        with Image.open(out / "sample.png") as picture:
            picture.load()  # decodes every row: a file cut short fails here
            assert len(picture.getbands()) in (3, 4)
    leftovers = {p.name for p in out.iterdir()} - {"sample.png", "samples.npz"}
    assert all(name.startswith(".") and name.endswith(".dalle-tmp") for name in leftovers)  # a killed writer's, hidden
