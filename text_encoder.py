"""A text encoder that reads word order: the text side of a reranker for scenes (CLIP in miniature).

The MNIST reranker (rerank.py) embeds a prompt as the mean of its word embeddings, a bag of words.
A bag cannot tell "a red three and a blue seven" from "a blue three and a red seven", nor "a three
left of a seven" from "a seven left of a three": the same words, in another order. This encoder
adds a learned embedding per text position and runs a small transformer over the words, each word
attending to every other (CLIP's text encoder is a transformer too, Radford et al. 2021), padding
masked out; the mean of the words' outputs, projected, is the caption's unit vector. Which colour
word stands next to which digit word now changes the embedding, and contrastive training (CLIP's
symmetric loss, as rerank.py is trained) teaches it which changes matter.
"""

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TextEncoderShape:
    vocab_size: int  # the tokenizer's, pads included
    num_words: int  # ids below this are words; the rest are padding
    text_length: int
    embed_dim: int = 64
    n_layer: int = 2
    n_head: int = 4


class WordOrderEncoder(nn.Module):
    """(P, T) token ids -> (P, E) unit vectors that depend on the words and on their order."""

    def __init__(self, shape: TextEncoderShape):
        super().__init__()
        if shape.embed_dim % shape.n_head:
            raise ValueError(f"embed_dim {shape.embed_dim} is not a multiple of n_head {shape.n_head}")
        self.shape = shape
        self.word_embedding = nn.Embedding(shape.vocab_size, shape.embed_dim)
        self.position_embedding = nn.Embedding(shape.text_length, shape.embed_dim)  # as large as the words' at first
        layer = nn.TransformerEncoderLayer(
            shape.embed_dim, shape.n_head, 4 * shape.embed_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, shape.n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(shape.embed_dim)
        self.projection = nn.Linear(shape.embed_dim, shape.embed_dim)

    def forward(self, text):
        words = text < self.shape.num_words  # (P, T) True at words, False at padding
        x = self.word_embedding(text) + self.position_embedding.weight[: text.shape[1]]  # (P, T, E)
        unread = ~words & words.any(dim=1, keepdim=True)  # an all-padding prompt reads its padding: no empty rows
        x = self.norm(self.transformer(x, src_key_padding_mask=unread))  # (P, T, E)
        mean = (x * words[..., None]).sum(1) / words.sum(1, keepdim=True).clamp(min=1)  # (P, E)
        return F.normalize(self.projection(mean), dim=-1)


def contrastive_loss(image_embeddings, text_embeddings, same, log_scale):
    """CLIP's symmetric loss over a batch: (B, E) images and (B, E) captions, unit vectors; same (B, B) marks
    the pairs that show the same thing (several may), whose targets share the probability."""
    logits = log_scale.exp() * image_embeddings @ text_embeddings.T  # (B images, B captions)
    by_image, by_caption = same / same.sum(1, keepdim=True), same.T / same.sum(0)[:, None]
    return (F.cross_entropy(logits, by_image) + F.cross_entropy(logits.T, by_caption)) / 2
