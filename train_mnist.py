"""Train the DALL-E transformer on images and their captions: stage two (paper section 2.2).

    python train_mnist.py --dvae_checkpoint output/dvae/latest.pt
    python train_mnist.py --dvae_checkpoint output/dvae_colour/latest.pt   # its dataset comes with it

Every training image is tokenised once by the frozen dVAE (in every colour its class is shown
in, for coloured data); each step pairs a batch of those token grids with captions of their
concepts (captions.py), colour and phrasing drawn afresh at every step.
Writes to --output_dir (default output/dall_e): sample-<step>.png with sample_prompts-<step>.txt,
dall_e-<step>.pt every sample_every steps and at the end, and latest.pt at least every
checkpoint_seconds. The checkpoint carries the dVAE and the vocabulary: generation needs no other file.
"""

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.utils import save_image
from tqdm import tqdm

from captions import (
    caption_table,
    colourise,
    concept_index,
    encode_prompts,
    in_training_colours,
    random_colours,
    shown_split,
)
from checkpoints import (
    check_dvae_matches,
    checkpoint_header,
    dvae_from_checkpoint,
    load_checkpoint,
    load_weights,
    reranker_from_checkpoint,
)
from dall_e import DallE, heldout_losses
from data import batch_indices, load_train_and_validation, random_affine, to_float
from device import precision_context
from dvae import encode_in_batches
from errors import ArgumentParser, UserError, run_main
from experiment import choose_dataset, experiment_config, prepare_output_dir, resume_seed
from files import atomic_write, lock_output_dir, write_text
from flags import add_common_flags, add_training_flags
from rerank import Reranker, RerankerConfig, reranker_state
from sampling import sample_in_batches
from scene_training import VALIDATION_SEED, SceneTokens, blank_place, scene_grid_prompts, train_scene_reranker
from scenes import Renderer, SceneDataset
from tokenizer import Tokenizer
from training import Bookkeeping, cosine, finish_run, restore, seed_step, start_run, wrap
from transformer import MASK_KINDS, mask_density


def grid_prompts(dataset):
    """The grid drawn during training, row by row: a row per colour (held-out pairs too), else two phrasings."""
    if isinstance(dataset, SceneDataset):
        return scene_grid_prompts()
    classes = range(len(dataset.class_names))
    if dataset.channels == 3:
        return [[dataset.canonical((label, colour)) for label in classes] for colour in dataset.colours]
    return [[dataset.captions(label, None)[i] for label in classes] for i in (0, 1)]


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dvae_checkpoint", help="a dVAE checkpoint from train_dvae.py (required, except with --resume)"
    )
    add_common_flags(parser, output_dir="output/dall_e")
    add_training_flags(parser)
    return parser.parse_args(argv)


def learning_rate(t, step):
    """Linear warmup to the peak, then cosine down to min_learning_rate."""
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.num_training_steps - t.warmup_steps)
    return cosine(t.learning_rate, t.min_learning_rate, progress)


def tokenise_training_set(dvae, images, labels, device, dataset):
    """(M, colours, G*G) codes of every image in every colour (M, 1, G*G for grey data), tokenised once.

    Colours a class is never shown in are tokenised too (it is simpler) but never drawn in training.
    """
    coloured = [colourise(images, torch.full((len(images),), c), dataset) for c in range(len(dataset.colours))]
    return torch.stack([encode_in_batches(dvae, x, device) for x in tqdm(coloured, desc="tokenising", leave=False)], 1)


