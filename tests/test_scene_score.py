"""The scene scorer on synthetic scenes with known answers: bars whose height says the digit, and a
reader that measures the height, so every verdict below is the scorer's own doing."""

import pytest
import torch
import torch.nn.functional as F

from captions import PALETTE
from data import to_float
from evaluate_scenes import per_category, reranker_reading
from prove_scene_scorer import draw_proof_set, mistakes, summarise
from scene_grammar import CATEGORIES, parse
from scene_score import MNIST_CENTRE, find_digits, ink_centres, recentre, score
from scene_training import concept_key, scene_concepts
from scenes import Item, Renderer, draw_spec, place_spec
from test_scenes import glyphs


def bar_digits(crops):
    """Crops (M, 3, 32, 32) -> (M,) digits: glyph d is a bar 2 + 2d rows tall."""
    height = (crops.amax(dim=1) > 0.5).any(dim=2).sum(dim=1)  # (M,)
    return (height - 2) // 2


def bar_reader(crops):
    """A sure reader: all the probability on the bar's digit, (M, 10)."""
    return F.one_hot(bar_digits(crops), 10).float()


RENDERER = Renderer(*glyphs())


def verdicts(caption, *contents, seed=0):
    image = RENDERER.render(contents, torch.Generator().manual_seed(seed))
    return score(to_float(image[None]), [parse(caption)], bar_reader)[0]


def test_true_scenes_of_every_category_score_right():
    generator = torch.Generator().manual_seed(0)
    specs = [draw_spec(category, generator) for category in CATEGORIES for _ in range(40)]
    images = torch.stack([RENDERER.render(place_spec(spec, generator), generator) for spec in specs])
    assert score(to_float(images), specs, bar_reader) == [(True, "right")] * len(specs)


@pytest.mark.parametrize(
    "caption, contents, reason",
    [
        ("a red three and a blue seven", [Item(3, "blue", 0), Item(7, "red", 1)], "the 3 is blue, asked red"),
        ("a red seven", [Item(7, None, 2)], "the 7 is white, asked red"),
        ("a three to the left of a seven", [Item(7, None, 0), Item(3, None, 1)], "the 3 is right of the 7"),
        ("a three below a seven", [Item(3, None, 0), Item(7, None, 3)], "the 3 is above the 7"),
        ("a three to the left of a seven", [Item(3, None, 0), Item(7, None, 2)], "the 3 is not left of the 7"),
        ("two sevens", [Item(7, None, 0), Item(7, None, 1), Item(7, None, 3)], "counted 3, asked 2"),
        ("four sevens", [Item(7, None, 0), Item(7, None, 1), Item(7, None, 3)], "counted 3, asked 4"),
        ("three sevens", [Item(7, None, 0), Item(2, None, 1), Item(7, None, 3)], "a 2 among the 7s"),
        ("a three and a seven", [Item(3, None, 0)], "missing the 7"),
        ("a three and a seven", [Item(3, None, 0), Item(3, None, 3)], "missing the 7, the 3 drawn twice"),
        ("a red three and a blue seven", [Item(7, "red", 1), Item(7, "blue", 2)], "missing the 3, the 7 drawn twice"),
        ("a three and a seven", [Item(3, None, 0), Item(7, None, 1), Item(5, None, 2)], "an extra 5"),
        ("a seven", [Item(7, None, 0), Item(7, None, 3)], "an extra 7"),
        ("a seven", [], "missing the 7"),
    ],
)
def test_wrong_scenes_score_wrong_with_the_reason(caption, contents, reason):
    assert verdicts(caption, *contents) == (False, reason)


def test_a_relation_and_colours_asked_together_are_both_checked():
    right = [Item(3, "red", 0), Item(7, "blue", 1)]
    assert verdicts("a red three to the left of a blue seven", *right) == (True, "right")
    assert verdicts("a blue three to the left of a red seven", *right)[1] == "the 3 is red, asked blue"


def test_digits_are_found_where_they_stand_in_the_colour_they_have():
    contents = (Item(4, "cyan", 1), Item(9, None, 2))
    image = RENDERER.render(contents, torch.Generator().manual_seed(1))
    (found,) = find_digits(to_float(image[None]), bar_reader)
    assert [(f.top, f.colour) for f in found] == [(4, "cyan"), (9, "white")]
    assert 32 + 12 <= found[0].x <= 32 + 20 and found[0].y < 32  # top right
    assert found[1].x < 32 and 32 < found[1].y < 64  # bottom left


@pytest.mark.parametrize("colour", list(PALETTE))
def test_a_faint_stroke_reads_as_its_colour(colour):
    stroke = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    stroke[0, 0, 10:20, 14:18] = 150  # 0.59 of full brightness
    contents = (Item(0, colour, 0),)
    image = Renderer(stroke.expand(10, 1, 32, 32), torch.arange(10)).render(contents, torch.Generator())
    (found,) = find_digits(to_float(image[None]), lambda crops: torch.full((len(crops), 10), 0.1))
    assert found[0].colour == colour


