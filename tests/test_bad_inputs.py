"""Every flag and file is checked before any work: one line on stderr, exit status 2, no traceback,
and nothing written before is changed. One row per case; the scripts run in this process (the
same main() and run_main() a user's command runs) so that the table stays fast."""

import hashlib
import os
import sys
from unittest import mock

import pytest
import torch
import yaml

import generate_mnist
import train_dvae
import train_mnist
from checkpoints import save_checkpoint
from conftest import TINY
from errors import run_main

OTHER = {**TINY, "dall_e": {**TINY["dall_e"], "n_layer": 3}}
SCRIPTS = {"generate": generate_mnist, "train_dvae": train_dvae, "train_mnist": train_mnist}


def run_in_process(script, args, capsys):
    """(exit status, stdout, stderr) of a script's main() under run_main, as its command runs it."""
    module = SCRIPTS[script]
    with mock.patch.object(sys, "argv", [f"{script}.py", *map(str, args)]), pytest.raises(SystemExit) as exited:
        run_main(module.main)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def is_progress_bar(line):
    """tqdm's bar (on stderr too); the error must be a line of its own after it, not glued to it."""
    return (
        line.split("\r")[-1].split(":")[0].strip() in ("dvae", "dall_e", "tokenising", "training reranker")
        and "|" in line
    )


