"""Experiment configuration: one dataclass per part, defaults here, overrides in YAML.

An experiment file (configs/*.yaml) holds only the values it changes, grouped by section:

    dvae:
      codebook_size: 128
    train_dall_e:
      num_training_steps: 3000

and any value can be changed again on the command line with `--set section.key=value`.
Unknown sections or keys, wrong types and out-of-range values are rejected with one line
before any work starts.
"""

import contextlib
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from errors import UserError, shorten

# A run reseeds every process at every step from (seed, step, rank) (training.step_seed):
# (seed * 1_000_003 + step) * 101 + rank must stay within the int64 torch seeds with.
MAX_SEED = 2**32 - 1
MAX_TRAINING_STEPS = 10**9


@dataclass
class DVAEConfig:
    """The discrete VAE (paper section 2.1, appendix A)."""

    image_size: int = 32  # MNIST's 28x28 digits are zero-padded to 32x32 (see data.py)
    channels: int = 1  # 1 for grey data, 3 for colour (the dataset's config file sets it)
    grid_size: int = 8  # tokens per side: image_size / 2**k, one downsampling group per halving
    codebook_size: int = 128  # K, the number of distinct image tokens (paper: 8,192; README says why)
    codebook_dim: int = 64  # width of each codebook vector fed to the decoder
    hidden_dim: int = 16  # channels at the finest resolution; doubled at each halving
    num_resnet_blocks: int = 1  # residual blocks per group
    tiles: int = 1  # images are tiles x tiles places of image_size, each tokenised on its own (scenes: 2x2)

    @property
    def canvas_size(self):
        """The side of the images the model draws: tiles places of image_size."""
        return self.image_size * self.tiles

    @property
    def canvas_grid(self):
        """Tokens per side of a whole image: the transformer's grid."""
        return self.grid_size * self.tiles


@dataclass
class DVAETrainConfig:
    """How train_dvae.py optimises the dVAE (appendix A.2, shortened for a laptop)."""

    num_training_steps: int = 2000  # 2,500 before: validation MSE 0.0045 against 0.0043, in 80% of the time
    batch_size: int = 64
    learning_rate: float = 2e-3  # peak; cosine-annealed to min_learning_rate
    min_learning_rate: float = 1e-4
    temperature_start: float = 1.0  # Gumbel-softmax temperature tau, annealed 1 -> 1/16 ...
    temperature_end: float = 1.0 / 16
    temperature_anneal_fraction: float = 0.7  # ... over this share of training, cosine
    kl_weight: float = 1.0  # beta, the weight of KL(q || uniform prior) ...
    kl_warmup_fraction: float = 0.1  # ... ramped up from 0 over this share of training
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    sample_every: int = 500  # steps between reconstruction grids and numbered checkpoints
    checkpoint_seconds: float = 20.0  # latest.pt is refreshed at least this often


@dataclass
class DallEConfig:
    """The transformer over [text tokens | image tokens] (paper section 2.2, appendix B)."""

    text_length: int = 3  # text positions: MNIST's longest caption, "the digit seven" (paper: 256 BPE tokens)
    n_layer: int = 4  # paper: 64
    n_head: int = 4  # paper: 62
    n_embd: int = 128  # paper: 3,968 (62 heads of 64)
    dropout: float = 0.2  # on the residual branches, against memorising 4,500 digits (docs/experiments.md)
    attention_dropout: float = 0.0  # on the attention weights: as good at 0.1 (with dropout 0.1), 7% slower
    conv_kernel: int = 11  # side of the convolutional attention window (Fig. 11d); the paper's too


@dataclass
class DallETrainConfig:
    """How train_mnist.py optimises the transformer."""

    num_training_steps: int = 1600  # 2,000 before: validation loss no longer falls after 1,500 (docs/experiments.md)
    batch_size: int = 64
    learning_rate: float = 3e-3  # peak, then cosine; the earlier recipe, not re-validated (docs/experiments.md)
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.0  # sample from an exponential moving average of the weights; 0 turns it off
    text_loss_weight: float = 1.0 / 8  # paper section 2.2: 1/8 text, 7/8 image
    null_prompt_prob: float = 0.1  # share of captions replaced by the empty prompt, for guidance (dall_e.py)
    reranker_steps: int = 600  # training steps of the reranker (rerank.py), before the transformer's
    grad_clip: float = 1.0
    sample_every: int = 500
    checkpoint_seconds: float = 20.0


