"""The judge: a small CNN digit classifier used only to measure generated digits.

It is an instrument, kept apart from the model: evaluate.py asks it which digit each
generated image shows (prompt accuracy) and uses its penultimate layer as the feature space
for a Frechet distance (like FID, but on MNIST features rather than Inception's). It is
trained once on the training digits, checked on held-out real digits, and cached.
"""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common import load_checkpoint, save_checkpoint

FEATURES = 128


class Judge(nn.Module):
    """(B, 1, 32, 32) digits in [0, 1] -> 10 class logits; features() gives the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, FEATURES), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x):
        return self.body(x.mean(dim=1, keepdim=True))  # (B, 128); colour images judged in grey

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def _shift(x, max_shift=2):
    """Random translations of up to max_shift pixels: the augmentation that makes 5,000 digits enough."""
    padded = F.pad(x, [max_shift] * 4)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,)).tolist()
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def train_judge(images, labels, device, steps=1500, batch_size=128, seed=0):
    """images (N, C, 32, 32) uint8, labels (N,) -> a trained Judge (eval mode)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = Judge().to(device)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in tqdm(range(steps), desc="training judge", leave=False):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = _shift(images[index].to(device).float() / 255.0)
        loss = F.cross_entropy(judge(x), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()


@torch.no_grad()
def classify(judge, images, device, batch_size=1000):
    """(N, C, 32, 32) images in [0, 1] (float) or uint8 -> (predicted digits (N,), features (N, 128))."""
    predictions, features = [], []
    for chunk in images.split(batch_size):
        x = chunk.to(device).float()
        x = x / 255.0 if chunk.dtype == torch.uint8 else x
        f = judge.features(x)
        predictions.append(judge.head(f).argmax(dim=1).cpu())
        features.append(f.cpu())
    return torch.cat(predictions), torch.cat(features)


def load_or_train_judge(path, train_images, train_labels, device, log=print):
    """The cached judge at `path`, or a new one trained on the training digits and cached there."""
    path = Path(path)
    judge = Judge()
    if path.is_file():
        judge.load_state_dict(load_checkpoint(path, "judge")["model"])
        log(f"judge: loaded {path}")
        return judge.to(device).eval()
    log(f"judge: training on {len(train_images):,} digits (cached in {path} afterwards)")
    judge = train_judge(train_images, train_labels, device)
    save_checkpoint({"kind": "judge", "model": judge.state_dict()}, path)
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
