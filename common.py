"""Helpers shared by the scripts: flags, config, device, and safe checkpoints.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they load with
torch.load(..., weights_only=True): loading one never runs code. Each says what it is ("kind"),
carries its whole experiment config, and is written atomically (temporary file, flush, fsync,
rename), so a kill at any moment leaves the previous file intact.
"""

import contextlib
import dataclasses
import pickle
import warnings
from pathlib import Path

import torch

from captions import DATASETS, caption_table, get_dataset
from config import MAX_SEED, MAX_TRAINING_STEPS, Config, DVAEConfig, from_dict, load_config, validate, validate_dvae
from dall_e import DallE
from dvae import DiscreteVAE
from errors import UserError, one_line, shorten
from files import atomic_write, check_fresh_start, check_not_busy, check_output_dir, describe
from memory import check_memory, check_model_fits, check_training_fits, dvae_parameters
from rerank import Reranker, RerankerShape, reranker_from_state
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
        "--seed",
        type=int,
        between=SEED_RANGE,
        help="random seed; it fixes the batch order (default: 0, or the resumed run's)",
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --output_dir that holds a run, replacing its files (without it, that is refused)",
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


SEED_RANGE = (0, MAX_SEED, "what per-step seeds are computed from")
COUNT_RANGE = (1, 10**9, "more than one request can hold")
GUIDANCE_RANGE = (0, 20, "larger scales push the logits to extremes")


def add_sampling_flags(parser, batch_size):
    """Flags shared by generate_mnist.py and evaluate.py: how images are drawn and reranked."""
    parser.add_argument(
        "--candidates",
        type=int,
        default=CANDIDATES,
        between=(1, 512, "the paper's most"),
        help="draws per image, of which the reranker keeps one (paper 2.3; 1 turns it off; default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        choices=("first", "best"),
        default="first",
        help="the first candidate the reranker accepts, or its favourite (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=SAMPLING_TEMPERATURE,
        between=(0.1, 10, "below, every draw is the likeliest code; above, noise"),
        help="softmax temperature (default: %(default)s)",
    )
    parser.add_argument("--top_k", type=int, help="sample among the k most likely codes (default: all)")
    parser.add_argument(
        "--top_p",
        type=float,
        between=(0.01, 1, "a share of the probability"),
        help="nucleus sampling: the fewest codes holding this much probability (default: all)",
    )
    add_guidance_flag(parser, GUIDANCE)
    parser.add_argument("--seed", type=int, default=0, between=SEED_RANGE, help="default: %(default)s")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=batch_size,
        between=COUNT_RANGE,
        help="images sampled at once (default: %(default)s)",
    )
    add_precision_flag(parser)


def add_guidance_flag(parser, default):
    parser.add_argument(
        "--guidance",
        type=float,
        default=default,
        between=GUIDANCE_RANGE,
        help="classifier-free guidance scale S: uncond + S * (cond - uncond); 1 is plain sampling "
        "(default: %(default)s)",
    )


def check_sampling_args(args, codebook_size):
    """The sampling flags whose range depends on the checkpoint (the others have theirs in the parser)."""
    if args.top_k is not None and not 1 <= args.top_k <= codebook_size:
        raise UserError(f"--top_k must be between 1 and the codebook size {codebook_size}, got {shorten(args.top_k)}")


def sampling_rows(args, images):
    """Sequences one batch of `images` runs at once: guidance doubles them, keep=best draws every candidate."""
    guided = 2 if args.guidance != 1 else 1
    return min(args.batch_size, images) * guided * (args.candidates if args.keep == "best" else 1)


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
    check_training_fits(config, section, len(dataset.colours), len(dataset.words()) + config.dall_e.text_length)
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
    if type(seed) is not int or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
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


def prepare_output_dir(args, kind):
    """A trainer's checks on --output_dir, before any work: it can be written, no trainer holds it, and
    a new run does not start over an earlier one unless --overwrite says so. The checkpoint to resume, or None."""
    check_output_dir(args.output_dir)
    check_not_busy(args.output_dir)
    check_fresh_start(args.output_dir, kind, args.resume, args.overwrite)
    return load_resumed(Path(args.output_dir) / "latest.pt", kind) if args.resume else None


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
    for name in ("codebook_size", "image_size", "channels", "grid_size"):
        have, want = getattr(dvae_config, name), getattr(expected, name)
        if have != want:
            raise UserError(f"dVAE checkpoint {source} has {name}={have} but the config's dvae.{name} is {want}")


def dall_e_config_of(checkpoint, source="the DALL-E checkpoint"):
    return config_from_dict(checkpoint_part(checkpoint, "config", source)).dall_e


def dataset_of(checkpoint):
    """The dataset a checkpoint was trained on (checkpoints from before datasets existed: MNIST)."""
    name = checkpoint.get("dataset", "mnist")
    return get_dataset(name if isinstance(name, str) else repr(name))


def dall_e_from_checkpoint(checkpoint, source="the DALL-E checkpoint"):
    """(model, dvae, tokenizer) rebuilt from a DALL-E checkpoint alone, ready for sampling."""
    config = dall_e_config_of(checkpoint, source)
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
    names = [f.name for f in dataclasses.fields(RerankerShape)]
    shape = state.get("shape") if isinstance(state, dict) else None
    if not isinstance(shape, dict) or set(shape) != set(names) or not all(type(v) is int for v in shape.values()):
        raise UserError(f"{path}'s reranker is damaged or edited; use --candidates 1, or retrain")
    if not all(v >= 1 for v in shape.values()):
        raise UserError(f"{path}'s reranker has a size below 1: it was edited; use --candidates 1, or retrain")
    with torch.device("meta"):  # sizes edited to huge ones are refused before anything is allocated
        size = sum(p.numel() for p in Reranker(RerankerShape(**shape)).parameters())
    check_memory(4 * size, f"{path}'s reranker", "it was edited; use --candidates 1, or retrain")
    try:
        reranker = reranker_from_state(state)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as error:
        raise UserError(f"{path}'s reranker does not fit this code's (edited, or another version): {one_line(error)}")
    check_finite_weights(reranker, f"{path}'s reranker")
    return reranker


def check_trained_prompts(tokenizer, dataset, prompts, text):
    """Refuse a prompt that is none of the captions the model was trained on (held-out pairs included)."""
    known = {tuple(row.tolist()) for row in caption_table(dataset, tokenizer).flatten(0, 1)}
    for prompt, ids in zip(prompts, text):
        if tuple(ids.tolist()) not in known:
            examples = ", ".join(repr(dataset.canonical(c)) for c in dataset.concepts[:3])
            raise UserError(
                f"the model was not trained on prompts like {shorten(prompt)!r}: it knows one {dataset.name} caption "
                "at a time, "
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
