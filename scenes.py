"""Scenes: one to four MNIST digits on a 64x64 canvas, captioned by scene_grammar.py.

The canvas is a 2x2 grid of 32x32 places, numbered in reading order:

    0 | 1        each digit sits in its own place, moved by up to JITTER pixels either way, which
    --+--        keeps every stroke inside its place (a 28x28 MNIST digit has 2 black pixels of
    2 | 3        padding in 32x32); empty places stay black.

A digit is white unless its caption names a colour (captions.PALETTE): the caption says everything
about the scene except where its digits stand, and, for a relation, it says that too. Training
scenes use training digits only; evaluation renders the same way from test digits.

Held out: compositions training never shows, neither as image nor as caption, to measure whether
the model composes them from parts it saw apart (the paper's zero-shot claim, across digits).
They are defined on what a scene *contains*, not on its caption: an image with a 3 left of a 7
also shows "a seven to the right of a three", and a scene holding a red 3 and a blue 7 shows that
binding whatever its caption says. So the sampler rejects every scene whose contents realise one.
"""

from collections import Counter
from dataclasses import dataclass

import torch

from captions import NUMBER_WORDS, PALETTE, WHITE, Dataset
from errors import UserError
from scene_grammar import (
    CATEGORIES,
    COUNTS,
    RELATIONS,
    Digit,
    Spec,
    all_specs,
    noun_phrases,
    phrasings,
    text_length,
    vocabulary,
)

CANVAS, PLACE, JITTER = 64, 32, 2
PLACES = 4
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}

# Each part of every held-out composition is seen elsewhere: the 3 left of other digits, the 7 right
# of others, the 7 left of the 3, the 3 above the 7; red 3s, blue 7s, a blue 3 with a red 7; three of
# other digits and two or four 4s. A relation is held out with its mirror ((3, 7, "left") is also
# (7, 3, "right")), a binding in either order, a count with exactly that many of the digit.
HELD_OUT_RELATIONS = ((3, 7, "left"), (0, 8, "above"), (6, 2, "right"), (9, 4, "below"))  # (a, b, a is <rel> b)
HELD_OUT_BINDINGS = (((3, "red"), (7, "blue")), ((1, "green"), (4, "magenta")), ((5, "cyan"), (9, "yellow")))
HELD_OUT_COUNTS = ((3, 4), (2, 9), (4, 6))  # (count, digit): "three fours", "two nines", "four sixes"


def digit_phrasings(label, colour):
    """A single digit of a scene, white (colour None) or coloured: the grammar's noun phrases."""
    return noun_phrases(Digit(label, colour))


@dataclass(frozen=True)
class SceneDataset(Dataset):
    """--dataset scenes as the scripts see it. Its concepts are single digits, white or in a palette colour:
    what the dVAE learns, one 32x32 place at a time, coloured as captions.py colours color_mnist. Its words
    and text length are the grammar's, for the transformer and the reranker, which learn whole canvases."""

    def words(self):
        return vocabulary()

    def text_length(self):
        return text_length()


SCENES = SceneDataset("scenes", "mnist", tuple(NUMBER_WORDS), digit_phrasings, (None, *PALETTE))


@dataclass(frozen=True)
class Item:
    """One digit of a scene: which, in what colour (None: white), in which place (0 to 3)."""

    digit: int
    colour: str | None
    place: int


def row(place):
    return place // 2


def column(place):
    return place % 2


def holds(relation, p, q):
    """Whether place p is <relation> place q."""
    if relation in ("left", "right"):
        return column(p) < column(q) if relation == "left" else column(p) > column(q)
    return row(p) < row(q) if relation == "above" else row(p) > row(q)


def relations(contents):
    """Every (a, b, relation) a scene shows between two different digits: a is <relation> b."""
    return {
        (p.digit, q.digit, r)
        for p in contents
        for q in contents
        for r in RELATIONS
        if p.digit != q.digit and holds(r, p.place, q.place)
    }


def bindings(contents):
    """Every pair of coloured digits a scene shows together, as frozensets of (digit, colour)."""
    coloured = [(p.digit, p.colour) for p in contents if p.colour]
    return {frozenset((a, b)) for a in coloured for b in coloured if a[0] != b[0]}


def counts(contents):
    return {(n, d) for d, n in Counter(p.digit for p in contents).items()}


HELD_RELATIONS = {(a, b, r) for a, b, r in HELD_OUT_RELATIONS} | {(b, a, OPPOSITE[r]) for a, b, r in HELD_OUT_RELATIONS}
HELD_BINDINGS = {frozenset(pair) for pair in HELD_OUT_BINDINGS}


