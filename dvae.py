"""The discrete VAE: images <-> grids of codebook tokens (paper section 2.1, appendix A).

Stage one of DALL-E. The encoder turns a (B, C, S, S) image into logits over K codebook
entries at each cell of a G x G grid (MNIST: 32x32 -> 8x8, K=128). Training cannot
backpropagate through argmax, so it uses the Gumbel-softmax relaxation: a soft one-hot
sample at temperature tau, annealed towards 1/16 so that the soft samples approach the hard
codes used afterwards. The ELBO (appendix A.2) is

    reconstruction loss  +  beta * KL(q(z | x) || uniform prior over the K codes)

The KL term keeps the encoder from collapsing onto a few codes; beta is ramped up from 0.

Canvases (config.tiles > 1, scenes): the dVAE is trained on single places of image_size and,
being fully convolutional, could read a whole canvas; encode and decode instead cut the canvas
into its tiles x tiles places and tokenise each on its own, exactly as it was trained, then lay the
grids side by side: a 64x64 scene of 2x2 places is an 8x8 grid of four 4x4 ones (configs/scenes.yaml),
and a digit's tokens do not depend on its neighbours (so training scenes can be composed from digits
tokenised once).

Layout after OpenAI's released dVAE: groups of residual blocks, one group per resolution,
the residual branch scaled by 1 / (number of blocks)**2 so a deep stack starts near identity.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from config import DVAEConfig


class ResBlock(nn.Module):
    """x + post_gain * conv(relu(conv(relu(x)))), keeping channels and resolution."""

    def __init__(self, channels, post_gain):
        super().__init__()
        self.post_gain = post_gain
        self.branch = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.post_gain * self.branch(x)


def _group(channels, num_blocks, post_gain):
    return [ResBlock(channels, post_gain) for _ in range(num_blocks)]


class Encoder(nn.Module):
    """(B, C, S, S) image -> (B, K, G, G) logits over the codebook."""

    def __init__(self, c: DVAEConfig):
        super().__init__()
        num_halvings = int(math.log2(c.image_size // c.grid_size))
        post_gain = 1.0 / max(1, (num_halvings + 1) * c.num_resnet_blocks) ** 2
        width = c.hidden_dim
        layers = [nn.Conv2d(c.channels, width, 3, padding=1)]
        for _ in range(num_halvings):
            layers += _group(width, c.num_resnet_blocks, post_gain)
            layers.append(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1))  # halve S, double width
            width *= 2
        layers += _group(width, c.num_resnet_blocks, post_gain)
        layers += [nn.ReLU(), nn.Conv2d(width, c.codebook_size, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """(B, D, G, G) codebook vectors -> (B, C, S, S) pixel logits."""

    def __init__(self, c: DVAEConfig):
        super().__init__()
        num_halvings = int(math.log2(c.image_size // c.grid_size))
        post_gain = 1.0 / max(1, (num_halvings + 1) * c.num_resnet_blocks) ** 2
        width = c.hidden_dim * 2**num_halvings
        layers = [nn.Conv2d(c.codebook_dim, width, 1)]
        for _ in range(num_halvings):
            layers += _group(width, c.num_resnet_blocks, post_gain)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width // 2, 3, padding=1)]
            width //= 2
        layers += _group(width, c.num_resnet_blocks, post_gain)
        layers += [nn.ReLU(), nn.Conv2d(width, c.channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class DiscreteVAE(nn.Module):
    def __init__(self, config: DVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.codebook = nn.Embedding(config.codebook_size, config.codebook_dim)
        self.decoder = Decoder(config)
        self.to(memory_format=torch.channels_last)  # channels-last convolutions: 1.2x faster training on CPUs

    def _check_images(self, images, tiled=False):
        """(B, C, S, S), or with tiled=True (B, C, tS, tS) for any whole t: one place or a canvas of them."""
        c = self.config
        size = images.shape[-1] if tiled and images.shape[-1] % c.image_size == 0 else c.image_size
        expected = (c.channels, size, size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            wanted = f"(B, {c.channels}, tS, tS) for S = {c.image_size}" if tiled else f"(B, {expected})"
            raise ValueError(f"images of shape {tuple(images.shape)} given to a dVAE built for {wanted}")

    def relaxed(self, images, temperature):
        """Relaxed pass: images in [0,1] -> (pixel logits (B,C,S,S), code logits (B,K,G,G))."""
        self._check_images(images)  # trained on single places
        logits = self.encoder(images.contiguous(memory_format=torch.channels_last))  # (B, K, G, G)
        # In float32 even under bf16 autocast: at tau = 1/16, bf16's 8-bit mantissa would quantise the
        # noisy logits / tau coarsely before the softmax.
        soft_one_hot = F.gumbel_softmax(logits.float(), tau=temperature, hard=False, dim=1)  # (B, K, G, G)
        z = torch.einsum("bkhw,kd->bdhw", soft_one_hot, self.codebook.weight)  # (B, D, G, G)
        return self.decoder(z), logits

    def forward(self, images, temperature, kl_weight):
        """The weighted ELBO, per image: reconstruction (nats) + kl_weight * KL to the uniform prior.

        Reconstruction is Bernoulli (binary cross-entropy on the pixel logits), summed over pixels.
        The paper's logit-Laplace exists because pixels live in a bounded interval; MNIST pixels
        are bounded and nearly binary, for which the Bernoulli likelihood is the standard, simplest
        bounded choice. The loss lives in forward() so that DistributedDataParallel sees it.
        """
        pixel_logits, logits = self.relaxed(images, temperature)
        pixel_logits, logits = pixel_logits.float(), logits.float()  # the loss in float32, also under bf16
        batch = images.shape[0]
        reconstruction = F.binary_cross_entropy_with_logits(pixel_logits, images, reduction="sum") / batch
        log_q = F.log_softmax(logits, dim=1)  # (B, K, G, G)
        # KL(q || uniform) = sum_k q log q + log K, at every grid cell
        kl = (log_q.exp() * log_q).sum(dim=1) + math.log(self.config.codebook_size)  # (B, G, G)
        kl = kl.sum(dim=(1, 2)).mean()
        return {
            "loss": reconstruction + kl_weight * kl,
            "reconstruction": reconstruction,
            "kl": kl,
            "mse": F.mse_loss(torch.sigmoid(pixel_logits.detach()), images),
            "codes": logits.detach().argmax(dim=1),
        }

    @torch.no_grad()
    def encode(self, images):
        """Images (B, C, tS, tS) in [0,1], t places a side (MNIST: 1) -> hard codes (B, tG, tG), integers in [0, K)."""
        self._check_images(images, tiled=True)
        S = self.config.image_size
        t = images.shape[-1] // S
        places = rearrange(images, "b c (r h) (q w) -> (b r q) c h w", h=S, w=S)  # (B t t, C, S, S)
        codes = self.encoder(places.contiguous(memory_format=torch.channels_last)).argmax(dim=1)  # (B t t, G, G)
        return rearrange(codes, "(b r q) h w -> b (r h) (q w)", r=t, q=t)

    @torch.no_grad()
    def decode(self, codes):
        """Codes (B, tG, tG) -> images (B, C, tS, tS) in [0,1], each place's G x G codes decoded on its own."""
        G = self.config.grid_size
        t = codes.shape[-1] // G
        places = rearrange(codes, "b (r h) (q w) -> (b r q) h w", h=G, w=G)  # (B t t, G, G)
        z = rearrange(self.codebook(places), "n h w d -> n d h w")  # (B t t, D, G, G), channels-last in memory
        images = torch.sigmoid(self.decoder(z))  # (B t t, C, S, S)
        return rearrange(images, "(b r q) c h w -> b c (r h) (q w)", r=t, q=t)