def test_recentring_puts_the_ink_where_mnist_centres_it_and_fills_with_black():
    crops = torch.zeros(2, 3, 32, 32)
    crops[0, :, 2:6, 1:5] = 1.0  # ink near the top-left corner
    crops[1, :, 25:31, 20:30] = 0.5
    moved = recentre(crops, ink_centres(crops.amax(dim=1)))
    assert torch.allclose(ink_centres(moved.amax(dim=1)), torch.full((2, 2), MNIST_CENTRE), atol=0.5)
    assert torch.allclose(moved.sum(dim=(1, 2, 3)), crops.sum(dim=(1, 2, 3)))  # nothing lost, nothing wrapped


def test_a_digit_reads_as_every_class_the_reader_finds_likely_enough():
    def unsure(crops):  # every 3 is also, less likely, a 5; nothing else is read
        p = bar_reader(crops)
        return torch.where(p[:, 3:4] > 0, 0.6 * p + 0.4 * F.one_hot(torch.tensor(5), 10), p)

    image = to_float(RENDERER.render((Item(3, None, 0), Item(7, None, 1)), torch.Generator()))[None]
    for caption, threshold, expected in [
        ("a five and a seven", 0.3, (True, "right")),
        ("a five and a seven", 0.5, (False, "missing the 5")),
        ("a three and a seven", 0.3, (True, "right")),
        ("a three and a five", 0.3, (False, "missing the 5")),  # one 3 cannot be both the 3 and the 5
    ]:
        assert score(image, [parse(caption)], unsure, threshold) == [expected], (caption, threshold)


def test_the_proof_scores_true_scenes_right_and_every_mistake_wrong_with_a_perfect_reader():
    images, specs, kinds = draw_proof_set(RENDERER, 30, torch.Generator().manual_seed(0))
    assert {"colours swapped", "positions swapped", "one digit too many", "one digit too few"} < set(kinds)
    figures = summarise(score(to_float(images), specs, bar_reader), specs, kinds)
    assert all(share == 1.0 for share in figures["true"].values())
    assert all(share == 0.0 for share in figures["mistakes"].values())


def test_a_reader_that_misreads_is_caught_by_the_proof():
    images, specs, kinds = draw_proof_set(RENDERER, 20, torch.Generator().manual_seed(0))
    figures = summarise(score(to_float(images), specs, lambda crops: bar_reader(crops).roll(1, dims=1)), specs, kinds)
    assert figures["true"]["overall"] == 0.0 and figures["true_scenes_scored_wrong"]


def test_each_mistake_changes_what_the_scene_shows():
    generator = torch.Generator().manual_seed(3)
    for category in CATEGORIES:
        spec = draw_spec(category, generator)
        contents = place_spec(spec, generator)
        for kind, wrong in mistakes(spec, contents, generator).items():
            assert set(wrong) != set(contents), (category, kind)
            assert len({i.place for i in wrong}) == len(wrong)


class TableReader:
    """A stand-in reranker whose concept probabilities are given, one row per true scene, in order."""

    def __init__(self, rows):
        self.rows, self.categories = rows, scene_concepts()[2]

    def concept_probabilities(self, images):
        taken, self.rows = self.rows[: len(images)], self.rows[len(images) :]
        return taken


@pytest.mark.parametrize(
    "on_truth, elsewhere, same_category, top1, accepted",
    [
        (1.0, 0.0, True, 1.0, 1.0),  # certain and right
        (0.6, 0.4, True, 1.0, 0.0),  # right, but too unsure to be accepted
        (0.4, 0.6, True, 0.0, 0.0),  # prefers another concept of the category
        (0.05, 0.95, False, 1.0, 0.0),  # a concept of another category never counts against it
    ],
)
def test_the_reranker_reading_of_true_scenes_is_per_category(on_truth, elsewhere, same_category, top1, accepted):
    proof_set = draw_proof_set(Renderer(*glyphs()), 4, torch.Generator().manual_seed(0))
    keys, _, categories = scene_concepts()
    index = {key: i for i, key in enumerate(keys)}
    truths = [index[concept_key(s)] for s, kind in zip(proof_set[1], proof_set[2]) if kind == "true"]
    rows = torch.zeros(len(truths), len(keys))
    for row, truth in zip(rows, truths):
        other = next(
            i for i in range(len(keys)) if i != truth and (categories[i] == categories[truth]) == same_category
        )
        row[truth], row[other] = on_truth, elsewhere
    figures = reranker_reading(TableReader(rows), proof_set, "cpu")
    assert set(figures) == set(CATEGORIES)
    assert all(f == {"top1": top1, "accepted": accepted} for f in figures.values()), figures


def test_failures_are_counted_by_kind_within_each_category():
    captions = ["a three and a seven", "a five and a six", "a two and a four", "a red three", "a blue five"]
    verdicts = [
        (False, "missing the 7, the 3 drawn twice"),
        (False, "missing the 5, the 6 drawn twice"),
        (True, "right"),
        (False, "the 3 is blue, asked red"),
        (True, "right"),
    ]
    others = ["a seven", "two sevens", "a three above a seven", "a red three and a blue seven"]  # all right
    captions, verdicts = captions + others, verdicts + [(True, "right")] * len(others)
    figures = per_category(verdicts, [parse(c) for c in captions], [False] * len(captions))["categories"]
    assert figures["two_object"]["wrong_by_kind"] == {"missing the N, the N drawn twice": pytest.approx(2 / 3)}
    assert figures["colours"]["wrong_by_kind"] == {"the N is C, asked C": 0.5}
    assert figures["counting"]["wrong_by_kind"] == {}
