"""Train the DALL-E transformer on MNIST digits and their names: stage two (paper section 2.2).

    python train_mnist.py --dvae_checkpoint output/dvae/latest.pt

Every training image is tokenised once by the frozen dVAE; each step pairs a batch of those
token grids with prompts made from their labels, in either spelling ("7" or "seven").
Writes to --output_dir (default output/dall_e): sample-<step>.png with sample_prompts-<step>.txt,
dall_e-<step>.pt every sample_every steps and at the end, and latest.pt at least every
checkpoint_seconds. The checkpoint carries the dVAE and the vocabulary: generation needs no other file.
"""

import argparse
import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.utils import save_image
from tqdm import tqdm

from common import (
    add_common_flags,
    add_training_flags,
    check_dvae_matches,
    dvae_from_checkpoint,
    encode_prompts,
    experiment_config,
    load_checkpoint,
    reranker_from_checkpoint,
)
from dall_e import DallE, heldout_losses
from data import batch_indices, load_train_and_validation, random_affine, to_float
from errors import run_main
from rerank import Reranker, RerankerShape, reranker_state
from sampling import generate_images
from tokenizer import DIGITS, WORDS, Tokenizer
from training import Loop, autocast, cosine, finish_run, fit, restore, set_learning_rate, start_run, wrap
from transformer import MASK_KINDS, mask_density

SAMPLE_PROMPTS = DIGITS + WORDS  # the grid drawn during training: one row per spelling


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dvae_checkpoint", required=True, help="a dVAE checkpoint from train_dvae.py (required)")
    add_common_flags(parser, output_dir="output/dall_e")
    add_training_flags(parser)
    return parser.parse_args(argv)


def learning_rate(t, step):
    """Linear warmup to the peak, then cosine down to min_learning_rate."""
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.num_training_steps - t.warmup_steps)
    return cosine(t.learning_rate, t.min_learning_rate, progress)


@torch.no_grad()
def encode_all(dvae, images, device, augment=None, batch_size=500):
    """(M, C, S, S) uint8 -> (M, G*G) image tokens, raster order; `augment` moves each float batch first."""
    chunks = []
    for x in tqdm(images.split(batch_size), desc="tokenising", leave=False):
        x = to_float(x)
        chunks.append(dvae.encode((augment(x) if augment else x).to(device)).flatten(1).cpu())
    return torch.cat(chunks)


def tokenise_training_set(dvae, images, labels, t, seed, device):
    """The digits as they are, plus t.augment_copies randomly moved copies of each (see README)."""
    generator = torch.Generator().manual_seed(seed)

    def augment(x):
        return random_affine(x, generator, t.augment_shift, t.augment_degrees, t.augment_scale)

    codes = [encode_all(dvae, images, device)] + [
        encode_all(dvae, images, device, augment) for _ in range(t.augment_copies)
    ]
    return torch.cat(codes), labels.repeat(1 + t.augment_copies)


def train_reranker(
    images, labels, prompt_ids, tokenizer, device, steps=600, batch_size=128, learning_rate=2e-3, seed=0
):
    """images (N, C, S, S) uint8, labels (N,), prompt_ids (10, spellings, T) -> a trained Reranker (eval mode)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    digits, spellings, text_length = prompt_ids.shape
    shape = RerankerShape(tokenizer.vocab_size, len(tokenizer.words), text_length, images.shape[1], digits, spellings)
    model = Reranker(shape).to(device)
    model.captions.copy_(prompt_ids.flatten(0, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    for step in tqdm(range(steps), desc="training reranker", leave=False):
        set_learning_rate(optimizer, cosine(learning_rate, 0.0, step / steps))
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = random_affine(to_float(images[index]), generator, 2.0, 10.0, 0.1).to(device)
        target = F.one_hot(labels[index], digits).float().repeat_interleave(spellings, dim=1) / spellings  # (B, P)
        loss = F.cross_entropy(model.logits(x, model.captions), target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def make_ema(model, decay, resumed):
    """An exponential moving average of the weights (None when decay is 0), restored on --resume."""
    if decay == 0:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    if resumed:
        ema.module.load_state_dict(resumed["ema_model"])
        ema.n_averaged.fill_(resumed["ema_updates"])
    return ema


def make_optimizer(model, t):
    """AdamW; weight decay on matrices only, not on biases, norms or position tables."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "position" in n]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(0.9, 0.95))


