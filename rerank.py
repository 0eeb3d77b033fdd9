"""Reranking (paper section 2.3): draw several candidates per prompt, keep one that matches.

DALL-E draws up to 512 images per caption and ranks them with CLIP (Radford et al., 2021), a
contrastive model that scores how well an image matches a caption. Ours is CLIP in miniature,
trained by train_mnist.py (train_reranker) on the same training digits as the transformer, in seconds:

    text encoder   mean of the prompt's word embeddings, projected     -> unit vector (E,)
    image encoder  a small strided CNN                                  -> unit vector (E,)
    score          cosine similarity of the two, times a learned scale

It scores any caption the tokenizer accepts against any image, and is trained as CLIP is: over a
batch of (image, caption) pairs, the symmetric contrastive loss pushes each image towards the
captions of its batch that describe it, and each caption towards its images (several pairs in a
batch can share a concept, so the targets are spread over all of them). It is trained on the
same training pairs as the transformer, never on held-out ones, and never sees the judges
(judge.py) that evaluate.py measures with.

To read an image, it compares it with every concept (a class, or a class in a colour:
captions.py), the held-out ones included: a concept it never saw can still be scored, word by
word. A concept's text embedding is the mean over its phrasings (CLIP's prompt ensembling).

Scenes (SceneReranker) need a text encoder that reads word order: "a red three and a blue seven"
and "a blue three and a red seven" are the same bag of words. Its text side is text_encoder.py's
small transformer, its image side a CNN one halving deeper over the 64x64 canvas, trained as CLIP is (by
scene_training.py). Its concepts are the scenes a caption can ask for, each with every phrasing
that asks for it (a relation and its mirror, "a 3 left of a 7" and "a 7 right of a 3", are one); a
true scene fits exactly one concept of its caption's category, so an image is read against the
concepts of one category at a time: the softmax runs within each category.

Which candidate to keep: the paper keeps the top-scored one. On MNIST that picks the most
typical digit every time, so the samples lose their variety. We keep the first candidate the
reranker accepts, one it reads as the prompt's concept with probability above ACCEPT = 0.9, and
fall back to its favourite when it accepts none. That filters out wrong images while leaving
the transformer's choice among right ones alone.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from text_encoder import TextEncoderShape, WordOrderEncoder


@dataclass
class RerankerConfig:
    """The reranker's sizes, set by train_mnist.py from the tokenizer and dataset, stored in the checkpoint."""

    vocab_size: int  # the tokenizer's, pads included
    num_words: int  # ids below this are words; the rest are padding
    text_length: int
    channels: int = 1
    concepts: int = 10  # the concepts it reads images against ...
    phrasings: int = 1  # ... each with this many captions
    embed_dim: int = 64
    word_order: bool = False  # True: a SceneReranker, its text read by a transformer over the words


def image_encoder(channels, embed_dim):
    """(B, C, S, S) -> (B, E): a small strided CNN; its 4x4 pooled map keeps where things are."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 4, stride=2, padding=1),
        nn.ReLU(),  # (B, 32, S/2, S/2)
        nn.Conv2d(32, 64, 4, stride=2, padding=1),
        nn.ReLU(),  # (B, 64, S/4, S/4)
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),  # (B, 64 * 16)
        nn.Linear(64 * 16, embed_dim),
    )


def scene_image_encoder(channels, embed_dim):
    """(B, C, 64, 64) -> (B, E): the CNN one halving deeper, so that each cell of its 8x8 map sees most of a
    digit before the 4x4 pooled map is read, through a hidden layer, as a whole. With image_encoder's two
    halvings a cell saw a tenth of a digit, and the reranker read true position and colour-attribution
    scenes right (its favourite concept) only 15% and 14% of the time (docs/experiments.md)."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 4, stride=2, padding=1),
        nn.ReLU(),  # (B, 32, 32, 32)
        nn.Conv2d(32, 64, 4, stride=2, padding=1),
        nn.ReLU(),  # (B, 64, 16, 16)
        nn.Conv2d(64, 128, 4, stride=2, padding=1),
        nn.ReLU(),  # (B, 128, 8, 8)
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),  # (B, 128 * 16): two by two cells a place
        nn.Linear(128 * 16, 256),
        nn.ReLU(),
        nn.Linear(256, embed_dim),
    )


def caption_buffer(config):
    """(concepts, P, T) zeros: every phrasing of every concept, filled in by the trainer."""
    return torch.zeros(config.concepts, config.phrasings, config.text_length, dtype=torch.long)


