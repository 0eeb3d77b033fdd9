"""Every flag and file is checked before any work: one line on stderr, exit status 2, no traceback,
and nothing written before is changed. One row per case; the scripts run in this process (the
same main() and run_main() a user's command runs) so that the table stays fast."""

import gzip
import hashlib
import os
import stat
import sys
import zlib
from unittest import mock

import pytest
import torch
import yaml

import benchmark
import evaluate
import generate_mnist
import make_figures
import summarize
import train_dvae
import train_mnist
from checkpoints import save_checkpoint
from config import MAX_SEED, MAX_TRAINING_STEPS
from conftest import TINY
from errors import LONGEST_LINE, run_main
from training import step_seed

OTHER = {**TINY, "dall_e": {**TINY["dall_e"], "n_layer": 3}}
SCRIPTS = {
    "generate": generate_mnist,
    "train_dvae": train_dvae,
    "train_mnist": train_mnist,
    "evaluate": evaluate,
    "benchmark": benchmark,
    "summarize": summarize,
    "make_figures": make_figures,
}


def run_in_process(script, args, capsys):
    """(exit status, stdout, stderr) of a script's main() under run_main, as its command runs it."""
    module = SCRIPTS[script]
    with mock.patch.object(sys, "argv", [f"{script}.py", *map(str, args)]), pytest.raises(SystemExit) as exited:
        run_main(module.main)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def run_to_the_end(script, args):
    """A script's main() with these flags, which must succeed."""
    with mock.patch.object(sys, "argv", [f"{script}.py", *map(str, args)]):
        SCRIPTS[script].main()


def is_progress_bar(line):
    """tqdm's bar (on stderr too); the error must be a line of its own after it, not glued to it."""
    return (
        line.split("\r")[-1].split(":")[0].strip() in ("dvae", "dall_e", "tokenising", "training reranker")
        and "|" in line
    )


