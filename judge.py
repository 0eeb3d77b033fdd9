"""The judges: two independent digit classifiers used only to measure generated digits.

They are instruments, kept apart from the model: evaluate.py asks each which digit a generated
image shows (prompt accuracy), how sure it is (the share of images whose top class is below
UNSURE = 0.9), and uses its penultimate layer as the feature space for a Frechet distance (like
FID, but on MNIST features rather than Inception's). One instrument can mislead, so there are
two that differ wherever they can:

    judge A   VGG-style: 3x3 convolutions, max-pooling, a 128-d dense layer, dropout;
              trained with random shifts of up to 2 pixels, seed 0.
    judge B   strided convolutions with GroupNorm and global average pooling, no max-pooling,
              no dense layer (128-d features); trained with random rotations, scalings and
              shifts (data.random_affine), seed 1, on a different draw of batches.

Both are trained on the training images the transformer learned from, of the dataset at hand
(the validation and test splits are what they judge), checked on held-out real images, and
cached. They read colour images in grey: the brightest channel, a coloured stroke's intensity.
"""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from checkpoints import check_finite_weights, load_checkpoint, load_weights, save_checkpoint
from data import random_affine, to_float
from files import check_output_dir

FEATURES = 128
UNSURE = 0.9  # a judge is unsure of an image when no class reaches this probability
JUDGES = ("A", "B")


class Judge(nn.Module):
    """Judge A: (B, C, 32, 32) digits in [0, 1] -> 10 class logits; features() is the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, FEATURES),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x):
        return self.body(x.amax(dim=1, keepdim=True))  # (B, 128); colour judged in grey: the brightest channel

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def _conv(c_in, c_out, kernel, stride):
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2), nn.GroupNorm(8, c_out), nn.ReLU()]


class StridedJudge(nn.Module):
    """Judge B: strided convolutions, GroupNorm, global average pooling -> 128-d features -> 10 logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            *_conv(1, 32, 5, 2),  # (B, 32, 16, 16)
            *_conv(32, 64, 3, 1),
            *_conv(64, FEATURES, 3, 2),  # (B, 128, 8, 8)
            *_conv(FEATURES, FEATURES, 3, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (B, 128)
        )
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x):
        return self.body(x.amax(dim=1, keepdim=True))

    def forward(self, x):
        return self.head(self.features(x))


def _shift(x, generator, max_shift=2):
    """Judge A's augmentation: one random translation of up to max_shift pixels per batch."""
    padded = F.pad(x, [max_shift] * 4)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def _affine(x, generator):
    """Judge B's augmentation: every digit rotated (15 degrees), scaled (15%) and shifted (3 pixels) its own way."""
    return random_affine(x, generator, 3.0, 15.0, 0.15)


RECIPES = {"A": (Judge, _shift, 0, 1500), "B": (StridedJudge, _affine, 1, 1200)}  # class, augmentation, seed, steps


def train_judge(name, images, labels, device, batch_size=128):
    """images (N, C, 32, 32) uint8, labels (N,) -> judge `name` trained by its own recipe (eval mode)."""
    make, augment, seed, steps = RECIPES[name]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = make().to(device)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in tqdm(range(steps), desc=f"training judge {name}", leave=False):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = augment(to_float(images[index]), generator).to(device)
        loss = F.cross_entropy(judge(x), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()


@torch.no_grad()
def classify(judge, images, device, batch_size=1000):
    """(N, C, 32, 32) images in [0, 1] (float) or uint8 -> (class probabilities (N, 10), features (N, 128))."""
    probabilities, features = [], []
    for chunk in images.split(batch_size):
        x = chunk.to(device).float()
        x = x / 255.0 if chunk.dtype == torch.uint8 else x
        f = judge.features(x)
        probabilities.append(judge.head(f).softmax(dim=1).cpu())
        features.append(f.cpu())
    return torch.cat(probabilities), torch.cat(features)


def unsure_share(probabilities):
    """Share of images whose most probable class is below UNSURE."""
    return (probabilities.max(dim=1).values < UNSURE).float().mean().item()


def load_or_train_judge(folder, name, train_images, train_labels, device, log=print):
    """Judge `name` cached in folder/judge_<name>.pt, or trained on these digits and cached there.

    A cached judge trained on a different number of digits is trained again.
    """
    path = Path(folder) / f"judge_{name}.pt"
    judge = RECIPES[name][0]()
    if path.is_file():
        checkpoint = load_checkpoint(path, "judge")
        if checkpoint.get("digits") == len(train_images):
            load_weights(judge, checkpoint.get("model"), f"the cached judge {path} (delete it to train it again)")
            check_finite_weights(judge, f"the cached judge {path} (delete it to train it again)")
            log(f"judge {name}: loaded {path}")
            return judge.to(device).eval()
        log(f"judge {name}: {path} was trained on other digits")
    check_output_dir(folder, "--judge_dir")  # before minutes of training, not after
    log(f"judge {name}: training on {len(train_images):,} digits (cached in {path} afterwards)")
    judge = train_judge(name, train_images, train_labels, device)
    save_checkpoint({"kind": "judge", "name": name, "digits": len(train_images), "model": judge.state_dict()}, path)
    return judge


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F).

    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with the trace of the matrix square
    root taken from the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric.
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    sqrt_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)
