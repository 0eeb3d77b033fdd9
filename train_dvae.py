"""Train the discrete VAE on MNIST: stage one of DALL-E (paper section 2.1).

    python train_dvae.py                       # defaults: a few minutes on a laptop CPU
    python train_dvae.py --num_training_steps 500 --set dvae.codebook_size=64

Writes to --output_dir (default output/dvae): recon-<step>.png (originals | reconstructions),
dvae-<step>.pt every sample_every steps and at the end, and latest.pt at least every
checkpoint_seconds. --resume continues from latest.pt.
"""

import dataclasses
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from captions import as_seen
from common import (
    add_common_flags,
    add_training_flags,
    choose_dataset,
    experiment_config,
    prepare_output_dir,
    resume_seed,
)
from data import batch_indices, load_train_and_validation, to_float
from dvae import DiscreteVAE, codebook_usage, reconstruction_metrics
from errors import ArgumentParser, run_main
from files import atomic_write, lock_output_dir
from training import (
    Loop,
    cosine,
    finish_run,
    fit,
    restore,
    set_learning_rate,
    start_run,
    step_generator,
    wrap,
)


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    add_common_flags(parser, output_dir="output/dvae")
    add_training_flags(parser)
    return parser.parse_args(argv)


def schedules(t, step):
    """(temperature, kl_weight, learning_rate) at `step` (appendix A.2, cosine schedules)."""
    total = t.num_training_steps
    temperature = cosine(t.temperature_start, t.temperature_end, step / max(1.0, t.temperature_anneal_fraction * total))
    kl_weight = t.kl_weight * min(1.0, step / max(1.0, t.kl_warmup_fraction * total))
    learning_rate = cosine(t.learning_rate, t.min_learning_rate, step / total)
    return temperature, kl_weight, learning_rate


def save_reconstructions(dvae, images, path, device):
    """64 validation originals (left) beside their reconstructions through hard codes (right)."""
    x = to_float(images[:64]).to(device)
    originals = make_grid(x, nrow=8, padding=2, pad_value=0.5)
    reconstructions = make_grid(dvae.decode(dvae.encode(x)), nrow=8, padding=2, pad_value=0.5)
    gap = torch.full((originals.shape[0], originals.shape[1], 8), 1.0, device=device)
    grid = torch.cat([originals, gap, reconstructions], dim=2)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))


def main():
    args = parse_args()
    output_dir = Path(args.output_dir)
    resumed = prepare_output_dir(args, "dvae")  # checked, before any work; latest.pt on --resume
    dataset = choose_dataset(args.dataset, resumed and resumed.get("dataset", "mnist"), output_dir / "latest.pt")
    config = experiment_config(args, "train_dvae", dataset, stored=resumed and resumed["config"])
    args.seed = resume_seed(args, resumed)
    t = config.train_dvae
    run = start_run(args.device, args.seed, t.batch_size, args.precision)
    lock = lock_output_dir(output_dir) if run.is_main else None  # noqa: F841 (held until the process ends)
    (train_images, train_labels), (validation_images, validation_labels) = load_train_and_validation(
        dataset.source, args.data_dir, config.dvae.image_size, log=run.log
    )
    validation_images, _ = as_seen(dataset, validation_images, validation_labels, torch.Generator().manual_seed(0))
    model = DiscreteVAE(config.dvae)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate)
    start_step = restore(resumed, model, optimizer, run)
    ddp_model = wrap(model, run)
    run.log(f"dVAE: {sum(p.numel() for p in model.parameters()):,} parameters, {config.dvae.codebook_size} codes")
    batches = batch_indices(len(train_images), t.batch_size, args.seed, start_step, run.rank, run.world_size)

    def train_step(step):
        temperature, kl_weight, learning_rate = schedules(t, step)
        set_learning_rate(optimizer, learning_rate)
        index = next(batches)
        images, _ = as_seen(
            dataset, train_images[index], train_labels[index], step_generator(args.seed, step, run.rank)
        )
        images = to_float(images).to(run.device)
        out = ddp_model(images, temperature, kl_weight)
        _, perplexity = codebook_usage(out["codes"], config.dvae.codebook_size)
        return {
            "loss": out["loss"],
            "reconstruction": out["reconstruction"],
            "kl": out["kl"],
            "mse": out["mse"],
            "tau": temperature,
            "kl_weight": kl_weight,
            "lr": learning_rate,
            "ppl": perplexity,
        }

    def on_sample(step):
        model.eval()
        validation = reconstruction_metrics(model, validation_images, run.device)
        save_reconstructions(model, validation_images, output_dir / f"recon-{step}.png", run.device)
        model.train()
        run.log(
            f"step {step}: validation MSE {validation['mse']:.4f}, codes used "
            f"{validation['codes_used']}/{config.dvae.codebook_size}, perplexity {validation['perplexity']:.1f}"
        )
        return validation

    def make_checkpoint(step):
        return {
            "kind": "dvae",
            "dataset": dataset.name,
            "config": dataclasses.asdict(config),
            "dvae_config": dataclasses.asdict(config.dvae),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        }

    loop = Loop(
        "dvae",
        output_dir,
        t.num_training_steps,
        t.sample_every,
        t.checkpoint_seconds,
        t.grad_clip,
        ("loss", "mse", "tau", "ppl"),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    fit(loop, run, ddp_model, optimizer, train_step, make_checkpoint, on_sample, start_step)
    run.log(f"done: {output_dir / 'latest.pt'}")
    finish_run(run, model)


if __name__ == "__main__":
    run_main(main)
