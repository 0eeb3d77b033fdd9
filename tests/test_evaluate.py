"""evaluate.py's measures on inputs whose answers are known."""

import pytest
import torch
import torch.nn.functional as F

from captions import DATASETS, colourise
from conftest import ROOT  # noqa: F401 (puts the project on the path)
from data import load_images, to_float
from evaluate import near_copies, nearest_training_distance, split_seed, stroke_colour, zero_shot


def blur(images):
    """A stand-in for the dVAE's round trip: softer strokes than the near-binary digits, as its decodes are
    (pixel distance to the original about 2, as the default dVAE's MSE of 0.004 over 32x32 gives)."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 6.0, 2.0], [1.0, 2.0, 1.0]]) / 18
    return F.conv2d(to_float(images), kernel[None, None], padding=1)


def test_reconstructions_of_training_digits_count_as_near_copies(mnist_dir):
    train = load_images("mnist", mnist_dir, True, 32, log=lambda _: None)
    split_images, split_labels = load_images("mnist", mnist_dir, False, 32, log=lambda _: None)
    reference = nearest_training_distance(blur(split_images[:50]), split_labels[:50], *train)
    copies = near_copies(blur(train[0][:40]), train[1][:40], reference, train)
    assert copies["near_copies"] >= 0.7  # decoded training digits are copies (measured: 0.78)
    fresh = near_copies(blur(split_images[50:]), split_labels[50:], reference, train)
    assert fresh["near_copies"] <= 0.05  # decoded unseen digits are not (measured: 0)
    raw = nearest_training_distance(to_float(split_images[:50]), split_labels[:50], *train)
    assert near_copies(blur(train[0][:40]), train[1][:40], raw, train)["near_copies"] <= 0.6  # raw reference: 0.5


def test_stroke_colour_reads_the_colour_each_digit_was_drawn_in(mnist_dir):
    dataset = DATASETS["color_mnist"]
    images, _ = load_images("mnist", mnist_dir, True, 32, log=lambda _: None)
    colours = torch.arange(60) % len(dataset.colours)
    assert torch.equal(stroke_colour(to_float(colourise(images[:60], colours, dataset)), dataset), colours)


def test_zero_shot_figures_on_known_reads():
    right_class = torch.tensor([True, True, False, True, True, True])
    right_colour = torch.tensor([True, False, True, True, True, False])
    held_out = torch.tensor([False, False, False, True, True, True])
    figures = zero_shot(right_class, right_colour, held_out)
    assert figures["seen"]["both"] == pytest.approx(1 / 3) and figures["held_out"]["both"] == pytest.approx(2 / 3)
    assert figures["held_out_over_seen"] == pytest.approx(2.0)


def test_the_test_split_draws_its_own_prompts_and_noise():
    class Args:
        seed = 4
        split = "validation"

    validation = split_seed(Args)
    Args.split = "test"
    assert split_seed(Args) != validation
