"""What the text side says: each dataset's classes, colours, words and captions.

    mnist          (default) MNIST digits, grey; captions "7", "seven", "a seven", "the digit 7", ...
    color_mnist    the same digits in 3 channels, each stroke in one of six colours on black, the colour
                   drawn afresh at every training step; captions name digit and colour in several word
                   orders ("a red seven", "red 7", "7 in red", "a seven, coloured red"). Ten (digit,
                   colour) pairs, HELD_OUT, are never shown in training, neither image nor caption:
                   evaluate.py measures whether the model draws them anyway (zero-shot, the paper's point).
    fashion_mnist  Fashion-MNIST's ten clothing classes, grey; captions are class names and variants.

A caption names a *concept*: a class, or a (class, colour) pair. Its words make the tokenizer's
vocabulary, and the longest caption sets how many text positions the model needs.
"""

import random
from dataclasses import dataclass, field

import torch

from errors import UserError, shorten
from tokenizer import Tokenizer

DIGITS = [str(d) for d in range(10)]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PALETTE = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}  # fmt: skip
WHITE = (255, 255, 255)  # a scene's uncoloured digit (scenes.py): colour None in 3 channels
HELD_OUT = (
    (0, "cyan"), (1, "magenta"), (2, "yellow"), (3, "green"), (4, "red"),
    (5, "blue"), (6, "yellow"), (7, "blue"), (8, "green"), (9, "red"),
)  # fmt: skip
FASHION = (
    ("t-shirt", "a t-shirt", "a top"),
    ("trousers", "a pair of trousers", "trouser", "pants"),
    ("pullover", "a pullover", "a sweater", "a jumper"),
    ("dress", "a dress"),
    ("coat", "a coat"),
    ("sandal", "a sandal", "sandals"),
    ("shirt", "a shirt"),
    ("sneaker", "a sneaker", "sneakers", "a trainer"),
    ("bag", "a bag", "a handbag"),
    ("ankle boot", "an ankle boot", "a boot", "boots"),
)


def digit_captions(label, colour):
    """Every phrasing of a grey digit: the first is the canonical one, used to name the class."""
    n, w = DIGITS[label], NUMBER_WORDS[label]
    return [n, w, f"a {w}", f"the digit {n}", f"the digit {w}", f"a handwritten {w}", f"number {n}"]


def colour_digit_captions(label, colour):
    """Every phrasing of a coloured digit, in several word orders and two spellings of 'coloured'."""
    n, w, c = DIGITS[label], NUMBER_WORDS[label], colour
    return [
        f"a {c} {w}", f"{c} {n}", f"{c} {w}", f"{n} in {c}", f"{w} in {c}",
        f"a {w}, coloured {c}", f"a {w} colored {c}", f"the digit {n} in {c}",
    ]  # fmt: skip


def fashion_captions(label, colour):
    return list(FASHION[label])


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # whose images: "mnist" or "fashion_mnist" (data.py loads them)
    class_names: tuple
    captions: object  # (label, colour or None) -> list of phrasings, the canonical one first
    colours: tuple = (None,)  # stroke colours, or (None,) for grey images
    held_out: tuple = field(default=())  # (label, colour) pairs never shown in training

    @property
    def channels(self):
        return 1 if self.colours == (None,) else 3

    @property
    def concepts(self):
        """Every (label, colour) a caption can name, class-major; held-out pairs included."""
        return [(label, colour) for label in range(len(self.class_names)) for colour in self.colours]

    def seen(self, label, colour):
        return (label, colour) not in self.held_out

    def words(self):
        """The vocabulary: every word of every caption, in order of first appearance."""
        seen = {}
        for concept in self.concepts:
            for caption in self.captions(*concept):
                seen.update(dict.fromkeys(Tokenizer.split(caption)))
        return list(seen)

    def text_length(self):
        return max(len(Tokenizer.split(c)) for concept in self.concepts for c in self.captions(*concept))

    def tokenizer(self):
        return Tokenizer(self.words(), self.text_length())

    def canonical(self, concept):
        return self.captions(*concept)[0]

    def allowed_colours(self):
        """(classes, colours) bool: which colours each class is shown in during training."""
        return torch.tensor([[self.seen(label, c) for c in self.colours] for label in range(len(self.class_names))])