@dataclass
class Config:
    """One experiment: both models and both training recipes."""

    dvae: DVAEConfig = field(default_factory=DVAEConfig)
    train_dvae: DVAETrainConfig = field(default_factory=DVAETrainConfig)
    dall_e: DallEConfig = field(default_factory=DallEConfig)
    train_dall_e: DallETrainConfig = field(default_factory=DallETrainConfig)


def _suggest(name, choices):
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(choices)})"


def _coerce(where, value, kind):
    """Check one value against its field's type; ints are accepted where floats are, inf and nan nowhere."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if type(value) is not kind:
        raise UserError(f"{where} must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UserError(f"{where} must be finite, got {value}")
    return value


def _apply(config, section, key, value, source):
    sections = [f.name for f in dataclasses.fields(config)]
    if section not in sections:
        raise UserError(f"unknown config section '{section}' in {source}{_suggest(section, sections)}")
    part = getattr(config, section)
    fields = {f.name: f.type for f in dataclasses.fields(part)}
    if key not in fields:
        raise UserError(f"unknown config key '{section}.{key}' in {source}{_suggest(key, list(fields))}")
    setattr(part, key, _coerce(f"{section}.{key} in {source}", value, fields[key]))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one map is an error (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep)  # refuses unhashable keys
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"key '{key}' is given twice (line {key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return mapping


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        what = "not found" if not path.exists() else "not a file (a folder or device)"
        raise UserError(f"config file {what}: {shorten(path)} (see configs/ for examples)")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise UserError(f"config file {shorten(path)} is not YAML text (not UTF-8); give a file like configs/*.yaml")
    except yaml.YAMLError as error:
        raise UserError(f"config file {shorten(path)} is not valid YAML: {str(error).splitlines()[0]}")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"config file {path} must map sections (dvae, train_dvae, ...) to key: value maps")
    return data


def _parse_override(text):
    """'section.key=value' -> (section, key, value), the value read as YAML (so 3, 0.1, true work)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise UserError(f"--set expects section.key=value, got '{text}'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return section, key, value


def load_config(path=None, overrides=(), base=None):
    """Defaults (or `base`), then the YAML file at `path`, then each `section.key=value` override."""
    config = base if base is not None else Config()
    if path is not None:
        for section, values in _read_yaml(path).items():
            for key, value in values.items():
                _apply(config, section, key, value, str(path))
    for text in overrides:
        _apply(config, *_parse_override(text), "--set")
    validate(config)
    return config


def _require(ok, message):
    if not ok:
        raise UserError(message)


def validate_dvae(c: DVAEConfig):
    _require(c.channels in (1, 3), f"dvae.channels must be 1 or 3, got {c.channels}")
    _require(c.grid_size >= 1, f"dvae.grid_size must be >= 1, got {c.grid_size}")
    ratio = c.image_size / c.grid_size
    _require(
        c.image_size > 0 and ratio >= 1 and ratio == int(ratio) and math.log2(ratio).is_integer(),
        f"dvae.image_size={c.image_size} is not grid_size={c.grid_size} times a power of two; "
        f"the encoder halves the image until it is {c.grid_size}x{c.grid_size} (try {c.grid_size * 4})",
    )
    for name in ("codebook_size", "codebook_dim", "hidden_dim"):
        _require(getattr(c, name) >= 2, f"dvae.{name} must be >= 2, got {getattr(c, name)}")
    _require(c.num_resnet_blocks >= 0, f"dvae.num_resnet_blocks must be >= 0, got {c.num_resnet_blocks}")
    _require(c.tiles >= 1, f"dvae.tiles must be >= 1, got {c.tiles}")


def _validate_training(section, c):
    _require(c.num_training_steps >= 1, f"{section}.num_training_steps must be >= 1, got {c.num_training_steps}")
    _require(
        c.num_training_steps <= MAX_TRAINING_STEPS,
        f"{section}.num_training_steps must be at most {MAX_TRAINING_STEPS:,} (per-step seeds are computed from it), "
        f"got {c.num_training_steps:,}",
    )
    _require(c.batch_size >= 1, f"{section}.batch_size must be >= 1, got {c.batch_size}")
    _require(
        0 < c.learning_rate <= 1e30,
        f"{section}.learning_rate must be > 0 and at most 1e30 (what a float32 optimiser takes), got {c.learning_rate}",
    )
    _require(
        0 <= c.min_learning_rate <= c.learning_rate,
        f"{section}.min_learning_rate must be between 0 and learning_rate, got {c.min_learning_rate}",
    )
    _require(c.sample_every >= 1, f"{section}.sample_every must be >= 1, got {c.sample_every}")
    _require(c.checkpoint_seconds >= 0, f"{section}.checkpoint_seconds must be >= 0, got {c.checkpoint_seconds}")
    _require(c.grad_clip >= 0, f"{section}.grad_clip must be >= 0, got {c.grad_clip}")


def validate(config: Config):
    validate_dvae(config.dvae)
    t = config.train_dvae
    _validate_training("train_dvae", t)
    _require(
        0 < t.temperature_end <= t.temperature_start,
        f"train_dvae temperatures must satisfy 0 < temperature_end <= temperature_start, "
        f"got {t.temperature_start} -> {t.temperature_end}",
    )
    for name in ("temperature_anneal_fraction", "kl_warmup_fraction"):
        _require(0 <= getattr(t, name) <= 1, f"train_dvae.{name} must be in [0, 1], got {getattr(t, name)}")
    _require(t.kl_weight >= 0, f"train_dvae.kl_weight must be >= 0, got {t.kl_weight}")
    m = config.dall_e
    _require(m.text_length >= 1, f"dall_e.text_length must be >= 1, got {m.text_length}")
    _require(m.n_layer >= 1 and m.n_head >= 1, f"dall_e.n_layer and n_head must be >= 1, got {m.n_layer}, {m.n_head}")
    _require(m.n_embd % m.n_head == 0, f"dall_e.n_embd={m.n_embd} must be divisible by dall_e.n_head={m.n_head}")
    _require(0 <= m.dropout < 1, f"dall_e.dropout must be in [0, 1), got {m.dropout}")
    _require(0 <= m.attention_dropout < 1, f"dall_e.attention_dropout must be in [0, 1), got {m.attention_dropout}")
    _require(
        m.conv_kernel >= 1 and m.conv_kernel % 2 == 1, f"dall_e.conv_kernel must be odd and >= 1, got {m.conv_kernel}"
    )
    d = config.train_dall_e
    _validate_training("train_dall_e", d)
    _require(d.warmup_steps >= 0, f"train_dall_e.warmup_steps must be >= 0, got {d.warmup_steps}")
    _require(0 <= d.weight_decay, f"train_dall_e.weight_decay must be >= 0, got {d.weight_decay}")
    _require(0 <= d.ema_decay < 1, f"train_dall_e.ema_decay must be in [0, 1), got {d.ema_decay}")
    _require(0 <= d.text_loss_weight <= 1, f"train_dall_e.text_loss_weight must be in [0, 1], got {d.text_loss_weight}")
    _require(0 <= d.null_prompt_prob < 1, f"train_dall_e.null_prompt_prob must be in [0, 1), got {d.null_prompt_prob}")
    _require(d.reranker_steps >= 1, f"train_dall_e.reranker_steps must be >= 1, got {d.reranker_steps}")


# Options earlier versions stored and this one removed, with the values that mean what this version
# does (None: any value, as the option was off): checkpoints that hold them load; others are refused.
RETIRED = {
    "DallEConfig": {"mask_anchor": ("input",)},
    "DallETrainConfig": {"augment_copies": (0,), "augment_shift": None, "augment_degrees": None, "augment_scale": None},
}


def drop_retired(cls, values):
    """values without the options this version removed, or UserError where one was set to what it no longer does."""
    retired = RETIRED.get(cls.__name__, {})
    for key, allowed in retired.items():
        if key in values and allowed is not None and values[key] not in allowed:
            raise UserError(
                f"the checkpoint was trained with {key}={values[key]!r}, which this version no longer has; "
                "use the version that made it (see docs/experiments.md)"
            )
    return {key: value for key, value in values.items() if key not in retired}


def from_dict(cls, values):
    """Rebuild a config dataclass from the plain dict a checkpoint stores."""
    if not isinstance(values, dict):
        raise UserError(f"checkpoint config: {cls.__name__} is not a map of key: value")
    values = drop_retired(cls, values)
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise UserError(f"checkpoint config has keys this code does not know: {sorted(unknown)}")
    return cls(**{key: _coerce(f"checkpoint config {key}", value, fields[key]) for key, value in values.items()})


def config_from_dict(values):
    """A checkpoint's stored config -> Config, every section, key and type checked (from_dict)."""
    sections = [f.name for f in dataclasses.fields(Config)]
    if not isinstance(values, dict) or set(values) - set(sections):
        raise UserError(f"the checkpoint's config is not one this code knows (sections: {', '.join(sections)})")
    config = Config(**{f.name: from_dict(f.type, values.get(f.name, {})) for f in dataclasses.fields(Config)})
    validate(config)
    return config
