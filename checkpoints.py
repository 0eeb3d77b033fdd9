"""Checkpoints: save them safely, load them safely, rebuild the models they hold.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they load with
torch.load(..., weights_only=True): loading one never runs code. Each says what it is ("kind"),
carries its whole experiment config (and a DALL-E checkpoint its dVAE, vocabulary, dataset and
reranker), and is written atomically (files.py), so a kill at any moment leaves the previous
file intact. load_dall_e(path) gives everything a sampler needs from one file.
"""

import dataclasses
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from captions import Dataset
from config import MAX_SEED, MAX_TRAINING_STEPS, DVAEConfig, config_from_dict, from_dict, validate_dvae
from dall_e import DallE
from dataset_index import get_dataset
from dvae import DiscreteVAE
from errors import UserError, one_line, shorten
from files import atomic_write, describe
from memory import check_memory, check_model_fits, dvae_parameters
from rerank import Reranker, RerankerConfig, make_reranker, reranker_from_state
from tokenizer import Tokenizer

KIND_NAMES = {
    "dvae": "a dVAE checkpoint (from train_dvae.py)",
    "dall_e": "a DALL-E checkpoint (from train_mnist.py)",
    "judge": "a judge classifier checkpoint (from evaluate.py)",
}


def checkpoint_header(kind, dataset, config):
    """What every checkpoint starts with: what it is, the dataset it was trained on, its whole config."""
    return {"kind": kind, "dataset": dataset.name, "config": dataclasses.asdict(config)}


def save_checkpoint(payload, path):
    """Write atomically: a kill mid-write leaves the previous file at `path` untouched."""
    atomic_write(path, lambda f: torch.save(payload, f))


TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip format, and its older pickle format


def load_checkpoint(path, kind):
    """Load a checkpoint of the given kind safely, or raise UserError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        what = describe(path)
        raise UserError(f"checkpoint {what}: {shorten(path)}" if what == "not found" else f"{shorten(path)} is {what}")
    with path.open("rb") as f:
        if not f.read(4).startswith(TORCH_MAGIC):
            raise UserError(f"{shorten(path)} is not a PyTorch checkpoint: it is {describe(path)}")
    try:
        with warnings.catch_warnings():  # the weights-only unpickler warns about some pickle protocols
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise UserError(f"cannot read {shorten(path)}: truncated or not a checkpoint ({one_line(error)[:120]})")
        raise UserError(
            f"refused to load {shorten(path)}: it needs arbitrary unpickling (code could run); nothing was executed"
        )
    except Exception as error:  # a damaged zip or pickle fails in many ways, all of which mean the same here
        raise UserError(f"cannot read {shorten(path)}: truncated or not a checkpoint ({one_line(error)[:120]})")
    found = checkpoint.get("kind") if isinstance(checkpoint, dict) else None
    if not isinstance(found, str) or found != kind:
        what = KIND_NAMES.get(found, "not a checkpoint of this project") if isinstance(found, str) else "damaged"
        raise UserError(f"{shorten(path)} is {what}, but {KIND_NAMES[kind]} is expected here")
    return checkpoint


def load_resumed(path, kind):
    """The checkpoint --resume continues from, its step, seed and optimiser state checked."""
    checkpoint = load_checkpoint(path, kind)
    source = f"{shorten(path)} (being resumed)"
    for key in ("config", "optimizer", "model", "step"):
        checkpoint_part(checkpoint, key, source)
    step, seed = checkpoint["step"], checkpoint.get("seed", 0)
    if type(step) is not int or not 0 <= step <= total_steps(checkpoint, kind):
        raise UserError(
            f"{source} has step {shorten(repr(step))}, not one of its run's steps: it was edited or is damaged"
        )
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise UserError(
            f"{source} has seed {shorten(repr(seed))}, outside 0 to {MAX_SEED:,}: it was edited or is damaged"
        )
    updates = checkpoint.get("ema_updates", 0)
    if type(updates) is not int or not 0 <= updates <= step:
        raise UserError(f"{source} has {shorten(repr(updates))} moving-average updates at step {step}: it was edited")
    optimizer = checkpoint["optimizer"]
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= set(optimizer):
        raise UserError(f"{source} has no optimiser state this code can use: it was edited or is damaged")
    return checkpoint


def total_steps(checkpoint, kind):
    """The final step of the run a checkpoint belongs to, as its stored config says (checked later), or the most."""
    section = checkpoint["config"].get(f"train_{kind}") if isinstance(checkpoint["config"], dict) else None
    steps = section.get("num_training_steps") if isinstance(section, dict) else None
    return steps if type(steps) is int else MAX_TRAINING_STEPS


def load_weights(model, state, source):
    """model.load_state_dict(state), or one line saying that `source` does not fit this code's model."""
    if not isinstance(state, dict):
        raise UserError(f"{source} holds no weights where they belong; it is damaged or from another version")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as error:
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
    if not isinstance(part, dict):
        raise UserError(f"{source} holds no dVAE where it belongs; it is damaged or from another version")
    config = from_dict(DVAEConfig, checkpoint_part(part, "dvae_config", source))
    validate_dvae(config)
    check_memory(4 * dvae_parameters(config), f"the dVAE {source} describes", "it was edited or is damaged")
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
    name = checkpoint.get("dataset", "mnist")
    return get_dataset(name if isinstance(name, str) else repr(name))