def main():
    args = parse_args()
    output_dir = Path(args.output_dir)
    resumed = load_checkpoint(output_dir / "latest.pt", "dall_e") if args.resume else None
    config = experiment_config(args, "train_dall_e", stored=resumed and resumed["config"])
    t = config.train_dall_e
    dvae = dvae_from_checkpoint(load_checkpoint(args.dvae_checkpoint, "dvae"))
    check_dvae_matches(dvae.config, config.dvae, args.dvae_checkpoint)
    run = start_run(args.device, args.seed, t.batch_size)
    dvae.to(run.device)
    tokenizer = Tokenizer(config.dall_e.text_length)
    (train_images, train_labels), (validation_images, validation_labels) = load_train_and_validation(
        args.data_dir, config.dvae.image_size, config.dvae.channels, log=run.log
    )
    prompt_ids = torch.stack([encode_prompts(tokenizer, DIGITS), encode_prompts(tokenizer, WORDS)], dim=1)  # (10, 2, T)
    if resumed:
        reranker = reranker_from_checkpoint(resumed, output_dir / "latest.pt")
    else:
        reranker = train_reranker(
            train_images, train_labels, prompt_ids, tokenizer, run.device, t.reranker_steps, seed=args.seed
        )
    train_codes, train_labels = tokenise_training_set(dvae, train_images, train_labels, t, args.seed, run.device)
    validation_codes = encode_all(dvae, validation_images, run.device)
    validation_text = prompt_ids[validation_labels, torch.arange(len(validation_labels)) % 2]  # (M, T), both spellings

    model = DallE(config.dall_e, dvae.config, tokenizer.vocab_size)
    optimizer = make_optimizer(model, t)
    start_step = restore(resumed, model, optimizer, run)
    ema = make_ema(model, t.ema_decay, resumed)
    sampler = ema.module if ema else model  # what draws: the moving average of the weights, where there is one
    ddp_model = wrap(model, run)
    m = config.dall_e
    densities = ", ".join(
        f"{k} {mask_density(k, dvae.config.grid_size, m.conv_kernel, m.mask_anchor):.0%}" for k in MASK_KINDS
    )
    run.log(
        f"DALL-E: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"masks keep {densities} of causal image pairs"
    )
    batches = batch_indices(len(train_codes), t.batch_size, args.seed, start_step, run.rank, run.world_size)

    def train_step(step):
        lr = learning_rate(t, step)
        set_learning_rate(optimizer, lr)
        index = next(batches)
        spelling = torch.randint(0, 2, (len(index),))  # "7" or "seven", drawn afresh every step
        text = prompt_ids[train_labels[index], spelling].to(run.device)
        out = ddp_model(text, train_codes[index].to(run.device), t.text_loss_weight)
        return {"loss": out["loss"], "text": out["text_loss"], "image": out["image_loss"], "lr": lr}

    def after_step(step):
        if ema:
            ema.update_parameters(model)

    def on_sample(step):
        model.eval()
        losses = heldout_losses(sampler, validation_text.to(run.device), validation_codes.to(run.device))
        generator = torch.Generator(run.device).manual_seed(args.seed)
        text = encode_prompts(tokenizer, SAMPLE_PROMPTS).to(run.device)
        save_image(
            generate_images(sampler, dvae, text, generator=generator), output_dir / f"sample-{step}.png", nrow=10
        )
        (output_dir / f"sample_prompts-{step}.txt").write_text(" ".join(DIGITS) + "\n" + " ".join(WORDS) + "\n")
        model.train()
        run.log(
            f"step {step}: validation image loss {losses['image_loss']:.4f} "
            f"({losses['image_loss'] / math.log(2):.3f} bits/token), text loss {losses['text_loss']:.4f}"
        )
        return losses

    def make_checkpoint(step):
        return {
            "kind": "dall_e",
            "config": dataclasses.asdict(config),
            "vocabulary": tokenizer.vocabulary,
            "dvae": {"dvae_config": dataclasses.asdict(dvae.config), "model": dvae.state_dict()},
            "dvae_checkpoint": str(args.dvae_checkpoint),
            "model": model.state_dict(),
            "reranker": reranker_state(reranker),
            "optimizer": optimizer.state_dict(),
        } | ({"ema_model": ema.module.state_dict(), "ema_updates": int(ema.n_averaged)} if ema else {})

    loop = Loop(
        "dall_e",
        output_dir,
        t.num_training_steps,
        t.sample_every,
        t.checkpoint_seconds,
        t.grad_clip,
        ("loss", "text", "image"),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    fit(
        loop,
        run,
        ddp_model,
        optimizer,
        train_step,
        make_checkpoint,
        on_sample,
        start_step,
        autocast(run, args.bf16),
        after_step,
    )
    run.log(f"done: {output_dir / 'latest.pt'}")
    finish_run(run, model)


if __name__ == "__main__":
    run_main(main)
