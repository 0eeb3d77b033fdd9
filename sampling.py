"""From prompts to pictures: sample image tokens, decode them with the dVAE, rerank (paper section 2.3).

The model files each do one thing: dall_e.py draws tokens, dvae.py turns tokens into pixels,
rerank.py scores images against prompts. This module is the pipeline the scripts share.
"""

import torch

from rerank import rerank


@torch.no_grad()
def generate_images(
    model,
    dvae,
    text,
    temperature=1.0,
    top_k=None,
    generator=None,
    use_cache=True,
    reranker=None,
    candidates=1,
    keep="first",
):
    """text (B, T) -> images (B, C, S, S) in [0, 1].

    With a reranker, each prompt gets `candidates` draws and keeps one: the first the reranker
    accepts as showing the prompt, or its favourite (paper section 2.3; see rerank.py).
    """
    if reranker is None or candidates == 1:
        return dvae.decode(model.generate(text, temperature, top_k, generator, use_cache))
    drawn = text.repeat_interleave(candidates, dim=0)  # (B * candidates, T), each prompt's draws adjacent
    images = dvae.decode(model.generate(drawn, temperature, top_k, generator, use_cache))
    return rerank(images, text, reranker, candidates, keep)
