"""From prompts to pictures: sample image tokens, decode them with the dVAE, rerank (paper section 2.3).

The model files each do one thing: dall_e.py draws tokens, dvae.py turns tokens into pixels,
rerank.py scores images against prompts. This module is the pipeline every script shares:
sample_in_batches (generate_mnist.py, evaluate.py, benchmark.py, make_figures.py) -> generate_images
(reranking) -> draw (tokens, then pixels, in the batch's precision).
"""

import math

import torch
from tqdm import tqdm

from device import fast_bf16, precision_context
from rerank import ACCEPT

SMALLEST_BF16_BATCH = 128  # sampling fewer rows at once, bf16 autocast costs more than it saves (docs/engineering.md)


def sampling_precision(precision, device, rows):
    """--precision for one batch of `rows` sequences: auto is bf16 only for large batches on fast-bf16 devices."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) and rows >= SMALLEST_BF16_BATCH else "fp32"
    return precision


@torch.no_grad()
def completion_prime(dvae, image, rows):
    """images (B, C, S, S) in [0, 1] -> (B, rows * G): the tokens of its top `rows` token rows (paper section 3.3).

    The pixels below those rows are blanked before encoding: the encoder's receptive field reaches
    far below a token's own cell, so tokens of the whole image would carry the hidden part.
    """
    G, S = dvae.config.canvas_grid, dvae.config.canvas_size
    shown = image.clone()
    shown[..., rows * S // G :, :] = 0.0  # black, the background of every training image
    return dvae.encode(shown).flatten(1)[:, : rows * G]


@torch.no_grad()
def draw(model, dvae, text, prime=None, generator=None, precision="fp32", **sampling):
    """text (B, T), prime (B, P) or None -> images (B, C, S, S) in [0, 1], float32.

    precision: auto, fp32 or bf16; sampling: DallE.generate's options (temperature, top_k, top_p,
    guidance, use_cache, on_token).
    """
    rows = len(text) * (2 if sampling.get("guidance", 1.0) != 1.0 else 1)
    with precision_context(sampling_precision(precision, text.device, rows), text.device):
        return dvae.decode(model.generate(text, prime=prime, generator=generator, **sampling)).float()


@torch.no_grad()
def sample_in_batches(model, dvae, text, batch_size, seed=0, prime=None, reranker=None, candidates=1, progress=False,
                      **sampling):  # fmt: skip
    """text (N, T), prime (N, P) or None -> images (N, C, S, S) in [0, 1] on the CPU.

    batch_size prompts at a time on the model's device, all from one generator seeded with `seed`:
    the same prompts, seed, batch size and precision give the same images. sampling: draw's options.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    primes = prime.split(batch_size) if prime is not None else [None] * math.ceil(len(text) / batch_size)
    chunks = []
    for batch, p in tqdm(zip(text.split(batch_size), primes), desc="sampling", total=len(primes), disable=not progress):
        p = None if p is None else p.to(device)
        images = generate_images(model, dvae, batch.to(device), p, generator, reranker, candidates, **sampling)
        chunks.append(images.cpu())
    return torch.cat(chunks)


@torch.no_grad()
def generate_images(model, dvae, text, prime=None, generator=None, reranker=None, candidates=1, **sampling):
    """text (B, T) -> images (B, C, S, S) in [0, 1]; sampling: draw's options.

    With a reranker, each prompt gets up to `candidates` draws and keeps the first the reranker
    accepts as showing the prompt, else its favourite (paper section 2.3; see rerank.py).
    """
    if reranker is None or candidates == 1:
        return draw(model, dvae, text, prime, generator, **sampling)
    return first_accepted(model, dvae, text, prime, generator, reranker, candidates, **sampling)


@torch.no_grad()
def first_accepted(model, dvae, text, prime, generator, reranker, candidates, **sampling):
    """Draw in rounds of one candidate per prompt; a prompt stops drawing once the reranker accepts one.

    The same choice as drawing all candidates and keeping the first accepted, but the prompts the
    first draw already satisfies (most of them) cost one draw, not `candidates`.
    """
    B = len(text)
    wanted = reranker.concept_of(text)  # (B,) the concept each prompt asks for
    kept, kept_p = None, torch.full((B,), -1.0, device=text.device)
    pending = torch.arange(B, device=text.device)  # prompts still without an accepted candidate
    for _ in range(candidates):
        images = draw(model, dvae, text[pending], None if prime is None else prime[pending], generator, **sampling)
        kept = images.new_zeros(B, *images.shape[1:]) if kept is None else kept
        p = reranker.concept_probabilities(images).float()[torch.arange(len(pending)), wanted[pending]]
        better = p > kept_p[pending]
        kept[pending[better]], kept_p[pending[better]] = images[better], p[better]
        pending = pending[kept_p[pending] <= ACCEPT]
        if len(pending) == 0:
            break
    return kept