def fingerprint(folder):
    """Every file under `folder`, a hash of its bytes and its mode."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            stat.S_IMODE(path.stat().st_mode),
        )
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


def trainer_case(script, extra, *fragments):
    """A trainer on the tiny config, `extra` flags deciding the rest (the output folder among them)."""

    def args(ctx):
        dvae = ["--dvae_checkpoint", ctx["trained"]["dvae"] / "latest.pt"] if script == "train_mnist" else []
        return ["--config_path", ctx["trained"]["config"], "--data_dir", ctx["mnist"], "--device", "cpu", *dvae,
                *extra(ctx)]  # fmt: skip

    return script, args, fragments


def evaluate_case(extra, *fragments):
    def args(ctx):
        return ["--dall_e_checkpoint", ctx["trained"]["dall_e"] / "latest.pt", "--data_dir", ctx["mnist"],
                "--judge_dir", ctx["tmp"] / "judge", "--samples", "20", "--output_dir", ctx["out"], "--device", "cpu",
                *extra(ctx)]  # fmt: skip

    return "evaluate", args, fragments


def bench_case(extra, *fragments):
    return "benchmark", lambda c: ["--device", "cpu", "--output_dir", c["out"], *extra(c)], fragments


def png_header(tmp, width, height):
    """A PNG that says it is width x height pixels (its pixels are cut short: only the header is read)."""

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    size = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return write(
        tmp, "huge.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", size) + chunk(b"IDAT", zlib.compress(bytes(99)))
    )


def truncated_gz(tmp, mnist):
    """A copy of the MNIST folder, gzipped, its training images cut in half (a download that broke off)."""
    folder = tmp / "gz"
    folder.mkdir(exist_ok=True)
    for path in mnist.iterdir():
        data = gzip.compress(path.read_bytes())
        (folder / f"{path.name}.gz").write_bytes(data[: len(data) // 2] if "images" in path.name else data)
    return folder


def judge_cache(tmp, weights):
    """A cached judge A for the tiny MNIST folder (360 training digits), with these weights."""
    (tmp / "judge" / "mnist").mkdir(parents=True)
    save_checkpoint(
        {"kind": "judge", "name": "A", "digits": 360, "model": weights}, tmp / "judge" / "mnist" / "judge_A.pt"
    )
    return []


def resume_edited(change):
    """train_mnist.py --resume on the tiny run, its latest.pt edited by change(checkpoint)."""

    def args(ctx):
        tampered(ctx["trained"], ctx["tmp"], change)
        (ctx["resume_dir"] / "latest.pt").write_bytes((ctx["tmp"] / "edited.pt").read_bytes())
        return ["--resume", "--output_dir", ctx["resume_dir"], "--data_dir", ctx["mnist"], "--device", "cpu"]

    return args


def fifo(tmp):
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def link(path, target):
    path.symlink_to(target)
    return path


LONG = "x" * 10_000
ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256))  # the start of a program, as /bin/ls has


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
    "prompts file is a folder": generate_case(lambda c: ["--prompts_file", c["tmp"]], "is a folder, not a file"),
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
    "top_p zero": generate_case(lambda c: ["--prompt", "7", "--top_p", "0"], "--top_p must be between 0.01 and 1"),
    "top_p above one": generate_case(lambda c: ["--prompt", "7", "--top_p", "1.5"], "--top_p must be between"),
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
    # issue 19: every kind of bad input, for every script that shares it
    "output_dir empty (generate)": generate_case(
        lambda c: ["--prompt", "7", "--output_dir", ""], "--output_dir is empty"
    ),
    "output_dir empty (train_dvae)": trainer_case(
        "train_dvae", lambda c: ["--output_dir", ""], "--output_dir is empty"
    ),
    "output_dir empty (train_mnist)": trainer_case("train_mnist", lambda c: ["--output_dir", ""], "is empty"),
    "output_dir empty (evaluate)": evaluate_case(lambda c: ["--output_dir", ""], "--output_dir is empty"),
    "output_dir empty (benchmark)": bench_case(lambda c: ["--output_dir", ""], "--output_dir is empty"),
    "docs_dir empty (make_figures)": ("make_figures", lambda c: ["--docs_dir", ""], ("--docs_dir is empty",)),
    "a new run over a finished one": trainer_case(
        "train_mnist", lambda c: ["--output_dir", c["resume_dir"]], "already holds a run", "--resume", "--overwrite"
    ),
    "resume and overwrite together": resume_case(lambda c: ["--overwrite"], "--resume", "--overwrite", "choose one"),
    "seed beyond int64 (generate)": generate_case(lambda c: ["--prompt", "7", "--seed", "9" * 23], "--seed must be"),
    "seed beyond step_seed's range (train_dvae)": trainer_case(
        "train_dvae", lambda c: ["--output_dir", c["out"], "--seed", "1000000000000"], "--seed must be between 0 and"
    ),
    "negative seed (evaluate)": evaluate_case(lambda c: ["--seed", "-1"], "--seed must be between"),
    "training steps beyond per-step seeds": trainer_case(
        "train_dvae", lambda c: ["--output_dir", c["out"], "--num_training_steps", "10000000000"], "at most"
    ),
    "benchmark steps 0": bench_case(lambda c: ["--steps", "0"], "--steps must be between 1"),
    "benchmark steps -1": bench_case(lambda c: ["--steps", "-1"], "--steps must be between 1"),
    "benchmark large batch 1": bench_case(lambda c: ["--large_batch", "1"], "--large_batch must be between 2"),
    "a temperature that gives one code": generate_case(
        lambda c: ["--prompt", "7", "--temperature", "1e-30"], "--temperature"
    ),
    "a temperature that gives noise": generate_case(
        lambda c: ["--prompt", "7", "--temperature", "1e30"], "--temperature"
    ),
    "a guidance that overflows": generate_case(lambda c: ["--prompt", "7", "--guidance", "1e30"], "--guidance"),
    "top_k of 40 digits": generate_case(lambda c: ["--prompt", "7", "--top_k", "9" * 40], "--top_k must be between"),
    "output_dir is a file (train_dvae)": trainer_case(
        "train_dvae", lambda c: ["--output_dir", c["out"] / "samples.npz"], "is a file, not a folder"
    ),
    "output_dir under a file (train_mnist)": trainer_case(
        "train_mnist", lambda c: ["--output_dir", c["out"] / "samples.npz" / "run"], "is a file, not a folder"
    ),
    "output_dir of 300 characters (train_dvae)": trainer_case(
        "train_dvae", lambda c: ["--output_dir", c["tmp"] / ("n" * 300)], "cannot be written"
    ),
    "output_dir is a file (evaluate, before any work)": evaluate_case(
        lambda c: ["--output_dir", c["out"] / "samples.npz"], "is a file, not a folder"
    ),
    "output_dir a looping link (train_dvae)": trainer_case(
        "train_dvae", lambda c: ["--output_dir", link(c["tmp"] / "loop", c["tmp"] / "loop")], "looping symbolic link"
    ),
    "output_dir of 300 characters (evaluate)": evaluate_case(
        lambda c: ["--output_dir", c["tmp"] / ("n" * 300)], "cannot"
    ),
    "a checkpoint edited to a huge width": generate_case(
        lambda c: ["--prompt", "7"],
        "GiB of memory",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["config"]["dall_e"].update(n_embd=10**7, n_head=1)),
    ),
    "a checkpoint edited to a huge codebook": generate_case(
        lambda c: ["--prompt", "7"],
        "GiB of memory",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["dvae"]["dvae_config"].update(codebook_size=10**10)),
    ),
    "--set a codebook of a billion codes": dvae_case(["dvae.codebook_size=1000000000"], "GiB of memory"),
    "--set a huge image size": dvae_case(["dvae.image_size=65536"], "GiB of memory"),
    "--set a huge transformer": trainer_case(
        "train_mnist",
        lambda c: ["--output_dir", c["out"], "--set", "dall_e.n_embd=1000000", "--set", "dall_e.n_head=1"],
        "GiB of memory",
    ),
    "a huge primer image": generate_case(
        lambda c: ["--prompt", "7", "--prime_image", png_header(c["tmp"], 30000, 30000)], "pixels a primer may have"
    ),
    "a primer just above the limit": generate_case(
        lambda c: ["--prompt", "7", "--prime_image", png_header(c["tmp"], 8000, 8000)], "8,000x8,000 pixels"
    ),
    "evaluate 10,000,000,000 samples": evaluate_case(
        lambda c: ["--samples", "10000000000"], "--samples must be between"
    ),
    "evaluate 100,000,000 samples": evaluate_case(lambda c: ["--samples", "100000000"], "GiB of memory"),
    "an edited reranker shape": generate_case(
        lambda c: ["--prompt", "7"],
        "reranker is damaged or edited",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["reranker"]["shape"].pop("embed_dim")),
    ),
    "a reranker edited to a huge size": generate_case(
        lambda c: ["--prompt", "7"],
        "GiB of memory",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["reranker"]["shape"].update(embed_dim=10**9)),
    ),
    "a reranker weight missing": generate_case(
        lambda c: ["--prompt", "7"],
        "reranker does not fit",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck["reranker"]["model"].pop("log_scale")),
    ),
    "an edited vocabulary": generate_case(
        lambda c: ["--prompt", "7"],
        "vocabulary is not one",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck.update(vocabulary=5)),
    ),
    "a dataset edited to a list": generate_case(
        lambda c: ["--prompt", "7"],
        "unknown dataset",
        checkpoint=lambda t, tmp: tampered(t, tmp, lambda ck: ck.update(dataset=["mnist"])),
    ),
    "resume: an edited step": ("train_mnist", resume_edited(lambda ck: ck.update(step="3")), ("has step '3'",)),
    "resume: a negative step": ("train_mnist", resume_edited(lambda ck: ck.update(step=-1)), ("has step -1",)),
    "resume: a step beyond the run's end": (
        "train_mnist",
        resume_edited(lambda ck: ck.update(step=10**6)),
        ("not one of its run's steps",),
    ),
    "resume: a seed beyond the range": ("train_mnist", resume_edited(lambda ck: ck.update(seed=2**70)), ("seed",)),
    "resume: no optimiser state": ("train_mnist", resume_edited(lambda ck: ck.update(optimizer=[1])), ("optimiser",)),
    "resume: an edited moving-average count": (
        "train_mnist",
        resume_edited(lambda ck: ck.update(ema_updates="x")),
        ("moving-average updates",),
    ),
    "a judge cache with empty weights": evaluate_case(
        lambda c: judge_cache(c["tmp"], {}), "the cached judge", "Missing key"
    ),
    "a judge cache with foreign weights": evaluate_case(
        lambda c: judge_cache(c["tmp"], {"w": torch.zeros(2)}), "the cached judge", "does not fit"
    ),
    "a config that is a program": trainer_case(
        "train_dvae",
        lambda c: ["--output_dir", c["out"], "--config_path", write(c["tmp"], "ls", ELF)],
        "is not YAML text",
    ),
    "a config with a key given twice": trainer_case(
        "train_dvae",
        lambda c: [
            "--output_dir",
            c["out"],
            "--config_path",
            write(c["tmp"], "d.yaml", b"dvae:\n  hidden_dim: 4\n  hidden_dim: 8\n"),
        ],
        "key 'hidden_dim' is given twice (line 3)",
    ),
    "a config that is a folder": trainer_case(
        "train_dvae", lambda c: ["--output_dir", c["out"], "--config_path", c["tmp"]], "config file not a file"
    ),
    "truncated MNIST for training": trainer_case(
        "train_dvae",
        lambda c: ["--output_dir", c["out"], "--data_dir", truncated_gz(c["tmp"], c["mnist"])],
        "is damaged",
    ),
    "truncated MNIST for evaluate --split test": evaluate_case(
        lambda c: ["--split", "test", "--test_data_dir", truncated_gz(c["tmp"], c["mnist"])], "is damaged"
    ),
    "argparse: a seed that is not a number (train_dvae)": trainer_case(
        "train_dvae", lambda c: ["--output_dir", c["out"], "--seed", "abc"], "invalid int value: 'abc'", "--help"
    ),
    "argparse: an unknown flag (generate)": generate_case(
        lambda c: ["--colour", "red"], "unrecognized arguments", "--help"
    ),
    "argparse: a bad choice (evaluate)": evaluate_case(lambda c: ["--split", "train"], "invalid choice", "--help"),
    "a pipe as metrics.json (summarize)": ("summarize", lambda c: [fifo(c["tmp"])], ("not a regular file",)),
    "a folder as metrics.json (summarize)": ("summarize", lambda c: [c["tmp"]], ("a folder, not a file",)),
    "argparse: no metrics (summarize)": ("summarize", lambda c: [], ("required", "--help")),
    "argparse: a missing value (benchmark)": bench_case(lambda c: ["--steps"], "expected one argument", "--help"),
    "a prompt of 10,000 characters": generate_case(lambda c: ["--prompt", LONG], "unknown word"),
    "a prompt of 1,700 words": generate_case(lambda c: ["--prompt", "seven " * 1700], "words but the model reads"),
    "a --set of 10,000 characters": dvae_case([LONG], "--set expects"),
    "a device of 10,000 characters": generate_case(lambda c: ["--prompt", "7", "--device", LONG], "unknown --device"),
    "a program as a checkpoint": generate_case(
        lambda c: ["--prompt", "7"],
        "is not a PyTorch checkpoint: it is an ELF executable",
        checkpoint=lambda t, tmp: write(tmp, "ls", ELF),
    ),
    "a text file as a checkpoint": generate_case(
        lambda c: ["--prompt", "7"], "it is a text file", checkpoint=lambda t, tmp: write(tmp, "notes.txt", b"hello\n")
    ),
    "a folder as a checkpoint": generate_case(
        lambda c: ["--prompt", "7"], "is a folder", checkpoint=lambda t, tmp: tmp
    ),
    "a folder as the prime image": generate_case(lambda c: ["--prompt", "7", "--prime_image", c["tmp"]], "not a file"),
}


def assert_refused(case, trained, mnist_dir, tmp_path, capsys):
    """Run one case: exit status 2, one line (naming each fragment), no traceback, and every file an earlier
    run left byte for byte as it was, with its mode."""
    script, make_args, fragments = case
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
    assert len(lines[0]) <= len("error: ") + LONGEST_LINE + len("; see make_figures.py --help"), len(lines[0])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    after = fingerprint(out), fingerprint(resume_dir)
    for earlier, now in zip(before, after):  # every earlier file still there, byte for byte, mode unchanged
        assert {name: now.get(name) for name in earlier} == earlier


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, trained, mnist_dir, tmp_path, capsys):
    assert_refused(CASES[case], trained, mnist_dir, tmp_path, capsys)


FULL_DISK = {
    "train_dvae": trainer_case("train_dvae", lambda c: ["--output_dir", c["tmp"] / "run"], "MiB free"),
    "train_mnist": trainer_case("train_mnist", lambda c: ["--output_dir", c["tmp"] / "run"], "MiB free"),
    "evaluate": evaluate_case(lambda c: [], "MiB free"),
    "generate": generate_case(lambda c: ["--prompt", "7"], "MiB free"),
}


@pytest.mark.parametrize("script", list(FULL_DISK))
def test_a_full_disk_is_refused_before_any_work(script, trained, mnist_dir, tmp_path, capsys, monkeypatch):
    real = os.statvfs(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda path: type(real)((*real[:4], 0, *real[5:])))  # no block available
    assert_refused(FULL_DISK[script], trained, mnist_dir, tmp_path, capsys)


def test_a_large_batch_for_one_image_is_not_refused(trained, tmp_path, capsys):
    """The memory estimate counts the rows a request really draws, not --batch_size."""
    args = ["--dall_e_checkpoint", trained["dall_e"] / "latest.pt", "--output_dir", tmp_path, "--device", "cpu",
            "--prompt", "7", "--candidates", "1", "--batch_size", "1000000"]  # fmt: skip
    run_to_the_end("generate", args)
    assert (tmp_path / "samples.npz").is_file()


def test_a_trainer_replaces_links_instead_of_writing_through_them(trained, mnist_dir, tmp_path, capsys):
    """--overwrite over a run whose files are links to the user's files: the links are replaced, the files kept."""
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("the user's file\n")
    names = ["metrics.csv", "latest.pt", "dall_e-3.pt", "sample-3.png", "sample_prompts-3.txt"]
    for name in names:
        (run / name).symlink_to(victim)
    _, make_args, _ = trainer_case("train_mnist", lambda c: ["--output_dir", run, "--overwrite"])
    run_to_the_end("train_mnist", make_args({"trained": trained, "mnist": mnist_dir}))
    assert victim.read_text() == "the user's file\n"
    assert not any((run / name).is_symlink() for name in names)


def test_a_refused_run_leaves_no_output_folder_behind(trained, mnist_dir, tmp_path, capsys):
    case = trainer_case("train_dvae", lambda c: ["--output_dir", tmp_path / "new" / "run", "--set", "dvae.channels=2"])
    assert_refused(case, trained, mnist_dir, tmp_path, capsys)
    assert not (tmp_path / "new").exists()


def test_per_step_seeds_stay_within_what_torch_seeds_with():
    seed = step_seed(MAX_SEED, MAX_TRAINING_STEPS, rank=2**16)
    assert seed < 2**63
    torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)


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
