"""Checkpoints: save them safely, load them safely, rebuild the models they hold.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they load with
torch.load(..., weights_only=True): loading one never runs code. Each says what it is ("kind"),
carries its whole experiment config (and a DALL-E checkpoint its dVAE, vocabulary, dataset and
reranker), and is written atomically (files.py), so a kill at any moment leaves the previous
file intact. load_dall_e(path) gives everything a sampler needs from one file.
"""

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from captions import Dataset
from config import DVAEConfig, config_from_dict, from_dict
from dall_e import DallE
from dataset_index import get_dataset
from dvae import DiscreteVAE
from errors import UserError
from files import atomic_write
from rerank import Reranker, reranker_from_state
from tokenizer import Tokenizer

KIND_NAMES = {
    "dvae": "a dVAE checkpoint (from train_dvae.py)",
    "dall_e": "a DALL-E checkpoint (from train_mnist.py)",
    "judge": "a judge classifier checkpoint (from evaluate.py)",
}


def save_checkpoint(payload, path):
    """Write atomically: a kill mid-write leaves the previous file at `path` untouched."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path, kind):
    """Load a checkpoint of the given kind safely, or raise UserError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"refused to load {path}: it needs arbitrary unpickling (code could run); nothing was executed")
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: truncated or not a checkpoint ({str(error).splitlines()[0][:120]})")
    found = checkpoint.get("kind") if isinstance(checkpoint, dict) else None
    if found != kind:
        what = KIND_NAMES.get(found, "not a checkpoint of this project")
        raise UserError(f"{path} is {what}, but {KIND_NAMES[kind]} is expected here")
    return checkpoint


def load_weights(model, state, source):
    """model.load_state_dict(state), or one line saying that `source` does not fit this code's model."""
    if not isinstance(state, dict):
        raise UserError(f"{source} holds no weights where they belong; it is damaged or from another version")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise UserError(f"{source} does not fit this code's model (edited, or from another version): {detail}")


def check_finite_weights(model, source):
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
    if bad:
        raise UserError(f"{source} has non-finite (NaN or inf) weights in {bad[0]}; retrain it or use another one")


def checkpoint_part(checkpoint, key, source):
    if key not in checkpoint:
        raise UserError(f"{source} has no '{key}' entry: it is damaged or from another version of this project")
    return checkpoint[key]


def dvae_from_checkpoint(checkpoint, source="the dVAE checkpoint"):
    """Rebuild the frozen dVAE from a dVAE checkpoint or from the copy inside a DALL-E checkpoint."""
    part = checkpoint_part(checkpoint, "dvae", source) if checkpoint["kind"] == "dall_e" else checkpoint
    config = from_dict(DVAEConfig, checkpoint_part(part, "dvae_config", source))
    model = DiscreteVAE(config)
    load_weights(model, checkpoint_part(part, "model", source), source)
    check_finite_weights(model, source)
    return model.eval().requires_grad_(False)


def check_dvae_matches(dvae_config: DVAEConfig, expected: DVAEConfig, source):
    """The dVAE checkpoint must be the one the experiment config describes."""
    for name in ("codebook_size", "image_size", "channels", "grid_size", "tiles"):
        have, want = getattr(dvae_config, name), getattr(expected, name)
        if have != want:
            raise UserError(f"dVAE checkpoint {source} has {name}={have} but the config's dvae.{name} is {want}")


def dataset_of(checkpoint):
    """The dataset a checkpoint was trained on (checkpoints from before datasets existed: MNIST)."""
    return get_dataset(checkpoint.get("dataset", "mnist"))


def dall_e_from_checkpoint(checkpoint, source="the DALL-E checkpoint"):
    """(model, dvae, tokenizer) rebuilt from a DALL-E checkpoint alone, ready for sampling."""
    config = config_from_dict(checkpoint_part(checkpoint, "config", source)).dall_e
    vocabulary = checkpoint_part(checkpoint, "vocabulary", source)
    words = [w for w in vocabulary if isinstance(w, str) and not w.startswith("<pad")]
    tokenizer = Tokenizer(words, config.text_length)
    if tokenizer.vocabulary != vocabulary:
        raise UserError(f"{source}'s vocabulary is not one this code's tokenizer makes; another version made it")
    dvae = dvae_from_checkpoint(checkpoint, source)
    model = DallE(config, dvae.config, tokenizer.vocab_size)
    weights = checkpoint.get("ema_model", checkpoint_part(checkpoint, "model", source))  # the moving average, if kept
    load_weights(model, weights, source)
    check_finite_weights(model, source)
    return model.eval(), dvae, tokenizer


@dataclass
class TrainedDallE:
    """Everything a sampler needs, from one DALL-E checkpoint."""

    model: DallE
    dvae: DiscreteVAE
    tokenizer: Tokenizer
    dataset: Dataset
    reranker: Reranker | None  # None where the checkpoint holds none


def load_dall_e(path, need_reranker=False, device="cpu"):
    """A DALL-E checkpoint -> TrainedDallE on `device`, in eval mode, with its reranker where it holds one
    (need_reranker: refuse a checkpoint without one, as reranking --candidates need it)."""
    checkpoint = load_checkpoint(path, "dall_e")
    model, dvae, tokenizer = dall_e_from_checkpoint(checkpoint, path)
    if need_reranker and "reranker" not in checkpoint:
        raise UserError(f"{path} holds no reranker (an older train_mnist.py made it); use --candidates 1 or retrain")
    reranker = reranker_from_state(checkpoint["reranker"]).to(device) if "reranker" in checkpoint else None
    return TrainedDallE(model.to(device), dvae.to(device), tokenizer, dataset_of(checkpoint), reranker)