def train_reranker(images, labels, dataset, captions, config, device, steps=600, batch_size=128, seed=0):
    """A Reranker trained contrastively (CLIP's symmetric loss) on (image, caption) pairs of seen concepts.

    images (N, 1, S, S) uint8 grey, labels (N,), captions (concepts, P, T) -> the Reranker, eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Reranker(config).to(device)
    model.captions.copy_(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in tqdm(range(steps), desc="training reranker", leave=False):
        for group in optimizer.param_groups:
            group["lr"] = cosine(2e-3, 0.0, step / steps)
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        x, colours = in_training_colours(dataset, images[index], labels[index], generator)
        x = random_affine(to_float(x), generator, 2.0, 10.0, 0.1).to(device)
        concepts = concept_index(dataset, labels[index], colours)
        text = captions[concepts, torch.randint(0, captions.shape[1], (batch_size,), generator=generator)]
        logits = model.logits(x, text.to(device))  # (B images, B captions)
        same = (concepts[:, None] == concepts[None, :]).float().to(device)  # pairs that share a concept
        by_image, by_caption = same / same.sum(1, keepdim=True), same.T / same.sum(0)[:, None]
        loss = (F.cross_entropy(logits, by_image) + F.cross_entropy(logits.T, by_caption)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def concept_data(dataset, tokenizer, dvae, train, validation, device):
    """For datasets of single concepts: (pairs, validation text (M, T), validation codes (M, N)), where
    pairs(index, generator) -> (text (B, T), codes (B, N)) of one step: the training images at index, each in
    a colour its class is shown in, captioned with a random phrasing of its concept."""
    captions = caption_table(dataset, tokenizer)  # (concepts, P, T)
    train_codes = tokenise_training_set(dvae, *train, device, dataset)
    allowed = dataset.allowed_colours()  # (classes, colours)
    shown, colours = shown_split(dataset, *validation)
    concepts = concept_index(dataset, validation[1], colours)
    validation_text = captions[concepts, torch.arange(len(concepts)) % captions.shape[1]]  # (M, T), every phrasing

    def pairs(index, generator):
        labels = train[1][index]
        colours = random_colours(labels, allowed, generator)
        phrasing = torch.randint(0, captions.shape[1], (len(index),), generator=generator)
        return captions[concept_index(dataset, labels, colours), phrasing], train_codes[index, colours]

    return pairs, validation_text, encode_in_batches(dvae, shown, device)


def scene_data(dataset, tokenizer, dvae, train, validation, device):
    """concept_data for scenes (scene_training.py): training scenes composed from digits tokenised once;
    validation scenes, a fixed draw from the validation digits."""
    blank = blank_place(dvae, device)
    scenes = SceneTokens(tokenise_training_set(dvae, *train, device, dataset), train[1], blank, tokenizer)
    shown = SceneTokens(tokenise_training_set(dvae, *validation, device, dataset), validation[1], blank, tokenizer)
    validation_text, validation_codes, _ = shown.pairs(
        len(validation[1]), torch.Generator().manual_seed(VALIDATION_SEED)
    )

    def pairs(index, generator):
        return scenes.pairs(len(index), generator)[:2]

    return pairs, validation_text, validation_codes


def drop_prompts(text, null_prompt, probability, generator):
    """text (B, T) with each row replaced by null_prompt (T,) with this probability: the model also learns
    images unconditioned, which classifier-free guidance (dall_e.py) contrasts with conditioned ones."""
    dropped = torch.rand(len(text), generator=generator) < probability  # (B,)
    return torch.where(dropped[:, None], null_prompt, text)


def make_ema(model, decay, resumed):
    """An exponential moving average of the weights (None when decay is 0), restored on --resume."""
    if decay == 0:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    ema.module.eval()  # the average only draws and is measured: dropout stays off (model.eval() never reaches it)
    if resumed:
        load_weights(ema.module, resumed.get("ema_model"), "the moving average being resumed")
        ema.n_averaged.fill_(resumed.get("ema_updates", 0))  # checked by checkpoints.load_resumed
    return ema


def make_optimizer(model, t):
    """AdamW; weight decay on matrices only, not on biases, norms or position tables."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "position" in n]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(0.9, 0.95))


def choose_reranker(resumed, output_dir, dataset, tokenizer, train, device, steps, seed):
    """The resumed run's reranker, or one trained now on the training images (before the transformer)."""
    if resumed:
        return reranker_from_checkpoint(resumed, output_dir / "latest.pt")
    if isinstance(dataset, SceneDataset):
        return train_scene_reranker(Renderer(*train), tokenizer, device, steps, seed=seed)
    captions = caption_table(dataset, tokenizer)  # (concepts, P, T)
    config = RerankerConfig(
        tokenizer.vocab_size, len(tokenizer.words), tokenizer.text_length, dataset.channels, *captions.shape[:2]
    )
    return train_reranker(*train, dataset, captions, config, device, steps, seed=seed)


def choose_dvae(args, resumed):
    """(the frozen dVAE, its dataset's name, where it came from): --dvae_checkpoint, or on --resume the
    copy the run stored; a --dvae_checkpoint with other weights is refused then (it would re-tokenise)."""
    if resumed:
        source = Path(args.output_dir) / "latest.pt"
        dvae = dvae_from_checkpoint(resumed, source)
        if args.dvae_checkpoint:
            given = dvae_from_checkpoint(load_checkpoint(args.dvae_checkpoint, "dvae"), args.dvae_checkpoint)
            same = given.state_dict().keys() == dvae.state_dict().keys() and all(
                torch.equal(a, b) for a, b in zip(given.state_dict().values(), dvae.state_dict().values())
            )
            if not same:
                raise UserError(
                    f"{args.dvae_checkpoint} is not the dVAE the resumed run was trained with; "
                    "leave --dvae_checkpoint out to resume with the run's own copy"
                )
        return dvae, resumed.get("dataset", "mnist"), resumed.get("dvae_checkpoint", str(source))
    if not args.dvae_checkpoint:
        raise UserError("--dvae_checkpoint is required (a dVAE from train_dvae.py); only --resume can leave it out")
    checkpoint = load_checkpoint(args.dvae_checkpoint, "dvae")
    return (
        dvae_from_checkpoint(checkpoint, args.dvae_checkpoint),
        checkpoint.get("dataset", "mnist"),
        args.dvae_checkpoint,
    )


