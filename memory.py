"""Memory a request will take, estimated before any of it is allocated, and the check that refuses,
in one line with the estimate, a request this machine cannot hold (instead of an out-of-memory kill).

The estimates are rough (float32 tensors; the largest activations only) and meant to catch a
request that is out of reach by far: a codebook of a billion codes, a transformer edited to a
huge width, a billion samples. A request near the limit can still run out of memory.
"""

import os
from pathlib import Path

import torch

from config import Config, DallEConfig, DVAEConfig
from dvae import DiscreteVAE
from errors import UserError

TRAINING_IMAGES = 60_000  # the most training images a dataset here has (MNIST, Fashion-MNIST)
MEMINFO = Path("/proc/meminfo")


def available_memory():
    """Bytes of memory this process can still take: Linux's MemAvailable, else the free (or physical) pages."""
    if MEMINFO.is_file():
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    pages = os.sysconf("SC_AVPHYS_PAGES") if "SC_AVPHYS_PAGES" in os.sysconf_names else os.sysconf("SC_PHYS_PAGES")
    return pages * os.sysconf("SC_PAGE_SIZE")


def check_memory(needed, what, advice):
    """Refuse with one line, before any work, `what` when it needs more than the memory free now."""
    free = available_memory()
    if needed > free:
        raise UserError(
            f"{what} would need about {needed / 2**30:,.1f} GiB of memory, "
            f"more than the {free / 2**30:,.1f} GiB free; {advice}"
        )


def dvae_parameters(c: DVAEConfig):
    """The dVAE's parameter count, from a model built on the meta device (which allocates nothing)."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in DiscreteVAE(c).parameters())
    except RuntimeError:  # a layer too large for torch to describe at all
        return 2**63


def dall_e_parameters(c: DallEConfig, d: DVAEConfig, vocab_size):
    """The transformer's parameter count (dall_e.py, transformer.py): blocks of 12 D^2 + 13 D, embeddings,
    position tables and the two heads (tests check it against the model)."""
    blocks = c.n_layer * (12 * c.n_embd**2 + 13 * c.n_embd)
    tables = (c.text_length + 2 * d.grid_size + 2) * c.n_embd  # text slots, rows, columns, final LayerNorm
    return blocks + tables + 2 * (vocab_size + d.codebook_size) * c.n_embd  # embeddings and heads


def sequence_length(c: DallEConfig, d: DVAEConfig):
    return c.text_length + d.grid_size**2


def dall_e_bytes(c: DallEConfig, d: DVAEConfig, vocab_size):
    """Weights and the attention masks (built with (L, L) int64 intermediates)."""
    return 4 * dall_e_parameters(c, d, vocab_size) + 32 * sequence_length(c, d) ** 2


def check_model_fits(c: DallEConfig, d: DVAEConfig, vocab_size, source):
    """Before building the models a checkpoint describes: an edited width or codebook is one line, not a crash."""
    needed = dall_e_bytes(c, d, vocab_size) + 4 * dvae_parameters(d)
    check_memory(needed, f"the models {source} describes", "it was edited, or made on a larger machine")


def sampling_memory(images, rows, model, dvae):
    """Rough bytes a sampling request holds at once: every image kept (float32, twice while saving)
    plus, for one batch of `rows` sequences, the KV cache and the decoder's widest activations."""
    c, d = model.config, dvae.config
    kept = 2 * images * d.channels * d.canvas_size**2 * 4
    cache = 2 * c.n_layer * rows * model.transformer.max_length * c.n_embd * 4
    decoding = 4 * rows * d.hidden_dim * 2 * d.canvas_size**2 * 4
    return kept + cache + decoding


def check_request_fits(images, rows, model, dvae):
    """Refuse with one line, before any work, a request this machine's memory cannot hold."""
    check_memory(
        sampling_memory(images, rows, model, dvae),
        f"{images:,} images in batches of {rows:,} sequences",
        "ask for fewer images or a smaller --batch_size",
    )


def dvae_training_bytes(c: DVAEConfig, batch_size):
    """Weights, gradients and Adam's two moments; the training images; the widest activations of a step."""
    images = 2 * TRAINING_IMAGES * c.channels * c.image_size**2  # uint8, loaded and padded
    activations = 4 * batch_size * (16 * (c.num_resnet_blocks + 1) * c.hidden_dim * c.image_size**2
                                    + 8 * c.codebook_size * c.grid_size**2)  # fmt: skip
    return 16 * dvae_parameters(c) + images + activations


def dall_e_training_bytes(config: Config, colours, vocab_size):
    """The transformer's weights, gradients and moments, its masks, the frozen dVAE, every training image's
    codes in every colour, and a step's activations and attention scores."""
    c, d, t = config.dall_e, config.dvae, config.train_dall_e
    length = sequence_length(c, d)
    codes = 8 * TRAINING_IMAGES * colours * d.grid_size**2
    activations = 4 * t.batch_size * length * (16 * c.n_embd * c.n_layer + 4 * (vocab_size + d.codebook_size))
    scores = 8 * t.batch_size * c.n_head * c.n_layer * length**2
    weights = 16 * dall_e_parameters(c, d, vocab_size) + 32 * length**2 + 4 * dvae_parameters(d)
    return weights + codes + activations + scores + 2 * TRAINING_IMAGES * d.image_size**2


def check_training_fits(config: Config, section, colours, vocab_size):
    """Refuse, before any work, a training run whose config (as --set or a YAML file made it) cannot fit."""
    if section == "train_dvae":
        needed = dvae_training_bytes(config.dvae, config.train_dvae.batch_size)
    else:
        needed = dall_e_training_bytes(config, colours, vocab_size)
    check_memory(needed, f"training with this config ({section})", "lower the sizes --set or the config file asks for")
