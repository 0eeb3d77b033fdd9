"""Never lose work, never crash on bad input, and train the same under torchrun."""

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from config import DVAETrainConfig
from conftest import ROOT, TINY, assert_clean_error, run_script
from errors import UserError
from training import Bookkeeping, Run

LONGER = {**TINY, "train_dvae": {**TINY["train_dvae"], "num_training_steps": 400, "sample_every": 1000}}


def config_file(tmp_path, values):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def default_sigint():
    """A shell without job control starts background jobs with SIGINT ignored, and children inherit
    that; restore the default so the script under test sees Ctrl-C as a user's terminal sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(script, *args):
    return subprocess.Popen(
        [sys.executable, script, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def wait_for(path, process, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_at_random_moments_never_loses_the_checkpoint(tmp_path, mnist_dir):
    config = config_file(tmp_path, LONGER)
    out = tmp_path / "dvae"
    args = ["--config_path", config, "--data_dir", mnist_dir, "--output_dir", out, "--device", "cpu"]
    rng = random.Random(0)
    for trial in range(3):
        process = start("train_dvae.py", *args, *(["--resume"] if trial else []))
        if trial == 0:
            wait_for(out / "latest.pt", process)
        time.sleep(rng.uniform(0.5, 2.5) if trial else rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        checkpoint = torch.load(out / "latest.pt", weights_only=True)  # always loads, whole
        assert 0 < checkpoint["step"] <= 400
    finished = run_script("train_dvae.py", *args, "--resume")
    assert finished.returncode == 0, finished.stderr
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 400
    assert not list(out.glob(".*.dalle-tmp")), "a temporary file was left behind"


@pytest.mark.parametrize("script", ["train_dvae.py", "train_mnist.py"])
def test_resuming_reproduces_the_uninterrupted_run(tmp_path, mnist_dir, script):
    config = config_file(
        tmp_path,
        {
            **TINY,
            "train_dvae": {**TINY["train_dvae"], "sample_every": 3},
            "train_dall_e": {**TINY["train_dall_e"], "sample_every": 3, "ema_decay": 0.5},
        },
    )
    common = ["--config_path", config, "--data_dir", mnist_dir, "--device", "cpu"]
    if script == "train_mnist.py":
        dvae_dir = tmp_path / "dvae"
        assert run_script("train_dvae.py", *common, "--output_dir", dvae_dir).returncode == 0
        common += ["--dvae_checkpoint", dvae_dir / "latest.pt"]
    prefix = "dvae" if script == "train_dvae.py" else "dall_e"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_script(script, *common, "--output_dir", whole).returncode == 0
    resumed.mkdir()
    shutil.copy(whole / f"{prefix}-3.pt", resumed / "latest.pt")  # as if stopped at step 3
    result = run_script(script, *common, "--output_dir", resumed, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming at step 3" in result.stdout
    a = torch.load(whole / "latest.pt", weights_only=True)
    b = torch.load(resumed / "latest.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    logged = [
        [line.split(",")[:2] for line in (folder / "metrics.csv").read_text().splitlines()]
        for folder in (whole, resumed)
    ]
    assert [row for row in logged[0] if row[0] == "step" or int(row[0]) > 3] == logged[
        1
    ]  # the resumed run logs steps 4-6
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], rtol=1e-5, atol=1e-6)
    if script == "train_mnist.py":  # the moving average resumes too, and is not the raw weights
        assert a["ema_updates"] == b["ema_updates"] == 6
        for name, tensor in a["ema_model"].items():
            torch.testing.assert_close(tensor, b["ema_model"][name], rtol=1e-5, atol=1e-6)
        assert not torch.equal(a["ema_model"]["image_head.weight"], a["model"]["image_head.weight"])


def test_ctrl_c_saves_and_exits_with_one_line(tmp_path, mnist_dir):
    out = tmp_path / "dvae"
    process = start(
        "train_dvae.py", "--config_path", config_file(tmp_path, LONGER), "--data_dir", mnist_dir, "--output_dir", out
    )
    wait_for(out / "latest.pt", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted at step") and "--resume" in last
    step = int(last.split()[3].rstrip(":"))
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == step


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    crafted = tmp_path / "crafted.pt"
    torch.save({"kind": "dall_e", "model": Payload()}, crafted)
    result = run_script("generate_mnist.py", "--dall_e_checkpoint", crafted)
    assert_clean_error(result, "refused", "nothing was executed")
    assert not marker.exists()


@pytest.fixture(scope="module")
def tiny_dvae(tmp_path_factory, mnist_dir):
    """A dVAE trained for six steps on the tiny config: (its folder, the config file)."""
    root = tmp_path_factory.mktemp("tiny_dvae")
    config = config_file(root, TINY)
    result = run_script(
        "train_dvae.py", "--config_path", config, "--data_dir", mnist_dir, "--output_dir", root / "dvae"
    )
    assert result.returncode == 0, result.stderr
    return root / "dvae", config


def test_a_truncated_checkpoint_is_named(tmp_path, tiny_dvae):
    out, config = tiny_dvae
    broken = tmp_path / "broken.pt"
    broken.write_bytes((out / "latest.pt").read_bytes()[:2000])
    result = run_script(
        "train_mnist.py", "--dvae_checkpoint", broken, "--config_path", config, "--output_dir", tmp_path / "x"
    )
    assert_clean_error(result, "truncated or not a checkpoint")


def test_a_dvae_that_does_not_match_the_config_is_named(tmp_path, mnist_dir, tiny_dvae):
    out, config = tiny_dvae
    result = run_script(
        "train_mnist.py",
        "--dvae_checkpoint",
        out / "latest.pt",
        "--config_path",
        config,
        "--set",
        "dvae.codebook_size=32",
        "--output_dir",
        tmp_path / "x",
    )
    assert_clean_error(result, "codebook_size=16", "dvae.codebook_size is 32")


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--set", "train_dvae.batch_size=big"], ["train_dvae.batch_size", "must be int"]),
        (["--set", "dall_e.text_length=0"], ["text_length must be >= 1"]),
        (["--set", "train_dvae.learning_rat=0.1"], ["did you mean 'learning_rate'"]),
        (["--num_training_steps", "0"], ["num_training_steps must be >= 1"]),
        (["--device", "tpu"], ["unknown --device 'tpu'"]),
        (["--resume"], ["checkpoint not found"]),
    ],
)
def test_bad_flags_get_one_line_and_status_2(tmp_path, tiny_config, flags, fragments):
    result = run_script("train_dvae.py", "--config_path", tiny_config, "--output_dir", tmp_path, *flags)
    assert_clean_error(result, *fragments)


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, mnist_dir):
    """A learning rate that blows the weights up after the first step, saved every step: training stops at the
    first non-finite value with one line, and latest.pt keeps the last finite weights."""
    out = tmp_path / "dvae"
    args = ["--config_path", config_file(tmp_path, TINY), "--data_dir", mnist_dir, "--output_dir", out]
    result = run_script("train_dvae.py", *args, "--set", "train_dvae.learning_rate=1e30")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "became" in result.stderr and "at step" in result.stderr and "holds the last good weights" in result.stderr
    checkpoint = torch.load(out / "latest.pt", weights_only=True)
    assert 1 <= checkpoint["step"] < 6
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def help_blocks(text):
    """--help output -> {option: its help text}, one entry per option listed."""
    blocks, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = stripped.split()[0].rstrip(",")
            blocks[current] = stripped
        elif current and stripped:
            blocks[current] += " " + stripped
    return blocks


@pytest.mark.parametrize(
    "script", ["train_dvae.py", "train_mnist.py", "generate_mnist.py", "evaluate.py", "benchmark.py"]
)
def test_every_flag_is_documented_with_its_default(script):
    """Every option that takes a value says its default (or that it is required, optional or repeatable)."""
    result = run_script(script, "--help")
    assert result.returncode == 0
    blocks = help_blocks(result.stdout)
    assert "--device" in blocks
    for option, text in blocks.items():
        takes_value = len(text.split()) > 1 and text.split()[1].isupper() or "{" in text.split()[1]
        if takes_value:
            assert any(word in text for word in ("default", "required", "optional", "repeatable")), f"{script} {option}"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build has no torch.distributed")
def test_two_processes_under_torchrun_stay_in_sync(tmp_path, mnist_dir):
    out = tmp_path / "dvae"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train_dvae.py",
            "--config_path",
            config_file(tmp_path, TINY),
            "--data_dir",
            mnist_dir,
            "--output_dir",
            out,
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all 2 processes hold identical weights" in result.stdout
    assert result.stdout.count("done:") == 1  # rank 0 alone logs ...
    assert sorted(p.name for p in out.glob("*.pt")) == ["dvae-3.pt", "dvae-6.pt", "latest.pt"]  # ... and writes
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 6


def test_a_finite_loss_with_non_finite_gradients_stops_before_the_weights_change(tmp_path):
    """sqrt(w - w) is 0, but its gradient is 0 * inf = nan: the check must come before optimizer.step()."""
    weight = torch.nn.Parameter(torch.ones(3))
    t = DVAETrainConfig(num_training_steps=5, sample_every=100, checkpoint_seconds=1e9, grad_clip=0.0)
    books = Bookkeeping(Run(torch.device("cpu")), "toy", tmp_path, t, 0, dict, dict, ())
    loss = (weight - weight).sqrt().sum()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([weight], math.inf)
    with books, pytest.raises(UserError, match="gradient norm became nan at step 1; no checkpoint was written yet"):
        books.check(loss, grad_norm, 0)
    assert torch.equal(weight.detach(), torch.ones(3))
