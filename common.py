"""Helpers shared by the scripts: flags, config, device, and safe checkpoints.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they load with
torch.load(..., weights_only=True): loading one never runs code. Each says what it is ("kind"),
carries its whole experiment config, and is written atomically (temporary file, flush, fsync,
rename), so a kill at any moment leaves the previous file intact.
"""

import contextlib
import dataclasses
import fcntl
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from captions import DATASETS, caption_table, get_dataset
from config import Config, DVAEConfig, from_dict, load_config, validate
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
    parser.add_argument(
        "--seed", type=int, help="random seed; it fixes the batch order (default: 0, or the resumed run's)"
    )
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


# Sampling defaults (docs/experiments.md, sampling settings): reranking filters out wrong digits, so the
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


MAX_CANDIDATES = 512  # the paper's largest number of draws per caption


def check_sampling_args(args, codebook_size):
    """One line naming the first bad sampling flag."""
    if not 1 <= args.candidates <= MAX_CANDIDATES:
        raise UserError(
            f"--candidates must be between 1 and {MAX_CANDIDATES} (the paper's most), got {args.candidates}"
        )
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k is not None and not 1 <= args.top_k <= codebook_size:
        raise UserError(f"--top_k must be between 1 and the codebook size {codebook_size}, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.guidance < math.inf:
        raise UserError(f"--guidance must be a number >= 0 (1 is plain sampling), got {args.guidance}")


def sampling_options(args):
    """The sampling flags as sampling.draw's keyword arguments."""
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "guidance": args.guidance,
        "precision": args.precision,
    }


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


RESUMABLE_CHANGES = ("sample_every", "checkpoint_seconds")  # what --resume may change: it keeps the run exact


def experiment_config(args, section, dataset, stored=None):
    """The config for a run: the YAML (or a resumed checkpoint's config), then flags; checked against the dataset.

    A resumed run keeps its stored config: a --set or flag that would change anything but when it
    samples and saves is refused, as a changed value would make the resumed run another run.
    """
    overrides = list(args.set)
    for flag in ("num_training_steps", "batch_size"):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{section}.{flag}={getattr(args, flag)}")
    if stored is None:
        config = load_config(args.config_path or dataset_config_path(dataset), overrides)
    else:
        if args.config_path:  # the same file again is fine; one that changes the run is not
            check_unchanged(config_from_dict(stored), load_config(args.config_path, overrides))
        config = load_config(None, overrides, base=config_from_dict(stored))
        check_unchanged(config_from_dict(stored), config)
    check_config_fits(config, dataset)
    return config


def check_unchanged(stored, config):
    for part in dataclasses.fields(Config):
        old, new = dataclasses.asdict(getattr(stored, part.name)), dataclasses.asdict(getattr(config, part.name))
        for key in old:
            if old[key] != new[key] and key not in RESUMABLE_CHANGES:
                raise UserError(
                    f"--resume keeps the run's config, but {part.name}.{key} would change from {old[key]} to "
                    f"{new[key]}; drop that setting, or start a new run in another --output_dir"
                )


def resume_seed(args, resumed):
    """The run's seed: --seed, or the resumed run's (a different one would change the batch order)."""
    stored = resumed.get("seed") if resumed else None
    if args.seed is not None and stored is not None and args.seed != stored:
        raise UserError(f"the run being resumed used --seed {stored}; leave --seed out or pass --seed {stored}")
    return args.seed if args.seed is not None else (stored or 0)


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
    """A checkpoint's stored config -> Config, every section, key and type checked (config.from_dict)."""
    sections = [f.name for f in dataclasses.fields(Config)]
    if not isinstance(values, dict) or set(values) - set(sections):
        raise UserError(f"the checkpoint's config is not one this code knows (sections: {', '.join(sections)})")
    config = Config(**{f.name: from_dict(f.type, values.get(f.name, {})) for f in dataclasses.fields(Config)})
    validate(config)
    return config


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
    atomic_write(path, lambda f: torch.save(payload, f))


