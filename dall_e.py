"""DALL-E: one transformer over [text tokens | image tokens] (paper section 2.2).

Training maximises the likelihood of the whole sequence. For T text tokens t and N image
tokens z (from the frozen dVAE), the input is [t_1..t_T, z_1..z_{N-1}] and the outputs at

    positions 1 .. T-1      predict t_2 .. t_T    with the text head  (text loss)
    positions T .. T+N-1    predict z_1 .. z_N    with the image head (image loss)

so the last text position predicts the first image token, through the image head, and
that prediction is trained. The loss is 1/8 text + 7/8 image, as in the paper.

Sampling feeds the prompt, then draws the N image tokens one at a time (temperature, top-k,
top-p, classifier-free guidance; optionally after the first rows of a given image), with a KV
cache so each new token costs one position's work; sampling.py decodes the grid with the dVAE
and reranks the candidates.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from config import DallEConfig, DVAEConfig
from transformer import Transformer


class DallE(nn.Module):
    def __init__(self, config: DallEConfig, dvae_config: DVAEConfig, text_vocab_size):
        super().__init__()
        self.config = config
        self.grid_size = dvae_config.canvas_grid  # the whole image's tokens per side: a scene's 2x2 places of 8x8
        self.text_embedding = nn.Embedding(text_vocab_size, config.n_embd)
        self.image_embedding = nn.Embedding(dvae_config.codebook_size, config.n_embd)
        self.transformer = Transformer(config, self.grid_size)
        self.text_head = nn.Linear(config.n_embd, text_vocab_size, bias=False)
        self.image_head = nn.Linear(config.n_embd, dvae_config.codebook_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                # scaled init for residual projections, per GPT-2
                nn.init.normal_(p, std=0.02 / (2 * config.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def check_lengths(self, text, image_tokens, exact=True):
        """Fail loudly on a sequence of the wrong length: position embeddings and masks would shift."""
        T, n = self.transformer.config.text_length, self.grid_size**2
        if text.dim() != 2 or text.shape[1] != T:
            raise ValueError(f"text of shape {tuple(text.shape)} given to a model built for (B, {T}) text tokens")
        if image_tokens is not None and (image_tokens.shape[1] > n or (exact and image_tokens.shape[1] != n)):
            wanted = f"(B, {n})" if exact else f"(B, P) with P <= {n}"
            raise ValueError(f"image tokens of shape {tuple(image_tokens.shape)} given to a model built for {wanted}")

    def logits(self, text, image_tokens):
        """text (B, T), image_tokens (B, N) -> text logits (B, T-1, Vt), image logits (B, N, K)."""
        self.check_lengths(text, image_tokens)
        T = text.shape[1]
        x = torch.cat([self.text_embedding(text), self.image_embedding(image_tokens[:, :-1])], dim=1)  # (B, T+N-1, D)
        h = self.transformer(x)  # (B, T+N-1, D)
        return self.text_head(h[:, : T - 1]), self.image_head(h[:, T - 1 :])

    def forward(self, text, image_tokens, text_loss_weight=1.0 / 8):
        """The weighted loss: text_loss_weight * text + (1 - text_loss_weight) * image (nats per token)."""
        text_logits, image_logits = self.logits(text, image_tokens)
        text_logits, image_logits = text_logits.float(), image_logits.float()  # the loss in float32, also under bf16
        image_loss = F.cross_entropy(image_logits.flatten(0, 1), image_tokens.flatten())
        if text.shape[1] > 1:
            text_loss = F.cross_entropy(text_logits.flatten(0, 1), text[:, 1:].flatten())
        else:  # one text slot: nothing to predict; the zero keeps the text head in the graph for DDP
            text_loss = text_logits.sum() * 0.0
        return {
            "loss": text_loss_weight * text_loss + (1 - text_loss_weight) * image_loss,
            "text_loss": text_loss,
            "image_loss": image_loss,
        }

    def null_text(self, batch):
        """(B, T) the empty prompt: all padding, the last T ids of the text vocabulary (tokenizer.py)."""
        T = self.transformer.config.text_length
        pads = torch.arange(self.text_embedding.num_embeddings - T, self.text_embedding.num_embeddings)
        return pads.to(self.text_embedding.weight.device).expand(batch, T)

    def embed(self, text, image_tokens):
        """text (B, T), image_tokens (B, P) -> (B, T + P, D): the sequence's first T + P inputs."""
        return torch.cat([self.text_embedding(text), self.image_embedding(image_tokens)], dim=1)

    @torch.no_grad()
    def generate(
        self,
        text,
        temperature=1.0,
        top_k=None,
        top_p=None,
        guidance=1.0,
        prime=None,
        generator=None,
        use_cache=True,
        on_token=None,
    ):
        """text (B, T) -> sampled image tokens (B, G, G).

        prime (B, P): the first P image tokens in raster order, kept; the other N - P are drawn
        after them (image completion, paper section 3.3).
        guidance S != 1 (classifier-free guidance): the batch runs twice over, each prompt and the
        empty prompt (null_text), one batch of 2B rows whose halves keep their own keys and values
        in the cache; each token is drawn from uncond + S * (cond - uncond). S = 1 is plain
        sampling, at no extra cost. With use_cache=False every step re-runs the whole sequence;
        the tokens are the same. on_token(i, tokens (B, i + 1)), if given, is called after each
        drawn token i, so a caller can watch the grid fill (demo.py); it does not change the draw.
        """
        self.check_lengths(text, prime, exact=False)
        B, T = text.shape
        n = self.grid_size**2
        tokens = text.new_empty(B, 0) if prime is None else prime  # (B, P)
        guided = guidance != 1.0
        if guided:
            text = torch.cat([text, self.null_text(B)])  # (2B, T): the prompts, then the empty prompt
        rows = len(text)
        cache = self.transformer.new_cache(rows, text.device, self._cache_dtype(text.device)) if use_cache else None
        x, start = self.embed(text, tokens.repeat(rows // B, 1)), 0  # (rows, T + P, D): the given part
        for i in range(tokens.shape[1], n):
            if not use_cache:
                x, start = self.embed(text, tokens.repeat(rows // B, 1)), 0
            h = self.transformer(x, start, cache)  # (rows, len(x), D)
            logits = self.image_head(h[:, -1]).float()  # (rows, K)
            if guided:
                cond, uncond = logits.chunk(2)  # (B, K) each
                logits = uncond + guidance * (cond - uncond)
            next_token = sample_token(logits, temperature, top_k, top_p, generator)  # (B,)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, i + 1)
            if on_token is not None:
                on_token(i, tokens)
            x, start = self.image_embedding(next_token.repeat(rows // B)[:, None]), T + i  # (rows, 1, D)
        grid = rearrange(tokens, "b (h w) -> b h w", h=self.grid_size)  # raster order back onto the grid
        return grid

    def _cache_dtype(self, device):
        """The dtype the keys and values come out in: bf16 under bf16 autocast, else the weights'."""
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.text_embedding.weight.dtype


def filtered_probabilities(logits, temperature=1.0, top_k=None, top_p=None):
    """logits (B, K) -> probabilities (B, K) of softmax(logits / temperature), filtered.

    top_k keeps exactly the k most likely codes (ties broken by topk's order); top_p (nucleus
    sampling, Holtzman et al. 2019) then keeps the smallest set of the most likely codes whose
    probability reaches top_p. What is kept is renormalised.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        best = logits.topk(top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(1, best.indices, best.values)
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True)  # (B, K) most likely first
        above = ranked.cumsum(dim=-1) - ranked  # probability of the codes ranked above each
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, above < top_p)
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, K) -> one token per row (B,), drawn from filtered_probabilities.

    By inverting the cumulative distribution: one uniform number per row, where torch.multinomial
    draws one exponential number per code (a tenth of sampling's time at batch 1,024).
    """
    probs = filtered_probabilities(logits, temperature, top_k, top_p)
    cdf = probs.cumsum(dim=-1)  # (B, K)
    u = torch.rand(len(probs), 1, generator=generator, device=probs.device) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)


@torch.no_grad()
def heldout_losses(model, text, image_tokens, batch_size=500):
    """Mean text and image loss (nats per token) over held-out (text (M, T), image_tokens (M, N))."""
    totals = torch.zeros(2)
    for t, z in zip(text.split(batch_size), image_tokens.split(batch_size)):
        out = model(t, z)
        totals += torch.stack([out["text_loss"], out["image_loss"]]).cpu() * len(t)
    text_loss, image_loss = (totals / len(text)).tolist()
    return {"text_loss": text_loss, "image_loss": image_loss}
