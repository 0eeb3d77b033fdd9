"""Scenes: the canvas, determinism, and held-out compositions that training never draws."""

import pytest
import torch

from errors import UserError
from scene_grammar import CATEGORIES, Digit, Spec, parse
from scenes import (
    HELD_OUT_BINDINGS,
    HELD_OUT_COUNTS,
    HELD_OUT_RELATIONS,
    Item,
    Renderer,
    bindings,
    counts,
    draw_spec,
    draw_training_scene,
    held_out_in,
    place_spec,
    relations,
    spec_held_out,
)


def glyphs():
    """One synthetic digit per class: a full-brightness bar, (10, 1, 32, 32) uint8, and labels."""
    images = torch.zeros(10, 1, 32, 32, dtype=torch.uint8)
    for d in range(10):
        images[d, 0, 6 : 8 + 2 * d, 12:20] = 255
    return images, torch.arange(10)


def test_a_scene_paints_each_digit_in_its_place_coloured_and_leaves_the_others_black():
    renderer = Renderer(*glyphs())
    contents = (Item(3, "red", 0), Item(7, None, 3))
    canvas = renderer.render(contents, torch.Generator().manual_seed(0))
    assert canvas.shape == (3, 64, 64) and canvas.dtype == torch.uint8
    top_left, bottom_right = canvas[:, :32, :32], canvas[:, 32:, 32:]
    assert top_left[0].max() == 255 and top_left[1:].max() == 0  # red
    assert (bottom_right.amax(0) == 255).sum() == (bottom_right.amin(0) == 255).sum() > 0  # white
    assert canvas[:, :32, 32:].max() == 0 and canvas[:, 32:, :32].max() == 0
    assert (top_left[0] == 255).sum() == 8 * 8 and (bottom_right[0] == 255).sum() == 8 * 16  # nothing cut off


def test_the_same_generator_seed_draws_the_same_scenes():
    renderer = Renderer(*glyphs())
    first = renderer.training_batch(50, torch.Generator().manual_seed(4))
    second = renderer.training_batch(50, torch.Generator().manual_seed(4))
    other = renderer.training_batch(50, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]
    assert first[1] != other[1]
    assert all(parse(caption) == spec for caption, spec in zip(*first[1:]))


def test_every_category_is_drawn_and_placed_as_asked():
    generator = torch.Generator().manual_seed(0)
    for category in CATEGORIES:
        for _ in range(50):
            spec = draw_spec(category, generator)
            contents = place_spec(spec, generator)
            assert spec.category == category
            assert len({item.place for item in contents}) == len(contents) == len(spec.digits)
            if spec.relation:
                a, b = spec.digits
                assert (a.digit, b.digit, spec.relation) in relations(contents)


def test_contents_name_every_composition_they_show_mirrors_included():
    scene = (Item(3, "red", 0), Item(7, "blue", 3))  # red 3 top left, blue 7 bottom right
    assert relations(scene) == {(3, 7, "left"), (7, 3, "right"), (3, 7, "above"), (7, 3, "below")}
    assert bindings(scene) == {frozenset({(3, "red"), (7, "blue")})}
    assert held_out_in(scene)  # both the relation (3 left of 7) and the binding are held out
    assert held_out_in((Item(7, None, 1), Item(3, None, 0)))  # a 3 left of a 7 is "a seven right of a three" too
    assert not held_out_in((Item(7, None, 0), Item(3, None, 1)))  # a 7 left of a 3 is seen
    assert not held_out_in((Item(3, "red", 0), Item(7, None, 2)))  # a 3 above a 7 is seen
    assert counts((Item(4, None, 0), Item(4, None, 1), Item(4, None, 2))) == {(3, 4)}


def test_spec_level_held_out_matches_the_constants():
    assert spec_held_out(parse("a three to the left of a seven"))
    assert spec_held_out(parse("a seven to the right of a three"))
    assert not spec_held_out(parse("a seven to the left of a three"))
    assert spec_held_out(parse("a blue seven and a red three"))
    assert not spec_held_out(parse("a blue three and a red seven"))
    assert spec_held_out(parse("three fours")) and not spec_held_out(parse("two fours"))
    assert not spec_held_out(Spec((Digit(3, "red"),)))


def test_training_never_draws_a_held_out_composition_and_sees_each_of_its_parts():
    generator = torch.Generator().manual_seed(0)
    drawn = [draw_training_scene(generator) for _ in range(20_000)]
    assert not [c for c, spec, caption in drawn if held_out_in(c) or spec_held_out(parse(caption))]
    shown_relations = set().union(*(relations(c) for c, _, _ in drawn))
    shown_bindings = set().union(*(bindings(c) for c, _, _ in drawn))
    shown_counts = set().union(*(counts(c) for c, _, _ in drawn))
    for a, b, relation in HELD_OUT_RELATIONS:
        assert (b, a, relation) in shown_relations  # the same two digits, the other way round
        assert any(r[0] == a and r[2] == relation for r in shown_relations)
        assert any(r[1] == b and r[2] == relation for r in shown_relations)
    for first, second in HELD_OUT_BINDINGS:
        assert frozenset({(first[0], second[1]), (second[0], first[1])}) in shown_bindings  # colours swapped
        assert any(first in pair for pair in shown_bindings) and any(second in pair for pair in shown_bindings)
    for count, digit in HELD_OUT_COUNTS:
        assert any(n == count for n, d in shown_counts) and any(d == digit and n > 1 for n, d in shown_counts)
    categories = {spec.category for _, spec, _ in drawn}
    assert categories == set(CATEGORIES)


def test_a_split_without_some_digit_cannot_paint_scenes():
    images, labels = glyphs()
    with pytest.raises(UserError, match="no digit 9"):
        Renderer(images[:9], labels[:9])
