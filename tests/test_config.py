import dataclasses
from pathlib import Path

import pytest
import yaml

from config import Config, config_from_dict, load_config
from errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    config = load_config(write(tmp_path, "dvae:\n  codebook_size: 64\n"), ["train_dvae.learning_rate=0.01"])
    assert config.dvae.codebook_size == 64
    assert config.train_dvae.learning_rate == 0.01
    assert config.dall_e.n_layer == 4  # untouched default


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml")), ids=lambda p: p.name
)
def test_shipped_experiments_load_and_change_something(path):
    """Each experiment file is valid and holds only values that differ from config.py's defaults."""
    config = load_config(path)
    default = Config()
    for section, values in (yaml.safe_load(path.read_text()) or {}).items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) != getattr(getattr(default, section), key), f"{section}.{key}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("dvae:\n  codebok_size: 64\n", "did you mean 'codebook_size'"),
        ("dvea:\n  codebook_size: 64\n", "did you mean 'dvae'"),
        ("dvae:\n  codebook_size: many\n", "must be int"),
        ("dvae:\n  image_size: 30\n", "not grid_size=8 times a power of two"),
        ("dall_e:\n  text_length: 0\n", "text_length must be >= 1"),
        ("dall_e:\n  n_embd: 30\n  n_head: 4\n", "divisible"),
        ("train_dvae:\n  temperature_end: 2.0\n", "temperature"),
        ("- just\n- a list\n", "must map sections"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["codebook_size=3"])


def test_ints_and_exponents_accepted_for_floats(tmp_path):
    assert load_config(None, ["train_dvae.learning_rate=1"]).train_dvae.learning_rate == 1.0
    assert load_config(None, ["train_dvae.learning_rate=1e-3"]).train_dvae.learning_rate == 0.001
    assert load_config(write(tmp_path, "train_dvae:\n  learning_rate: 3e-4\n")).train_dvae.learning_rate == 3e-4


def test_checkpoints_of_earlier_versions_load_without_the_options_since_removed():
    """mask_anchor and augment_* were removed; a checkpoint that used them as this version works loads."""
    stored = dataclasses.asdict(Config())
    stored["dall_e"]["mask_anchor"] = "input"
    stored["train_dall_e"] |= {"augment_copies": 0, "augment_shift": 2.0, "augment_degrees": 10.0, "augment_scale": 0.1}
    assert config_from_dict(stored) == Config()
    stored["dall_e"]["mask_anchor"] = "predicted"
    with pytest.raises(UserError, match="mask_anchor='predicted', which this version no longer has"):
        config_from_dict(stored)