def dall_e_from_checkpoint(checkpoint, source="the DALL-E checkpoint"):
    """(model, dvae, tokenizer) rebuilt from a DALL-E checkpoint alone, ready for sampling."""
    config = config_from_dict(checkpoint_part(checkpoint, "config", source)).dall_e
    vocabulary = checkpoint_part(checkpoint, "vocabulary", source)
    listed = vocabulary if isinstance(vocabulary, list) else []
    words = [w for w in listed if isinstance(w, str) and not w.startswith("<pad")]
    tokenizer = Tokenizer(words, config.text_length)
    if not words or tokenizer.vocabulary != vocabulary:
        raise UserError(
            f"{source}'s vocabulary is not one this code's tokenizer makes; it was edited, or another version made it"
        )
    dvae = dvae_from_checkpoint(checkpoint, source)
    check_model_fits(config, dvae.config, tokenizer.vocab_size, source)
    model = DallE(config, dvae.config, tokenizer.vocab_size)
    weights = checkpoint.get("ema_model", checkpoint_part(checkpoint, "model", source))  # the moving average, if kept
    load_weights(model, weights, source)
    check_finite_weights(model, source)
    return model.eval(), dvae, tokenizer


def reranker_from_checkpoint(checkpoint, path):
    """The reranker (rerank.py) stored in a DALL-E checkpoint, its shape and weights checked."""
    if "reranker" not in checkpoint:
        raise UserError(f"{path} holds no reranker (an older train_mnist.py made it); use --candidates 1 or retrain")
    state = checkpoint["reranker"]
    fields = {f.name: f for f in dataclasses.fields(RerankerConfig)}
    required = set(fields) - {"word_order"}  # added with scenes: earlier checkpoints lack it
    shape = state.get("shape") if isinstance(state, dict) else None
    if not isinstance(shape, dict) or not required <= set(shape) <= set(fields):
        raise UserError(f"{path}'s reranker is damaged or edited; use --candidates 1, or retrain")
    if not all(type(v) is (bool if fields[k].type is bool else int) for k, v in shape.items()):
        raise UserError(f"{path}'s reranker is damaged or edited; use --candidates 1, or retrain")
    if not all(v >= 1 for v in shape.values() if type(v) is int):
        raise UserError(f"{path}'s reranker has a size below 1: it was edited; use --candidates 1, or retrain")
    with torch.device("meta"):  # sizes edited to huge ones are refused before anything is allocated
        size = sum(p.numel() for p in make_reranker(RerankerConfig(**shape)).parameters())
    check_memory(4 * size, f"{path}'s reranker", "it was edited; use --candidates 1, or retrain")
    try:
        reranker = reranker_from_state(state)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as error:
        raise UserError(f"{path}'s reranker does not fit this code's (edited, or another version): {one_line(error)}")
    check_finite_weights(reranker, f"{path}'s reranker")
    return reranker


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
        reranker_from_checkpoint(checkpoint, path)  # says what is missing
    reranker = reranker_from_checkpoint(checkpoint, path).to(device) if "reranker" in checkpoint else None
    return TrainedDallE(model.to(device), dvae.to(device), tokenizer, dataset_of(checkpoint), reranker)