def lock_output_dir(path):
    """Hold OUTPUT_DIR/.lock for as long as this process runs: a second trainer on the same folder is
    refused with one line instead of interleaving checkpoints. The lock (flock) dies with its process,
    so a killed run never leaves a stale one. Then sweep temporary files that killed writers left."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another run is writing to {path}; wait for it or choose another --output_dir")
    for stale in path.glob(".*.tmp"):  # no other writer holds the folder: these are left by killed ones
        stale.unlink(missing_ok=True)
    return handle  # keep it open: closing it releases the lock


def check_output_dir(path):
    """Refuse, before any work, an output folder that cannot be written: a file, under a file, read-only."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise UserError(f"--output_dir {path}: {part} is a file, not a folder; choose another --output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # a file can be made there
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
    for name in ("codebook_size", "image_size", "channels", "grid_size"):
        have, want = getattr(dvae_config, name), getattr(expected, name)
        if have != want:
            raise UserError(f"dVAE checkpoint {source} has {name}={have} but the config's dvae.{name} is {want}")


def dall_e_config_of(checkpoint, source="the DALL-E checkpoint"):
    return config_from_dict(checkpoint_part(checkpoint, "config", source)).dall_e


def dataset_of(checkpoint):
    """The dataset a checkpoint was trained on (checkpoints from before datasets existed: MNIST)."""
    return get_dataset(checkpoint.get("dataset", "mnist"))


def dall_e_from_checkpoint(checkpoint, source="the DALL-E checkpoint"):
    """(model, dvae, tokenizer) rebuilt from a DALL-E checkpoint alone, ready for sampling."""
    config = dall_e_config_of(checkpoint, source)
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


def reranker_from_checkpoint(checkpoint, path):
    """The reranker (rerank.py) stored in a DALL-E checkpoint."""
    if "reranker" not in checkpoint:
        raise UserError(f"{path} holds no reranker (an older train_mnist.py made it); use --candidates 1 or retrain")
    return reranker_from_state(checkpoint["reranker"])


def available_memory():
    """Bytes of memory free for this process now (physical memory where the OS does not say)."""
    pages = os.sysconf("SC_AVPHYS_PAGES") if "SC_AVPHYS_PAGES" in os.sysconf_names else os.sysconf("SC_PHYS_PAGES")
    return pages * os.sysconf("SC_PAGE_SIZE")


def sampling_memory(images, rows, model, dvae):
    """Rough bytes a sampling request holds at once: every image kept (float32, twice while saving)
    plus, for one batch of `rows` sequences, the KV cache and the decoder's widest activations."""
    c, d = model.config, dvae.config
    kept = 2 * images * d.channels * d.image_size**2 * 4
    cache = 2 * c.n_layer * rows * model.transformer.max_length * c.n_embd * 4
    decoding = 4 * rows * d.hidden_dim * 2 * d.image_size**2 * 4
    return kept + cache + decoding


def check_request_fits(images, rows, model, dvae):
    """Refuse with one line, before any work, a request this machine's memory cannot hold."""
    needed, free = sampling_memory(images, rows, model, dvae), available_memory()
    if needed > free:
        raise UserError(
            f"{images:,} images in batches of {rows:,} sequences need about {needed / 2**30:.1f} GiB of memory, "
            f"more than the {free / 2**30:.1f} GiB free; ask for fewer images or a smaller --batch_size"
        )


def check_trained_prompts(tokenizer, dataset, prompts, text):
    """Refuse a prompt that is none of the captions the model was trained on (held-out pairs included)."""
    known = {tuple(row.tolist()) for row in caption_table(dataset, tokenizer).flatten(0, 1)}
    for prompt, ids in zip(prompts, text):
        if tuple(ids.tolist()) not in known:
            examples = ", ".join(repr(dataset.canonical(c)) for c in dataset.concepts[:3])
            raise UserError(
                f"the model was not trained on prompts like {prompt!r}: it knows one {dataset.name} caption at a time, "
                f"such as {examples}"
            )


def encode_prompts(tokenizer, prompts):
    """Prompts -> (P, T) token ids; the first bad prompt raises UserError naming it."""
    return torch.tensor([tokenizer.encode(p) for p in prompts], dtype=torch.long)


def print_rows(rows):
    """Print (name, value) pairs as a two-column table."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
