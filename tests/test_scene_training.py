"""Scenes as the models learn them: a canvas tokenised place by place, scene grids composed from digits
tokenised once, and the word-order reranker's concepts."""

import torch

from captions import colourise
from config import DVAEConfig
from dvae import DiscreteVAE
from rerank import RerankerConfig, SceneReranker
from scene_grammar import CATEGORIES, all_specs, parse
from scene_training import SceneTokens, blank_place, concept_key, scene_concepts
from scenes import PLACE, SCENES, Item, draw_training_scene
from test_scenes import glyphs

TILED = DVAEConfig(channels=3, codebook_size=16, codebook_dim=8, hidden_dim=4, tiles=2)


def tiny_dvae():
    torch.manual_seed(0)
    return DiscreteVAE(TILED).eval()


def painted(contents):
    """The canvas (1, 3, 64, 64) in [0, 1] of glyphs set exactly in their places, without jitter."""
    images, _ = glyphs()
    canvas = torch.zeros(1, 3, 2 * PLACE, 2 * PLACE)
    for item in contents:
        colour = torch.tensor([SCENES.colours.index(item.colour)])
        y, x = item.place // 2 * PLACE, item.place % 2 * PLACE
        canvas[0, :, y : y + PLACE, x : x + PLACE] = (
            colourise(images[item.digit : item.digit + 1], colour, SCENES)[0] / 255
        )
    return canvas


def digit_codes(dvae):
    """(10, colours, G*G) the glyphs tokenised once in every colour, as train_mnist.py tokenises digits."""
    images, _ = glyphs()
    coloured = [colourise(images, torch.full((10,), c), SCENES).float() / 255 for c in range(len(SCENES.colours))]
    return torch.stack([dvae.encode(x).flatten(1) for x in coloured], dim=1)


def test_a_canvas_is_tokenised_and_drawn_place_by_place():
    dvae = tiny_dvae()
    canvas = painted((Item(3, "red", 0), Item(7, None, 3)))
    codes = dvae.encode(canvas)
    assert codes.shape == (1, 16, 16)
    for r in range(2):
        for q in range(2):
            place = canvas[..., r * PLACE : (r + 1) * PLACE, q * PLACE : (q + 1) * PLACE]
            assert torch.equal(codes[0, r * 8 : (r + 1) * 8, q * 8 : (q + 1) * 8], dvae.encode(place)[0])
    drawn = dvae.decode(codes)
    assert drawn.shape == (1, 3, 64, 64)
    assert torch.allclose(drawn[..., 32:, :32], dvae.decode(codes[:, 8:, :8]), atol=1e-6)  # bottom left, alone


def test_composed_scene_grids_are_the_tokens_of_the_painted_canvas():
    dvae = tiny_dvae()
    scenes = SceneTokens(digit_codes(dvae), torch.arange(10), blank_place(dvae, "cpu"), SCENES.tokenizer())
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        contents, _, _ = draw_training_scene(generator)
        composed = scenes.compose(contents, generator)  # one glyph per digit: the instance drawn is that one
        assert torch.equal(composed, dvae.encode(painted(contents)).flatten()), contents


def test_training_pairs_are_captions_of_scenes_training_may_show():
    dvae = tiny_dvae()
    scenes = SceneTokens(digit_codes(dvae), torch.arange(10), blank_place(dvae, "cpu"), SCENES.tokenizer())
    text, codes, specs = scenes.pairs(200, torch.Generator().manual_seed(1))
    assert text.shape == (200, 11) and codes.shape == (200, 256)
    tokenizer = SCENES.tokenizer()
    assert [parse(tokenizer.decode(row.tolist())) for row in text] == specs
    assert {spec.category for spec in specs} == set(CATEGORIES)


def test_a_relation_and_its_mirror_are_one_concept_and_every_phrasing_reads_back_as_its_concept():
    assert concept_key(parse("a seven to the right of a three")) == parse("a three to the left of a seven")
    assert concept_key(parse("a seven below a three")) == parse("a three above a seven")
    assert concept_key(parse("a seven above a three")) != concept_key(parse("a three above a seven"))
    keys, phrasings, categories = scene_concepts()
    assert len(keys) == len(set(keys)) == len(all_specs()) - 180  # 360 relations, 180 mirrored pairs
    for key, options, category in zip(keys, phrasings, categories.tolist()):
        assert {concept_key(parse(p)) for p in options} == {key} and CATEGORIES[category] == key.category


def test_the_scene_reranker_reads_an_image_against_one_category_at_a_time_and_finds_a_prompt_word_for_word():
    tokenizer = SCENES.tokenizer()
    keys, phrasings, categories = scene_concepts()
    table = torch.tensor([[tokenizer.encode(p[i % len(p)]) for i in range(18)] for p in phrasings])
    torch.manual_seed(0)
    reranker = SceneReranker(
        RerankerConfig(tokenizer.vocab_size, len(tokenizer.words), 11, 3, len(keys), 18, word_order=True)
    ).eval()
    reranker.captions.copy_(table)
    reranker.categories.copy_(categories)
    reranker.freeze_concepts()
    with torch.no_grad():
        probabilities = reranker.concept_probabilities(torch.rand(2, 3, 64, 64))
    for category in range(len(CATEGORIES)):
        assert torch.allclose(probabilities[:, categories == category].sum(1), torch.ones(2), atol=1e-5)
    prompts = ["a seven to the right of a three", "the digit 7 in blue and the digit 3 in red", "4 sixes"]
    found = reranker.concept_of(torch.tensor([tokenizer.encode(p) for p in prompts]))
    assert [keys[i] for i in found.tolist()] == [concept_key(parse(p)) for p in prompts]