def main():
    args = parse_args()
    output_dir = Path(args.output_dir)
    resumed = prepare_output_dir(args, "dall_e")  # checked, before any work; latest.pt on --resume
    dvae, dvae_dataset, dvae_source = choose_dvae(args, resumed)
    dataset = choose_dataset(args.dataset, dvae_dataset, dvae_source)
    config = experiment_config(args, "train_dall_e", dataset, stored=resumed and resumed["config"])
    t = config.train_dall_e
    check_dvae_matches(dvae.config, config.dvae, dvae_source)
    args.seed = resume_seed(args, resumed)
    run = start_run(args.device, args.seed, t.batch_size, args.precision)
    lock = lock_output_dir(output_dir) if run.is_main else None  # noqa: F841 (held until the process ends)
    dvae.to(run.device)
    tokenizer = Tokenizer(dataset.words(), config.dall_e.text_length)
    null_prompt = torch.tensor(tokenizer.null_prompt())  # (T,)
    train, validation = load_train_and_validation(dataset.source, args.data_dir, config.dvae.image_size, log=run.log)
    reranker = choose_reranker(resumed, output_dir, dataset, tokenizer, train, run.device, t.reranker_steps, args.seed)
    make_data = scene_data if isinstance(dataset, SceneDataset) else concept_data
    pairs, validation_text, validation_codes = make_data(dataset, tokenizer, dvae, train, validation, run.device)
    grid = grid_prompts(dataset)

    model = DallE(config.dall_e, dvae.config, tokenizer.vocab_size)
    optimizer, start_step = restore(resumed, model, lambda m: make_optimizer(m, t), run)
    ema = make_ema(model, t.ema_decay, resumed)
    sampler = ema.module if ema else model  # what draws: the moving average of the weights, where there is one
    ddp_model = wrap(model, run)
    m = config.dall_e
    densities = ", ".join(f"{k} {mask_density(k, dvae.config.canvas_grid, m.conv_kernel):.0%}" for k in MASK_KINDS)
    run.log(
        f"DALL-E: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"masks keep {densities} of causal image pairs"
    )
    batches = batch_indices(len(train[1]), t.batch_size, args.seed, start_step, run.rank, run.world_size)

    def on_sample(step):  # on rank 0, every sample_every steps
        model.eval()
        losses = heldout_losses(sampler, validation_text.to(run.device), validation_codes.to(run.device))
        text = encode_prompts(tokenizer, [p for row in grid for p in row])
        images = sample_in_batches(sampler, dvae, text, len(text), args.seed)
        png = lambda f: save_image(images, f, nrow=len(grid[0]), format="png")  # noqa: E731
        atomic_write(output_dir / f"sample-{step}.png", png)
        write_text(output_dir / f"sample_prompts-{step}.txt", "".join(" | ".join(row) + "\n" for row in grid))
        model.train()
        run.log(
            f"step {step}: validation image loss {losses['image_loss']:.4f} "
            f"({losses['image_loss'] / math.log(2):.3f} bits/token), text loss {losses['text_loss']:.4f}"
        )
        return losses

    def make_checkpoint(step):
        return (
            checkpoint_header("dall_e", dataset, config)
            | {
                "vocabulary": tokenizer.vocabulary,
                "dvae": {"dvae_config": dataclasses.asdict(dvae.config), "model": dvae.state_dict()},
                "dvae_checkpoint": str(dvae_source),
                "model": model.state_dict(),
                "reranker": reranker_state(reranker),
                "optimizer": optimizer.state_dict(),
            }
            | ({"ema_model": ema.module.state_dict(), "ema_updates": int(ema.n_averaged)} if ema else {})
        )

    output_dir.mkdir(parents=True, exist_ok=True)
    shown = ("loss", "text", "image")
    with Bookkeeping(run, "dall_e", output_dir, t, start_step, make_checkpoint, on_sample, shown) as books:
        for step in range(start_step, t.num_training_steps):
            generator = seed_step(args.seed, step, run.rank)  # dropout, colours, phrasings: fixed by (seed, step, rank)
            lr = learning_rate(t, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = next(batches)
            text, codes = pairs(index, generator)  # (B, T), (B, N)
            text = drop_prompts(text, null_prompt, t.null_prompt_prob, generator).to(run.device)
            with precision_context(run.precision, run.device):
                out = ddp_model(text, codes.to(run.device), t.text_loss_weight)  # 1/8 + 7/8
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)  # 0: no clip
            interrupted = books.check(out["loss"], grad_norm, step)  # stops every process before a NaN step
            optimizer.step()
            if ema:
                ema.update_parameters(model)
            metrics = {"loss": out["loss"], "text": out["text_loss"], "image": out["image_loss"], "lr": lr}
            books.end_step(step + 1, model, metrics | {"grad_norm": grad_norm}, interrupted)
    run.log(f"done: {output_dir / 'latest.pt'}")
    finish_run(run, model)


if __name__ == "__main__":
    run_main(main)
