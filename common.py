"""Helpers shared by the scripts: flags, config, device, and safe checkpoints.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they load with
torch.load(..., weights_only=True): loading one never runs code. Each says what it is ("kind"),
carries its whole experiment config, and is written atomically (temporary file, flush, fsync,
rename), so a kill at any moment leaves the previous file intact.
"""

import contextlib
import dataclasses
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from captions import DATASETS, get_dataset
from config import Config, DallEConfig, DVAEConfig, from_dict, load_config
from dall_e import DallE
from dvae import DiscreteVAE
from errors import UserError
from rerank import reranker_from_state
from tokenizer import Tokenizer

KIND_NAMES = {
    "dvae": "a dVAE checkpoint (from train_dvae.py)",
    "dall_e": "a DALL-E checkpoint (from train_mnist.py)",
    "judge": "a judge classifier checkpoint (from evaluate.py)",
}


def add_dataset_flag(parser):
    parser.add_argument(
        "--dataset", help=f"{', '.join(DATASETS)} (default: the checkpoint's where there is one, else mnist)"
    )


def add_common_flags(parser, output_dir):
    add_dataset_flag(parser)
    parser.add_argument(
        "--config_path",
        help="an experiment YAML holding only what it changes (default: configs/DATASET.yaml where there is one, "
        "else none: config.py's recipe)",
    )
    parser.add_argument("--data_dir", default="data", help="where images are read or downloaded (default: %(default)s)")
    parser.add_argument("--output_dir", default=output_dir, help="where outputs are written (default: %(default)s)")
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set dvae.codebook_size=64 (repeatable)",
    )


def add_training_flags(parser):
    parser.add_argument("--num_training_steps", type=int, help="training steps (default: from the config)")
    parser.add_argument(
        "--batch_size", type=int, help="global batch size, split across processes (default: from the config)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR/latest.pt to the same final step"
    )
    add_precision_flag(parser)


PRECISIONS = ("auto", "fp32", "bf16")


def add_precision_flag(parser):
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="bf16 autocast or plain float32; auto: bf16 where the device computes it fast (a CPU with "
        "AVX-512 BF16 or AMX, a CUDA GPU with bf16), else fp32 (default: %(default)s)",
    )


def fast_bf16(device):
    """Whether bf16 matmuls beat float32 here: CUDA with bf16 support, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def resolve_precision(name, device):
    """--precision -> "bf16" or "fp32" for this device."""
    if name == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    if name == "bf16" and device.type == "mps":
        raise UserError("--precision bf16 is not supported on MPS here; use --precision fp32")
    return name


def precision_context(precision, device):
    """bf16 autocast (matmuls and convolutions in bf16, losses and softmax in float32) or nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# Sampling defaults (README "Finding the CPU recipe"): reranking filters out wrong digits, so the
# transformer can sample above temperature 1 and give the reranker a wider choice.
SAMPLING_TEMPERATURE = 1.3
CANDIDATES = 8
GUIDANCE = 1.0