def fingerprint(folder):
    """Every file under `folder` and a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def tampered(trained, tmp_path, change, name="edited.pt"):
    """A copy of the tiny DALL-E checkpoint with `change(checkpoint)` applied."""
    checkpoint = torch.load(trained["dall_e"] / "latest.pt", weights_only=True)
    change(checkpoint)
    save_checkpoint(checkpoint, tmp_path / name)
    return tmp_path / name


def nan_dvae(trained, tmp_path):
    checkpoint = torch.load(trained["dvae"] / "latest.pt", weights_only=True)
    first = next(iter(checkpoint["model"]))
    checkpoint["model"][first] = torch.full_like(checkpoint["model"][first], float("nan"))
    save_checkpoint(checkpoint, tmp_path / "nan_dvae.pt")
    return tmp_path / "nan_dvae.pt"


def generate_case(extra, *fragments, checkpoint=None):
    def args(ctx):
        chosen = checkpoint(ctx["trained"], ctx["tmp"]) if checkpoint else ctx["trained"]["dall_e"] / "latest.pt"
        return ["--dall_e_checkpoint", chosen, "--output_dir", ctx["out"], "--device", "cpu", *extra(ctx)]

    return "generate", args, fragments


def dvae_case(settings, *fragments):
    """train_dvae.py on the tiny config, a fresh output folder, with `--set` settings."""

    def args(ctx):
        sets = [flag for setting in settings for flag in ("--set", setting)]
        return [
            "--config_path",
            ctx["trained"]["config"],
            "--output_dir",
            ctx["out"],
            "--data_dir",
            ctx["mnist"],
            *sets,
        ]

    return "train_dvae", args, fragments


def resume_case(extra, *fragments):
    """train_mnist.py --resume on a copy of the tiny run, with `extra` flags."""

    def args(ctx):
        return ["--resume", "--output_dir", ctx["resume_dir"], "--data_dir", ctx["mnist"], "--device", "cpu",
                *extra(ctx)]  # fmt: skip

    return "train_mnist", args, fragments


def write(tmp, name, data):
    path = tmp / name
    path.write_bytes(data)
    return path


CASES = {
    # generate_mnist.py: files
    "output_dir is a file": generate_case(
        lambda c: ["--prompt", "7", "--output_dir", write(c["tmp"], "a_file", b"x")], "is a file, not a folder"
    ),
    "output_dir under a file": generate_case(
        lambda c: ["--prompt", "7", "--output_dir", write(c["tmp"], "b_file", b"x") / "sub"], "is a file"
    ),
    "binary prompts file": generate_case(
        lambda c: ["--prompts_file", write(c["tmp"], "p.bin", bytes(range(256)))], "is not UTF-8 text"
    ),
    "empty prompts file": generate_case(lambda c: ["--prompts_file", write(c["tmp"], "e.txt", b"")], "holds no prompt"),
    "blank prompts file": generate_case(
        lambda c: ["--prompts_file", write(c["tmp"], "b.txt", b" \n\n  \n")], "holds no prompt"
    ),
    "prompts file is a folder": generate_case(lambda c: ["--prompts_file", c["tmp"]], "prompts file not found"),
    # generate_mnist.py: sizes and prompts
    "too many candidates": generate_case(lambda c: ["--prompt", "7", "--candidates", "100000"], "--candidates", "512"),
    "too many samples": generate_case(
        lambda c: ["--prompt", "7", "--samples_per_prompt", "100000000"], "100,000,000 images", "GiB"
    ),
    "several words": generate_case(lambda c: ["--prompt", "seven 7"], "not trained on prompts like 'seven 7'"),
    "two digits": generate_case(lambda c: ["--prompt", "1 8"], "not trained on prompts like '1 8'"),
    # generate_mnist.py: sampling values
    "negative guidance": generate_case(lambda c: ["--prompt", "7", "--guidance", "-1"], "--guidance"),
    "nan guidance": generate_case(lambda c: ["--prompt", "7", "--guidance", "nan"], "--guidance"),
    "top_p zero": generate_case(lambda c: ["--prompt", "7", "--top_p", "0"], "--top_p must be in (0, 1]"),
    "top_p above one": generate_case(lambda c: ["--prompt", "7", "--top_p", "1.5"], "--top_p must be in (0, 1]"),
    "prime rows beyond the grid": generate_case(
        lambda c: ["--prompt", "7", "--prime_validation_digit", "0", "--prime_rows", "9"],
        "--prime_rows must be between 0",
    ),
    "prime rows without a primer": generate_case(lambda c: ["--prompt", "7", "--prime_rows", "2"], "--prime_image"),
    "primer not an image": generate_case(
        lambda c: ["--prompt", "7", "--prime_image", write(c["tmp"], "fake.png", b"not a png")], "is not an image"
    ),
    "primer missing": generate_case(
        lambda c: ["--prompt", "7", "--prime_image", c["tmp"] / "none.png"], "image file not found"
    ),
    "test digit out of range": generate_case(
        lambda c: ["--prompt", "7", "--prime_validation_digit", "100000", "--data_dir", c["mnist"]],
        "--prime_validation_digit",
    ),
    # generate_mnist.py: checkpoints edited or from another version
    "stored shape changed": generate_case(
        lambda c: ["--prompt", "7"],
        "does not fit this code's model",
        checkpoint=lambda t, tmp: tampered(
            t, tmp, lambda ck: ck["model"].update({"image_head.weight": torch.zeros(3, 3)}) or ck.pop("ema_model", 0)
        ),
    ),
    "weight key missing": generate_case(
        lambda c: ["--prompt", "7"],
        "does not fit this code's model",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["model"].pop("image_head.weight")),
    ),
    "weight key added": generate_case(
        lambda c: ["--prompt", "7"],
        "does not fit this code's model",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["model"].update({"extra.weight": torch.zeros(2)})),
    ),
    "config value of the wrong type": generate_case(
        lambda c: ["--prompt", "7"],
        "must be int",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["config"]["dall_e"].update({"n_layer": "four"})),
    ),
    "no model entry": generate_case(
        lambda c: ["--prompt", "7"],
        "has no 'model' entry",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck.pop("model")),
    ),
    "unknown config section": generate_case(
        lambda c: ["--prompt", "7"],
        "config is not one this code knows",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["config"].update({"sampler": {"a": 1}})),
    ),
    "NaN weights": generate_case(
        lambda c: ["--prompt", "7"],
        "non-finite",
        checkpoint=lambda t, tmp: tampered(
            t, tmp, lambda ck: ck["model"]["image_head.weight"].fill_(float("nan")) if "ema_model" not in ck else 0
        ),
    ),
    # trainers
    "a dVAE with NaN weights": (
        "train_mnist",
        lambda c: [
            "--dvae_checkpoint",
            nan_dvae(c["trained"], c["tmp"]),
            "--config_path",
            c["trained"]["config"],
            "--output_dir",
            c["out"],
            "--data_dir",
            c["mnist"],
        ],  # fmt: skip
        ("non-finite",),
    ),
    "an infinite learning rate": dvae_case(["train_dvae.learning_rate=inf"], "learning_rate in --set must be finite"),
    "a learning rate beyond float32": dvae_case(["train_dvae.learning_rate=1e300"], "at most 1e30"),
    "a learning rate that blows the weights up": dvae_case(
        ["train_dvae.learning_rate=1e30", "train_dvae.checkpoint_seconds=1000"],
        "became",
        "no checkpoint was written yet",
    ),
    "resume with a changed codebook": resume_case(lambda c: ["--set", "dvae.codebook_size=64"], "dvae.codebook_size"),
    "resume with a changed learning rate": resume_case(
        lambda c: ["--set", "train_dall_e.learning_rate=0.5"], "train_dall_e.learning_rate would change"
    ),
    "resume with another batch size": resume_case(lambda c: ["--batch_size", "4"], "train_dall_e.batch_size"),
    "resume with another seed": resume_case(lambda c: ["--seed", "5"], "used --seed 0"),
    "resume with another dVAE": resume_case(
        lambda c: ["--dvae_checkpoint", c["trained"]["dvae"] / "dvae-3.pt"], "is not the dVAE the resumed run"
    ),
    "resume with another config file": resume_case(
        lambda c: ["--config_path", write(c["tmp"], "other.yaml", yaml.safe_dump(OTHER).encode())],
        "dall_e.n_layer would change from 2 to 3",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, trained, mnist_dir, tmp_path, capsys):
    script, make_args, fragments = CASES[case]
    out, resume_dir = tmp_path / "out", tmp_path / "resume"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"an earlier run's samples")  # must survive untouched
    resume_dir.mkdir()
    (resume_dir / "latest.pt").write_bytes((trained["dall_e"] / "dall_e-3.pt").read_bytes())
    context = {"trained": trained, "tmp": tmp_path, "out": out, "resume_dir": resume_dir, "mnist": mnist_dir}
    args = make_args(context)
    before = fingerprint(out), fingerprint(resume_dir)
    status, stdout, stderr = run_in_process(script, args, capsys)
    lines = [line for line in stderr.splitlines() if line.strip() and not is_progress_bar(line)]
    assert status == 2, stderr
    assert "Traceback" not in stdout + stderr
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    after = fingerprint(out), fingerprint(resume_dir)
    for earlier, now in zip(before, after):  # every earlier file still there, byte for byte
        assert {name: now.get(name) for name in earlier} == earlier


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_refused_before_sampling(trained, tmp_path, capsys):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    status, _, stderr = run_in_process(
        "generate", ["--dall_e_checkpoint", trained["dall_e"] / "latest.pt", "--output_dir", out, "--prompt", "7"],
        capsys,
    )  # fmt: skip
    assert status == 2 and "cannot be written" in stderr
