"""Train the discrete VAE on MNIST: stage one of DALL-E (paper section 2.1).

    python train_dvae.py                       # defaults: a few minutes on a laptop CPU
    python train_dvae.py --num_training_steps 500 --set dvae.codebook_size=64

Writes to --output_dir (default output/dvae): recon-<step>.png (originals | reconstructions),
dvae-<step>.pt every sample_every steps and at the end, and latest.pt at least every
checkpoint_seconds. --resume continues from latest.pt.
"""

import dataclasses
import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from captions import in_training_colours, shown_split
from checkpoints import checkpoint_header
from data import batch_indices, load_train_and_validation, to_float
from device import precision_context
from dvae import DiscreteVAE, codebook_usage, reconstruction_metrics
from errors import ArgumentParser, run_main
from experiment import choose_dataset, experiment_config, prepare_output_dir, resume_seed
from files import atomic_write, lock_output_dir
from flags import add_common_flags, add_training_flags
from training import Bookkeeping, cosine, finish_run, restore, seed_step, start_run, wrap


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    add_common_flags(parser, output_dir="output/dvae")
    add_training_flags(parser)
    return parser.parse_args(argv)


def schedules(t, step):
    """(temperature, kl_weight, learning_rate) at `step` (appendix A.2): tau and the learning rate on
    cosine schedules, the KL weight ramped up linearly."""
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
    validation_images, _ = shown_split(dataset, validation_images, validation_labels)
    model = DiscreteVAE(config.dvae)
    optimizer, start_step = restore(
        resumed, model, lambda m: torch.optim.AdamW(m.parameters(), lr=t.learning_rate), run
    )
    ddp_model = wrap(model, run)
    run.log(f"dVAE: {sum(p.numel() for p in model.parameters()):,} parameters, {config.dvae.codebook_size} codes")
    batches = batch_indices(len(train_images), t.batch_size, args.seed, start_step, run.rank, run.world_size)

    def on_sample(step):  # on rank 0, every sample_every steps
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
        return checkpoint_header("dvae", dataset, config) | {
            "dvae_config": dataclasses.asdict(config.dvae),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        }

    output_dir.mkdir(parents=True, exist_ok=True)
    shown = ("loss", "mse", "tau", "ppl")
    with Bookkeeping(run, "dvae", output_dir, t, start_step, make_checkpoint, on_sample, shown) as books:
        for step in range(start_step, t.num_training_steps):
            generator = seed_step(args.seed, step, run.rank)  # Gumbel noise, colours: fixed by (seed, step, rank)
            temperature, kl_weight, learning_rate = schedules(t, step)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            index = next(batches)
            images, _ = in_training_colours(dataset, train_images[index], train_labels[index], generator)
            with precision_context(run.precision, run.device):
                out = ddp_model(to_float(images).to(run.device), temperature, kl_weight)  # the ELBO, in forward()
                _, perplexity = codebook_usage(out["codes"], config.dvae.codebook_size)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)  # 0: no clip
            interrupted = books.check(out["loss"], grad_norm, step)  # stops every process before a NaN step
            optimizer.step()
            metrics = {name: out[name] for name in ("loss", "reconstruction", "kl", "mse")}
            metrics |= {"tau": temperature, "kl_weight": kl_weight, "lr": learning_rate, "ppl": perplexity}
            books.end_step(step + 1, model, metrics | {"grad_norm": grad_norm}, interrupted)
    run.log(f"done: {output_dir / 'latest.pt'}")
    finish_run(run, model)


if __name__ == "__main__":
    run_main(main)