def held_out_in(contents):
    """The held-out compositions a scene's contents realise (empty for a scene training may show)."""
    return (
        (relations(contents) & HELD_RELATIONS)
        | (bindings(contents) & HELD_BINDINGS)
        | (counts(contents) & set(HELD_OUT_COUNTS))
    )


def spec_held_out(spec):
    """Whether a caption asks for a held-out composition (every scene that fits it realises one)."""
    d = spec.digits
    if spec.relation:
        return (d[0].digit, d[1].digit, spec.relation) in HELD_RELATIONS
    if spec.category == "counting":
        return (len(d), d[0].digit) in HELD_OUT_COUNTS
    return len(d) == 2 and frozenset((x.digit, x.colour) for x in d) in HELD_BINDINGS


def held_out_specs():
    """Every Spec the grammar can say whose scenes are all held out: the benchmark's zero-shot prompts."""
    return [spec for spec in all_specs() if spec_held_out(spec)]


def _pick(options, generator):
    return options[torch.randint(len(options), (), generator=generator).item()]


def _distinct(k, n, generator):
    return torch.randperm(n, generator=generator)[:k].tolist()


def draw_spec(category, generator):
    """A random Spec of one category: digits uniform (distinct in pairs), colours uniform (distinct in pairs)."""
    colours = list(PALETTE)
    a, b = _distinct(2, 10, generator)
    ca, cb = (colours[i] for i in _distinct(2, len(colours), generator))
    if category == "single_object":
        return Spec((Digit(a),))
    if category == "colours":
        return Spec((Digit(a, ca),))
    if category == "counting":
        return Spec((Digit(a),) * _pick(COUNTS, generator))
    if category == "two_object":
        return Spec((Digit(min(a, b)), Digit(max(a, b))))
    if category == "position":
        return Spec((Digit(a), Digit(b)), _pick(RELATIONS, generator))
    first, second = sorted([Digit(a, ca), Digit(b, cb)], key=lambda x: x.digit)
    return Spec((first, second))


def place_spec(spec, generator):
    """A Spec -> the contents of one scene that fits it: its digits in distinct random places."""
    if spec.relation:
        places = _pick([(p, q) for p in range(PLACES) for q in range(PLACES) if holds(spec.relation, p, q)], generator)
    else:
        places = _distinct(len(spec.digits), PLACES, generator)
    return tuple(Item(d.digit, d.colour, p) for d, p in zip(spec.digits, places))


def draw_training_scene(generator):
    """(contents, Spec, caption) for training: a uniform category, redrawn until nothing in it is held out."""
    while True:
        spec = draw_spec(_pick(CATEGORIES, generator), generator)
        contents = place_spec(spec, generator)
        if not spec_held_out(spec) and not held_out_in(contents):
            return contents, spec, _pick(phrasings(spec), generator)


def instances_by_digit(labels):
    """(N,) labels -> for each digit 0 to 9, the indices of its instances; UserError if one has none."""
    by_label = [torch.nonzero(labels == d).squeeze(1) for d in range(10)]
    missing = [d for d in range(10) if len(by_label[d]) == 0]
    if missing:
        raise UserError(f"no digit {missing[0]} among the {len(labels)} digits to make scenes with")
    return by_label


class Renderer:
    """Paints scene contents with digits from one split: grey digits (N, 1, 32, 32) uint8 and labels (N,)."""

    def __init__(self, digits, labels):
        self.digits = digits
        self.by_label = instances_by_digit(labels)

    def render(self, contents, generator):
        """Contents -> a (3, 64, 64) uint8 canvas: a random instance of each digit, coloured, jittered."""
        canvas = torch.zeros(3, CANVAS + 2 * JITTER, CANVAS + 2 * JITTER, dtype=torch.uint8)  # room to jitter
        for item in contents:
            grey = self.digits[_pick(self.by_label[item.digit], generator)].float()  # (1, 32, 32)
            colour = torch.tensor(PALETTE[item.colour] if item.colour else WHITE, dtype=torch.float32) / 255
            painted = (grey * colour[:, None, None]).round().to(torch.uint8)  # (3, 32, 32)
            dy, dx = torch.randint(0, 2 * JITTER + 1, (2,), generator=generator).tolist()
            y, x = row(item.place) * PLACE + dy, column(item.place) * PLACE + dx
            window = canvas[:, y : y + PLACE, x : x + PLACE]
            torch.maximum(window, painted, out=window)
        return canvas[:, JITTER:-JITTER, JITTER:-JITTER]  # (3, 64, 64)

    def training_batch(self, size, generator):
        """size training scenes: images (size, 3, 64, 64) uint8, their captions and Specs."""
        scenes = [draw_training_scene(generator) for _ in range(size)]
        images = torch.stack([self.render(contents, generator) for contents, _, _ in scenes])
        return images, [caption for _, _, caption in scenes], [spec for _, spec, _ in scenes]
