"""The datasets' words and captions, and the held-out pairs of coloured digits."""

import torch

from captions import (
    DATASETS,
    HELD_OUT,
    PALETTE,
    caption_table,
    colourise,
    concept_index,
    held_out_mask,
    sample_prompts,
    shown_split,
)  # fmt: skip
from tokenizer import Tokenizer


def test_each_dataset_brings_its_own_words_and_text_length():
    mnist, colour, fashion = DATASETS["mnist"], DATASETS["color_mnist"], DATASETS["fashion_mnist"]
    assert {"seven", "7", "digit", "handwritten"} <= set(mnist.words()) and "red" not in mnist.words()
    assert set(PALETTE) | {"coloured", "colored", "in"} <= set(colour.words())
    assert {"t-shirt", "trousers", "ankle", "boot", "sneaker"} <= set(fashion.words()) and "7" not in fashion.words()
    assert (mnist.text_length(), colour.text_length(), fashion.text_length()) == (3, 5, 4)
    for dataset in DATASETS.values():
        tokenizer = dataset.tokenizer()
        for concept in dataset.concepts:
            for caption in dataset.captions(*concept):
                assert tokenizer.decode(tokenizer.encode(caption)) == " ".join(Tokenizer.split(caption))


def test_coloured_captions_vary_word_order_and_name_digit_and_colour():
    captions = DATASETS["color_mnist"].captions(7, "red")
    assert {"a red seven", "red 7", "7 in red", "a seven, coloured red"} <= set(captions)
    assert all("red" in c and ("7" in c or "seven" in c) for c in captions)


def test_every_digit_has_a_held_out_pair_and_training_never_shows_one():
    dataset = DATASETS["color_mnist"]
    assert sorted({label for label, _ in HELD_OUT}) == list(range(10))
    allowed = dataset.allowed_colours()
    for label, colour in HELD_OUT:
        assert not allowed[label, dataset.colours.index(colour)]
    assert allowed.sum() == 60 - len(HELD_OUT)
    # the images and captions training draws: 20,000 random (digit, colour) choices, none held out
    labels = torch.arange(10).repeat(2000)
    images = torch.full((len(labels), 1, 4, 4), 255, dtype=torch.uint8)
    shown, colours = shown_split(dataset, images, labels)
    concepts = concept_index(dataset, labels, colours)
    assert not held_out_mask(dataset)[concepts].any()
    assert len(set(concepts.tolist())) == 50  # every seen pair does occur
    table = caption_table(dataset, dataset.tokenizer())
    for label, colour in HELD_OUT:  # the captions of held-out pairs exist only outside training
        held = table[concept_index(dataset, torch.tensor([label]), torch.tensor([dataset.colours.index(colour)]))]
        drawn = table[concepts].flatten(0, 1)
        assert not (drawn[:, None, :] == held.flatten(0, 1)[None]).all(-1).any()
    red = shown[colours == dataset.colours.index("red")][0]
    assert red[:, 0, 0].tolist() == [255, 0, 0]  # the stroke takes its colour


def test_colourise_paints_the_stroke_and_leaves_the_background_black():
    dataset = DATASETS["color_mnist"]
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    images[:, :, 1, 1] = 200
    coloured = colourise(
        images, torch.tensor([dataset.colours.index("yellow"), dataset.colours.index("blue")]), dataset
    )
    assert coloured.shape == (2, 3, 4, 4) and coloured[:, :, 0, 0].sum() == 0
    assert coloured[0, :, 1, 1].tolist() == [200, 200, 0] and coloured[1, :, 1, 1].tolist() == [0, 0, 200]
    assert torch.equal(colourise(images, torch.zeros(2, dtype=torch.long), DATASETS["mnist"]), images)


def test_evaluation_prompts_cover_every_concept_equally():
    dataset = DATASETS["color_mnist"]
    prompts, concepts = sample_prompts(dataset, 3)
    assert len(prompts) == 180 and torch.equal(torch.bincount(concepts), torch.full((60,), 3))
    assert held_out_mask(dataset)[concepts].sum() == 30