def add_sampling_flags(parser, batch_size):
    """Flags shared by generate_mnist.py and evaluate.py: how images are drawn and reranked."""
    parser.add_argument(
        "--candidates",
        type=int,
        default=CANDIDATES,
        help="draws per image, of which the reranker keeps one (paper 2.3; 1 turns it off; default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        choices=("first", "best"),
        default="first",
        help="the first candidate the reranker accepts, or its favourite (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature", type=float, default=SAMPLING_TEMPERATURE, help="softmax temperature (default: %(default)s)"
    )
    parser.add_argument("--top_k", type=int, help="sample among the k most likely codes (default: all)")
    parser.add_argument(
        "--top_p", type=float, help="nucleus sampling: the fewest codes holding this much probability (default: all)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=GUIDANCE,
        help="classifier-free guidance scale S: uncond + S * (cond - uncond); 1 is plain sampling "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument(
        "--batch_size", type=int, default=batch_size, help="images sampled at once (default: %(default)s)"
    )
    add_precision_flag(parser)


def check_sampling_args(args, codebook_size):
    """One line naming the first bad sampling flag."""
    for flag in ("candidates", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k is not None and not 1 <= args.top_k <= codebook_size:
        raise UserError(f"--top_k must be between 1 and the codebook size {codebook_size}, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.guidance < math.inf:
        raise UserError(f"--guidance must be a number >= 0 (1 is plain sampling), got {args.guidance}")


def sampling_options(args):
    """The sampling flags as DallE.generate's keyword arguments."""
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "guidance": args.guidance}


def choose_dataset(name, stored=None, source=None):
    """The dataset named by --dataset, or stored in a checkpoint; the two must agree."""
    if name is None:
        return get_dataset(stored or "mnist")
    dataset = get_dataset(name)
    if stored is not None and stored != dataset.name:
        raise UserError(f"{source} was trained on {stored}, but --dataset is {dataset.name}; leave --dataset out")
    return dataset


def dataset_config_path(dataset):
    path = Path(__file__).resolve().parent / "configs" / f"{dataset.name}.yaml"
    return path if path.is_file() else None


def experiment_config(args, section, dataset, stored=None):
    """The config for a run: the YAML (or a resumed checkpoint's config), then flags; checked against the dataset."""
    overrides = list(args.set)
    for flag in ("num_training_steps", "batch_size"):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{section}.{flag}={getattr(args, flag)}")
    if stored is None:
        config = load_config(args.config_path or dataset_config_path(dataset), overrides)
    else:
        config = load_config(None, overrides, base=config_from_dict(stored))
    check_config_fits(config, dataset)
    return config


def check_config_fits(config, dataset):
    """The dataset's images and captions must fit the model the config describes."""
    if config.dvae.channels != dataset.channels:
        raise UserError(
            f"{dataset.name} images have {dataset.channels} channel(s) but dvae.channels is {config.dvae.channels}; "
            f"use configs/{dataset.name}.yaml or --set dvae.channels={dataset.channels}"
        )
    if config.dall_e.text_length < dataset.text_length():
        raise UserError(
            f"{dataset.name} captions have up to {dataset.text_length()} words but dall_e.text_length is "
            f"{config.dall_e.text_length}; use configs/{dataset.name}.yaml or --set dall_e.text_length="
            f"{dataset.text_length()}"
        )


def config_from_dict(values):
    return Config(**{f.name: from_dict(f.type, values.get(f.name, {})) for f in dataclasses.fields(Config)})


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UserError(f"unknown --device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but this machine has no CUDA GPU; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but MPS is not available here; use --device cpu")
    return torch.device(name)


def atomic_write(path, write):
    """Create or replace `path` so that a kill at any moment leaves either the old file or the new one.

    write(f) fills a temporary file beside `path` (opened "wb"); it is flushed, fsynced and renamed
    over `path`, and the folder is fsynced so that the rename itself survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_checkpoint(payload, path):
    """Write atomically: a kill mid-write leaves the previous file at `path` untouched."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    atomic_write(path, lambda f: torch.save(payload, f))


def check_output_dir(path):
    """Refuse, before any work, an output folder that cannot be written: a file, under a file, read-only."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise UserError(f"--output_dir {path}: {part} is a file, not a folder; choose another --output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"--output_dir {path} cannot be written ({error.strerror}); choose another --output_dir")


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


def dvae_from_checkpoint(checkpoint):
    """Rebuild the frozen dVAE from a dVAE checkpoint or from the copy inside a DALL-E checkpoint."""
    part = checkpoint["dvae"] if checkpoint["kind"] == "dall_e" else checkpoint
    config = from_dict(DVAEConfig, part["dvae_config"])
    model = DiscreteVAE(config)
    model.load_state_dict(part["model"])
    return model.eval().requires_grad_(False)


def check_dvae_matches(dvae_config: DVAEConfig, expected: DVAEConfig, source):
    """The dVAE checkpoint must be the one the experiment config describes."""
    for name in ("codebook_size", "image_size", "channels", "grid_size"):
        have, want = getattr(dvae_config, name), getattr(expected, name)
        if have != want:
            raise UserError(f"dVAE checkpoint {source} has {name}={have} but the config's dvae.{name} is {want}")


def dall_e_config_of(checkpoint):
    return from_dict(DallEConfig, checkpoint["config"]["dall_e"])


def dataset_of(checkpoint):
    """The dataset a checkpoint was trained on (checkpoints from before datasets existed: MNIST)."""
    return get_dataset(checkpoint.get("dataset", "mnist"))


def dall_e_from_checkpoint(checkpoint):
    """(model, dvae, tokenizer) rebuilt from a DALL-E checkpoint alone, ready for sampling."""
    config = dall_e_config_of(checkpoint)
    words = [w for w in checkpoint["vocabulary"] if not w.startswith("<pad")]
    tokenizer = Tokenizer(words, config.text_length)
    if tokenizer.vocabulary != checkpoint["vocabulary"]:
        raise UserError("the checkpoint's vocabulary is not one this code's tokenizer makes; another version made it")
    dvae = dvae_from_checkpoint(checkpoint)
    model = DallE(config, dvae.config, tokenizer.vocab_size)
    model.load_state_dict(checkpoint.get("ema_model", checkpoint["model"]))  # the moving average, where kept
    return model.eval(), dvae, tokenizer


def reranker_from_checkpoint(checkpoint, path):
    """The reranker (rerank.py) stored in a DALL-E checkpoint."""
    if "reranker" not in checkpoint:
        raise UserError(f"{path} holds no reranker (an older train_mnist.py made it); use --candidates 1 or retrain")
    return reranker_from_state(checkpoint["reranker"])


def encode_prompts(tokenizer, prompts):
    """Prompts -> (P, T) token ids; the first bad prompt raises UserError naming it."""
    return torch.tensor([tokenizer.encode(p) for p in prompts], dtype=torch.long)


def print_rows(rows):
    """Print (name, value) pairs as a two-column table."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
