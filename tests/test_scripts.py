"""The three scripts end to end, as a user runs them, on a tiny config and offline digits."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from checkpoints import save_checkpoint
from conftest import TINY, assert_clean_error, run_script
from judge import RECIPES


def test_train_dvae_writes_checkpoints_and_grids(trained):
    names = {p.name for p in trained["dvae"].iterdir()}
    assert {"dvae-3.pt", "dvae-6.pt", "latest.pt", "recon-3.png", "recon-6.png"} <= names
    checkpoint = torch.load(trained["dvae"] / "latest.pt", weights_only=True)
    assert checkpoint["kind"] == "dvae" and checkpoint["step"] == 6
    assert checkpoint["dvae_config"]["codebook_size"] == 16
    assert "MNIST training split, 400 images" in trained["log"]


def read_metrics(folder):
    """metrics.csv -> {metric: {step: value}}."""
    rows = [line.split(",") for line in (folder / "metrics.csv").read_text().splitlines()[1:]]
    metrics = {}
    for step, name, value in rows:
        metrics.setdefault(name, {})[int(step)] = float(value)
    return metrics


def test_both_trainers_log_every_step_and_each_validation_to_metrics_csv(trained):
    dvae, dall_e = read_metrics(trained["dvae"]), read_metrics(trained["dall_e"])
    for name in ("loss", "reconstruction", "kl", "tau", "kl_weight", "lr"):
        assert sorted(dvae[name]) == [1, 2, 3, 4, 5, 6], name
    assert sorted(dvae["validation_mse"]) == [3, 6] and dvae["kl_weight"][1] == 0.0 < dvae["kl_weight"][6]
    assert dvae["tau"][1] > dvae["tau"][6]  # the temperature anneals
    for name in ("loss", "text", "image", "lr"):
        assert sorted(dall_e[name]) == [1, 2, 3, 4, 5, 6], name
    assert sorted(dall_e["validation_image_loss"]) == [3, 6]


def test_train_mnist_writes_samples_prompts_and_a_self_contained_checkpoint(trained):
    names = {p.name for p in trained["dall_e"].iterdir()}
    assert {"dall_e-3.pt", "dall_e-6.pt", "latest.pt", "sample-6.png", "sample_prompts-6.txt"} <= names
    rows = (trained["dall_e"] / "sample_prompts-6.txt").read_text().splitlines()
    assert rows[0].split(" | ")[:3] == ["0", "1", "2"] and rows[1].split(" | ")[:2] == ["zero", "one"]
    checkpoint = torch.load(trained["dall_e"] / "latest.pt", weights_only=True)
    assert checkpoint["kind"] == "dall_e" and checkpoint["step"] == 6 and checkpoint["dataset"] == "mnist"
    assert {"seven", "digit", "handwritten"} <= set(checkpoint["vocabulary"]) and "dvae" in checkpoint
    assert checkpoint["reranker"]["shape"]["concepts"] == 10
    assert checkpoint["reranker"]["model"]["captions"].shape == (10, 7, 3)  # every phrasing of every digit
    assert "masks keep row" in trained["log"]


def test_generate_writes_a_labelled_grid_and_npz_reproducibly(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Seven.\n3\n\nnine\n")
    outputs = []
    for name in ("a", "b"):
        result = run_script(
            "generate_mnist.py",
            "--dall_e_checkpoint",
            trained["dall_e"] / "latest.pt",
            "--prompts_file",
            prompts,
            "--samples_per_prompt",
            "2",
            "--seed",
            "0",
            "--output_dir",
            tmp_path / name,
            "--device",
            "cpu",
        )
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name / "sample.png").stat().st_size > 0
        outputs.append(np.load(tmp_path / name / "samples.npz"))
    a, b = outputs
    assert a["images"].shape == (6, 1, 32, 32) and a["images"].dtype == np.float32
    assert 0 <= a["images"].min() and a["images"].max() <= 1
    assert list(a["prompts"]) == ["Seven.", "Seven.", "3", "3", "nine", "nine"]
    assert np.array_equal(a["images"], b["images"])


def test_the_labelled_grid_is_capped_however_many_samples(trained, tmp_path):
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", trained["dall_e"] / "latest.pt", "--output_dir", tmp_path,
        "--prompt", "7", "--samples_per_prompt", "300", "--candidates", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(np.load(tmp_path / "samples.npz")["images"]) == 300  # every image kept ...
    with Image.open(tmp_path / "sample.png") as picture:
        height = picture.height
    assert height <= 32 * 1.4 * 100 + 200  # ... but the picture shows 256: 32 rows of 8, 1.4 inches at 100 dpi


def test_generate_defaults_to_the_lessons_64_prompts(trained, tmp_path):
    result = run_script(
        "generate_mnist.py",
        "--dall_e_checkpoint",
        trained["dall_e"] / "latest.pt",
        "--output_dir",
        tmp_path,
        "--dvae_checkpoint",
        trained["dvae"] / "latest.pt",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "samples.npz")
    assert len(samples["prompts"]) == 64 and samples["prompts"][0] == "eight"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--prompt", "eleven"], ["unknown word 'eleven'", "zero"]),
        (["--prompt", "  "], ["empty prompt"]),
        (["--prompt", "7", "--top_k", "0"], ["--top_k"]),
        (["--prompt", "7", "--temperature", "0"], ["--temperature"]),
        (["--prompts_file", "no_such_file.txt"], ["prompts file not found"]),
        (["--prompt", "7", "--candidates", "0"], ["--candidates must be between 1 and 512"]),
    ],
)
def test_generate_rejects_bad_input_with_one_line(trained, args, fragments, tmp_path):
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", trained["dall_e"] / "latest.pt", "--output_dir", tmp_path, *args
    )
    assert_clean_error(result, *fragments)


def test_checkpoint_mixups_are_named(trained, tmp_path):
    result = run_script("generate_mnist.py", "--dall_e_checkpoint", trained["dvae"] / "latest.pt")
    assert_clean_error(result, "is a dVAE checkpoint", "DALL-E checkpoint (from train_mnist.py) is expected")
    result = run_script("generate_mnist.py", "--dall_e_checkpoint", tmp_path / "missing.pt")
    assert_clean_error(result, "checkpoint not found")
    result = run_script(
        "train_mnist.py",
        "--dvae_checkpoint",
        trained["dall_e"] / "latest.pt",
        "--config_path",
        trained["config"],
        "--output_dir",
        tmp_path,
    )
    assert_clean_error(result, "is a DALL-E checkpoint", "dVAE checkpoint (from train_dvae.py) is expected")


def test_train_dvae_rejects_bad_configs(tmp_path, tiny_config):
    assert_clean_error(run_script("train_dvae.py", "--config_path", tmp_path / "none.yaml"), "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dvae:\n  codebook_sise: 8\n")
    assert_clean_error(run_script("train_dvae.py", "--config_path", bad), "codebook_sise", "codebook_size")
    assert_clean_error(
        run_script("train_dvae.py", "--config_path", tiny_config, "--set", "dvae.image_size=36"),
        "not grid_size=8 times",
    )


def test_a_checkpoint_without_reranker_still_samples_single_draws(trained, tmp_path):
    checkpoint = torch.load(trained["dall_e"] / "latest.pt", weights_only=True)
    del checkpoint["reranker"]
    old = tmp_path / "old.pt"
    torch.save(checkpoint, old)
    result = run_script("generate_mnist.py", "--dall_e_checkpoint", old, "--prompt", "7", "--output_dir", tmp_path)
    assert_clean_error(result, "holds no reranker", "--candidates 1")
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", old, "--prompt", "7", "--candidates", "1", "--output_dir", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "samples.npz")["images"].shape == (1, 1, 32, 32)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluate_writes_metrics_for_single_and_reranked_draws(trained, mnist_dir, tmp_path, split):
    torch.manual_seed(0)
    for name, (make, *_) in RECIPES.items():  # untrained judges: fast, and warned about
        judge = {"kind": "judge", "digits": 360, "model": make().state_dict()}
        save_checkpoint(judge, tmp_path / "mnist" / f"judge_{name}.pt")
    result = run_script(
        "evaluate.py",
        "--dall_e_checkpoint",
        trained["dall_e"] / "latest.pt",
        "--data_dir",
        mnist_dir,
        "--split",
        split,
        "--judge_dir",
        tmp_path,
        "--samples",
        "40",
        "--candidates",
        "3",
        "--output_dir",
        tmp_path,
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "prompt accuracy, first of 3" in result.stdout and "warning: judge A reads only" in result.stdout
    assert "judge B FID, one draw" in result.stdout and "near-copies, first of 3" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["split"] == split and metrics["split_images"] == (40 if split == "validation" else 100)
    assert set(metrics["draws"]) == {"1", "3"} and metrics["samples"] == 40
    for draws in metrics["draws"].values():
        assert 0 <= draws["near_copies"] <= 1
        for judge in ("A", "B"):
            assert 0 <= draws[judge]["prompt_accuracy"] <= 1 and len(draws[judge]["prompt_accuracy_per_class"]) == 10
            assert draws[judge]["fid"] >= 0 and 0 <= draws[judge]["unsure"] <= 1
    for judge in metrics["judges"].values():
        assert judge["fid_floor"] >= 0 and judge["fid_dvae_reconstructions"] >= 0 and judge["fid_compared_size"] == 40
        assert judge["fid_reference_size"] == 40
    assert metrics["dvae"]["codes_used"] >= 1 and metrics["bits_per_image_token"] > 0
    assert 0 <= metrics["reranker_accuracy"]["seen"] <= 1
    summary = run_script("summarize.py", tmp_path / "metrics.json", tmp_path / "metrics.json")
    assert summary.returncode == 0, summary.stderr
    accuracy = 100 * metrics["draws"]["3"]["A"]["prompt_accuracy"]
    line = next(row for row in summary.stdout.splitlines() if row.startswith("prompt accuracy (judge A)"))
    assert line.endswith(f"{accuracy:.4g} [{accuracy:.4g}, {accuracy:.4g}]")  # mean [lowest, highest] of two copies
    table = run_script("summarize.py", "--table", tmp_path / "metrics.json").stdout.splitlines()
    assert len(table) == 4 and table[3].startswith("| 1 | off | first of 3 | ")  # header, rule, one draw, reranked
    assert f"| {accuracy:.1f} / " in table[3]


@pytest.fixture(scope="module")
def trained_colour(tmp_path_factory, mnist_dir):
    """The three scripts on coloured digits: --dataset on the dVAE only; the rest follows its checkpoint."""
    root = tmp_path_factory.mktemp("colour")
    config = root / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {**TINY, "dvae": {**TINY["dvae"], "channels": 3}, "dall_e": {**TINY["dall_e"], "text_length": 5}}
        )
    )
    common = ["--config_path", config, "--data_dir", mnist_dir, "--device", "cpu"]
    dvae = run_script("train_dvae.py", *common, "--dataset", "color_mnist", "--output_dir", root / "dvae")
    assert dvae.returncode == 0, dvae.stderr
    dall_e = run_script(
        "train_mnist.py", *common, "--output_dir", root / "dall_e", "--dvae_checkpoint", root / "dvae" / "latest.pt"
    )
    assert dall_e.returncode == 0, dall_e.stderr
    return root


def test_coloured_digits_end_to_end(trained_colour, mnist_dir, tmp_path):
    for name in ("dvae", "dall_e"):
        checkpoint = torch.load(trained_colour / name / "latest.pt", weights_only=True)
        assert checkpoint["dataset"] == "color_mnist" and checkpoint["config"]["dvae"]["channels"] == 3
    rows = (trained_colour / "dall_e" / "sample_prompts-6.txt").read_text().splitlines()
    assert len(rows) == 6 and rows[0].split(" | ")[7] == "a red seven"  # a row per colour, held-out pairs too
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", trained_colour / "dall_e" / "latest.pt", "--prompt", "a blue seven",
        "--prompt", "7 in red", "--output_dir", tmp_path, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "samples.npz")
    assert samples["images"].shape == (2, 3, 32, 32) and list(samples["prompts"]) == ["a blue seven", "7 in red"]
    for name, (make, *_) in RECIPES.items():
        save_checkpoint(
            {"kind": "judge", "digits": 360, "model": make().state_dict()}, tmp_path / "mnist" / f"judge_{name}.pt"
        )
    result = run_script(
        "evaluate.py", "--dall_e_checkpoint", trained_colour / "dall_e" / "latest.pt", "--data_dir", mnist_dir,
        "--judge_dir", tmp_path, "--samples", "60", "--candidates", "2", "--output_dir", tmp_path, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "zero-shot (judge A)" in result.stdout and "held_out class" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == "color_mnist" and metrics["samples"] == 60
    zero_shot = metrics["draws"]["2"]["zero_shot"]["A"]
    assert set(zero_shot) == {"seen", "held_out", "held_out_over_seen"} and 0 <= zero_shot["held_out"]["colour"] <= 1
    assert set(metrics["reranker_accuracy"]) == {"seen", "held_out"}


def test_a_dataset_that_does_not_match_the_checkpoint_or_does_not_exist_is_one_line(trained_colour, tmp_path):
    result = run_script(
        "train_mnist.py", "--dvae_checkpoint", trained_colour / "dvae" / "latest.pt", "--dataset", "mnist",
        "--output_dir", tmp_path,
    )  # fmt: skip
    assert_clean_error(result, "was trained on color_mnist", "--dataset is mnist")
    assert_clean_error(
        run_script("train_dvae.py", "--dataset", "cifar", "--output_dir", tmp_path), "unknown dataset 'cifar'"
    )
    result = run_script(
        "train_dvae.py", "--dataset", "color_mnist", "--set", "dvae.channels=1", "--output_dir", tmp_path
    )
    assert_clean_error(result, "3 channel(s) but dvae.channels is 1")


def test_fashion_mnist_reads_its_files_and_its_words(mnist_dir, tmp_path):
    """Any folder of IDX files serves (here MNIST's stand in): the run is about the dataset's words."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "dall_e": {**TINY["dall_e"], "text_length": 4}}))
    common = ["--config_path", config, "--data_dir", mnist_dir, "--device", "cpu"]
    dvae = run_script("train_dvae.py", *common, "--dataset", "fashion_mnist", "--output_dir", tmp_path / "dvae")
    assert dvae.returncode == 0, dvae.stderr
    assert f"Fashion-MNIST training split, 400 images, from {mnist_dir}" in dvae.stdout
    dall_e = run_script(
        "train_mnist.py",
        *common,
        "--output_dir",
        tmp_path / "dall_e",
        "--dvae_checkpoint",
        tmp_path / "dvae" / "latest.pt",
    )
    assert dall_e.returncode == 0, dall_e.stderr
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", tmp_path / "dall_e" / "latest.pt", "--prompt", "an ankle boot",
        "--output_dir", tmp_path / "out", "--device", "cpu", "--candidates", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", tmp_path / "dall_e" / "latest.pt", "--prompt", "seven",
        "--output_dir", tmp_path / "out", "--device", "cpu",
    )  # fmt: skip
    assert_clean_error(result, "unknown word 'seven'", "ankle")