@torch.no_grad()
def encode_in_batches(dvae, images, device, batch_size=500):
    """(M, C, S, S) uint8 -> (M, G*G) codes in raster order, on the CPU, encoded batch_size images at a time."""
    return torch.cat([dvae.encode(x.to(device).float() / 255.0).flatten(1).cpu() for x in images.split(batch_size)])


def codebook_usage(codes, codebook_size):
    """(distinct codes used, perplexity) of a batch of codes: perplexity = exp(entropy of their histogram)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return int((counts > 0).sum()), float(entropy.exp())


@torch.no_grad()
def reconstruction_metrics(dvae, images, device, batch_size=500):
    """Held-out figures through hard codes, as generation uses them: MSE, codes used, perplexity.

    images: (N, C, S, S) uint8. Returns {"mse", "codes_used", "perplexity"}.
    """
    squared_error, all_codes = 0.0, []
    for chunk in images.split(batch_size):
        x = chunk.to(device).float() / 255.0
        codes = dvae.encode(x)
        squared_error += float(((dvae.decode(codes) - x) ** 2).sum())
        all_codes.append(codes.cpu())
    used, perplexity = codebook_usage(torch.cat(all_codes), dvae.config.codebook_size)
    return {"mse": squared_error / images.numel(), "codes_used": used, "perplexity": perplexity}
