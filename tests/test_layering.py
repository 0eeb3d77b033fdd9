"""The layers point one way: config -> models -> training/sampling/checkpoints -> scripts."""

import ast
import json
import subprocess
import sys

import pytest

from conftest import ROOT

MODEL_FILES = ["dvae", "tokenizer", "transformer", "dall_e", "rerank", "text_encoder"]
ALLOWED = set(MODEL_FILES) | {"config", "errors"}  # what a model file may pull in from this project
PROJECT = {path.stem for path in ROOT.glob("*.py")}


@pytest.mark.parametrize("name", MODEL_FILES)
def test_a_model_file_loads_only_torch_the_config_and_other_model_files(name):
    """In a fresh interpreter: what importing the file adds to what `import torch` already loaded."""
    code = (
        "import sys, json, torch, torch.nn, torch.nn.functional\n"
        "before = set(sys.modules)\n"
        f"import {name}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    added = json.loads(result.stdout.splitlines()[-1])
    assert {m for m in added if m in PROJECT} <= ALLOWED, added
    assert not [m for m in added if m.split(".")[0] in ("torchvision", "matplotlib", "mlxtend", "tqdm", "numpy")]
    assert "training" not in added and "data" not in added and "common" not in added


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("*.py")) + sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name
)
def test_every_import_sits_at_the_top_of_its_file(path):
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    nested = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top]
    assert not nested, f"{path.name}: imports inside functions or blocks at lines {nested}"