DATASETS = {
    "mnist": Dataset("mnist", "mnist", tuple(NUMBER_WORDS), digit_captions),
    "color_mnist": Dataset(
        "color_mnist", "mnist", tuple(NUMBER_WORDS), colour_digit_captions, tuple(PALETTE), HELD_OUT
    ),
    "fashion_mnist": Dataset("fashion_mnist", "fashion_mnist", tuple(f[0] for f in FASHION), fashion_captions),
}


def caption_table(dataset, tokenizer):
    """(concepts, P, T) token ids: every phrasing of every concept, shorter lists repeated to P."""
    return phrasing_table(tokenizer, [dataset.captions(*concept) for concept in dataset.concepts])


def phrasing_table(tokenizer, phrasings):
    """K lists of phrasings -> (K, P, T) token ids, shorter lists repeated to the longest's P."""
    most = max(len(p) for p in phrasings)
    ids = [[tokenizer.encode(p[i % len(p)]) for i in range(most)] for p in phrasings]
    return torch.tensor(ids)


def random_colours(labels, allowed, generator):
    """(N,) labels -> (N,) colour indices, each uniform among the colours its class is shown in."""
    return torch.multinomial(allowed[labels].float(), 1, generator=generator).squeeze(1)


def colourise(images, colour_ids, dataset):
    """(N, 1, S, S) uint8 grey -> (N, C, S, S) uint8: each stroke in its colour (grey data unchanged)."""
    if dataset.channels == 1:
        return images
    palette = (
        torch.tensor([PALETTE[c] if c else WHITE for c in dataset.colours], dtype=torch.float32) / 255
    )  # (colours, 3)
    return (images.float() * palette[colour_ids][:, :, None, None]).round().to(torch.uint8)  # (N, 3, S, S)


def in_training_colours(dataset, images, labels, generator):
    """Grey images (N, 1, S, S) as the model sees them in training: (N, C, S, S), each in a colour its class is
    shown in (grey data unchanged), and their colour indices (N,)."""
    colours = random_colours(labels, dataset.allowed_colours(), generator)
    return colourise(images, colours, dataset), colours


def shown_split(dataset, images, labels):
    """A held-out split as every script measures it: in_training_colours with the fixed seed 0, so that the
    trainers' validation figures, the figures and evaluate.py see the same coloured images."""
    return in_training_colours(dataset, images, labels, torch.Generator().manual_seed(0))


def concept_index(dataset, labels, colour_ids):
    """Index into dataset.concepts of each (label, colour)."""
    return labels * len(dataset.colours) + colour_ids


def held_out_mask(dataset):
    """(concepts,) bool: which concepts are held-out pairs."""
    return torch.tensor([not dataset.seen(*concept) for concept in dataset.concepts])


def sample_prompts(dataset, per_concept, seed=0):
    """Prompts for evaluation: per_concept per concept, cycling through its phrasings; their concepts."""
    rng = random.Random(seed)
    prompts, concepts = [], []
    for k, concept in enumerate(dataset.concepts):
        phrasings = dataset.captions(*concept)
        start = rng.randrange(len(phrasings))
        prompts += [phrasings[(start + i) % len(phrasings)] for i in range(per_concept)]
        concepts += [k] * per_concept
    return prompts, torch.tensor(concepts)


def encode_prompts(tokenizer, prompts):
    """Prompts -> (P, T) token ids; the first bad prompt raises UserError naming it."""
    return torch.tensor([tokenizer.encode(p) for p in prompts], dtype=torch.long)


def check_trained_prompts(tokenizer, dataset, prompts, text):
    """Refuse a prompt that is none of the captions the model was trained on (held-out pairs included)."""
    known = {tuple(row.tolist()) for row in caption_table(dataset, tokenizer).flatten(0, 1)}
    for prompt, ids in zip(prompts, text):
        if tuple(ids.tolist()) not in known:
            examples = ", ".join(repr(dataset.canonical(c)) for c in dataset.concepts[:3])
            raise UserError(
                f"the model was not trained on prompts like {shorten(prompt)!r}: it knows one {dataset.name} caption "
                f"at a time, such as {examples}"
            )