class ConceptReader(nn.Module):
    """What both rerankers share: scores of images against prompts, and reading an image as a concept.
    A subclass gives encode_text, encode_image, log_scale and the captions buffer."""

    def encode_image(self, images):
        """(B, C, S, S) in [0, 1] -> (B, E) unit vectors."""
        return F.normalize(self.image_encoder(images), dim=-1)

    def logits(self, images, prompts):
        """(B, C, S, S) images against (P, T) prompts -> (B, P) scores."""
        return self.log_scale.exp() * self.encode_image(images) @ self.encode_text(prompts).T

    def concept_embeddings(self):
        """(concepts, E) unit vectors: each concept's phrasings, embedded and averaged."""
        K, P, T = self.captions.shape
        return F.normalize(self.encode_text(self.captions.view(K * P, T)).view(K, P, -1).mean(dim=1), dim=-1)

    def concept_probabilities(self, images):
        """(B, C, S, S) -> (B, concepts): softmax over the concepts."""
        return (self.log_scale.exp() * self.encode_image(images) @ self.concept_embeddings().T).softmax(dim=-1)

    def concept_of(self, text):
        """(B, T) prompts -> (B,) the concept of the known phrasing with the nearest text embedding."""
        K, P, T = self.captions.shape
        nearest = (self.encode_text(text) @ self.encode_text(self.captions.view(K * P, T)).T).argmax(dim=-1)
        return nearest // P


class Reranker(ConceptReader):
    """The MNIST reranker: the mean of the prompt's word embeddings, a bag of words, against the CNN."""

    def __init__(self, config: RerankerConfig):
        super().__init__()
        self.config = config
        self.num_words = config.num_words
        self.word_embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.text_projection = nn.Linear(config.embed_dim, config.embed_dim)
        self.image_encoder = image_encoder(config.channels, config.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # CLIP's learned temperature
        self.register_buffer("captions", caption_buffer(config))  # (concepts, P, T); set by train_reranker

    def encode_text(self, text):
        """(P, T) token ids -> (P, E) unit vectors; padding is left out of the mean."""
        words = (text < self.num_words).float().unsqueeze(-1)  # (P, T, 1)
        mean = (self.word_embedding(text) * words).sum(1) / words.sum(1).clamp(min=1)  # (P, E)
        return F.normalize(self.text_projection(mean), dim=-1)


class SceneReranker(ConceptReader):
    """The scenes reranker: the word-order encoder (text_encoder.py) against the CNN over the canvas."""

    def __init__(self, config: RerankerConfig):
        super().__init__()
        self.config = config
        shape = TextEncoderShape(config.vocab_size, config.num_words, config.text_length, config.embed_dim)
        self.text_encoder = WordOrderEncoder(shape)
        self.image_encoder = scene_image_encoder(config.channels, config.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.register_buffer("captions", caption_buffer(config))  # (concepts, P, T); set by the trainer
        self.register_buffer("categories", torch.zeros(config.concepts, dtype=torch.long))  # (concepts,)
        # Thirty thousand phrasings take seconds to embed: the trained concepts' embeddings are kept, as
        # CLIP's zero-shot classifier keeps its classes' (set by freeze_concepts once training ends).
        self.register_buffer("concept_table", torch.zeros(config.concepts, config.embed_dim))  # (concepts, E)

    def encode_text(self, text):
        """(P, T) token ids -> (P, E) unit vectors that depend on the words' order."""
        return self.text_encoder(text)

    @torch.no_grad()
    def freeze_concepts(self):
        """Embed every concept's phrasings once (ConceptReader.concept_embeddings) and keep the result."""
        self.concept_table.copy_(super().concept_embeddings())

    def concept_embeddings(self):
        return self.concept_table

    def concept_of(self, text):
        """(B, T) prompts, each one of the phrasings word for word (generate_mnist.py checks) -> (B,) its concept."""
        found = [(self.captions[None] == chunk[:, None, None]).all(-1).any(-1) for chunk in text.split(64)]  # (b, K)
        return torch.cat(found).float().argmax(dim=-1)

    def concept_probabilities(self, images):
        """(B, C, S, S) -> (B, concepts): softmax over the concepts of each category on its own."""
        logits = self.log_scale.exp() * self.encode_image(images) @ self.concept_embeddings().T  # (B, concepts)
        probabilities = torch.empty_like(logits)
        for category in self.categories.unique():
            inside = self.categories == category
            probabilities[:, inside] = logits[:, inside].softmax(dim=-1)
        return probabilities


ACCEPT = 0.9  # the reranker accepts a candidate when the prompt's concept is at least this probable


def reranker_state(model):
    """What a checkpoint stores: the config (under "shape", its name in earlier checkpoints) and the weights."""
    return {"shape": dataclasses.asdict(model.config), "model": model.state_dict()}


def make_reranker(config):
    return (SceneReranker if config.word_order else Reranker)(config)


def reranker_from_state(state):
    model = make_reranker(RerankerConfig(**state["shape"]))
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False)
