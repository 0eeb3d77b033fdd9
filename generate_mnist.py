"""Generate digits from prompts with a trained DALL-E checkpoint.

    python generate_mnist.py --prompt seven --prompt "3"
    python generate_mnist.py --prompts_file prompts.txt --samples_per_prompt 4 --seed 0
    python generate_mnist.py                      # the lesson's 8x8 grid of 64 prompts
    python generate_mnist.py --dall_e_checkpoint output/dall_e_colour/latest.pt --prompt "a blue seven"
    python generate_mnist.py --prompt 9 --prime_validation_digit 0 --prime_rows 3 --samples_per_prompt 6
    python generate_mnist.py --prompt 3 --guidance 2 --top_p 0.9

The checkpoint says which dataset it was trained on; prompts use that dataset's words.

Writes to --output_dir (default output/dall_e_samples), each file atomically: sample.png (the
first 256 images, each labelled with its prompt; for a completion, a row per prompt: the kept
rows, the original, the completions) and samples.npz with `images` (float32, N x C x H x W, in
[0, 1]), `prompts` (N strings, in order, as typed) and, for a completion, `primer`. The same
prompts, seed, batch size and precision give the same samples.
"""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from captions import check_trained_prompts, encode_prompts, in_training_colours
from checkpoints import check_dvae_matches, dvae_from_checkpoint, load_checkpoint, load_dall_e
from data import load_train_and_validation, read_image_file, to_float
from device import pick_device, resolve_precision
from errors import ArgumentParser, UserError, run_main, shorten
from files import atomic_write, check_output_dir, describe
from flags import COUNT_RANGE, add_sampling_flags, check_sampling_args, sampling_options, sampling_rows
from memory import check_request_fits
from sampling import completion_prime, sample_in_batches
from scene_grammar import trained_spec
from scene_training import scene_grid_prompts
from scenes import SceneDataset

BATCH_SIZE = 256  # prompts sampled at once, by default

# The 64 prompts of the lesson's results grid, row by row.
LESSON_PROMPTS = """
eight 5 7 three 6 3 six seven
4 7 0 2 1 1 six seven
four nine nine 9 9 five 2 three
four 7 3 nine 6 six 4 2
zero eight five four 6 2 5 nine
0 1 5 eight eight 1 five 1
0 8 one 8 eight 1 6 3
zero two 2 eight 6 3 9 1
""".split()


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--dall_e_checkpoint", default="output/dall_e/latest.pt", help="default: %(default)s")
    parser.add_argument(
        "--dvae_checkpoint", help="decode with this dVAE instead of the copy inside the DALL-E checkpoint (optional)"
    )
    parser.add_argument("--prompt", action="append", default=[], help="a prompt such as 7 or seven (repeatable)")
    parser.add_argument("--prompts_file", help="a UTF-8 text file with one prompt per line (optional)")
    parser.add_argument("--samples_per_prompt", type=int, default=1, between=COUNT_RANGE, help="default: %(default)s")
    primer = parser.add_mutually_exclusive_group()
    primer.add_argument(
        "--prime_image",
        metavar="FILE",
        help="image completion: keep the top --prime_rows token rows of this image (PNG, JPEG, WebP, GIF; any "
        "size, grey or colour) and draw the rest under each prompt (optional)",
    )
    primer.add_argument(
        "--prime_validation_digit",
        type=int,
        metavar="I",
        help="image completion from the I-th image of the validation split, held out from training (optional)",
    )
    parser.add_argument(
        "--prime_rows", type=int, help="token rows of the primer kept, 0 to the grid size (default: half the grid)"
    )
    parser.add_argument(
        "--data_dir", default="data", help="training images, for --prime_validation_digit (default: data)"
    )
    add_sampling_flags(parser, batch_size=BATCH_SIZE)
    parser.add_argument("--output_dir", default="output/dall_e_samples", help="default: %(default)s")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    return parser.parse_args(argv)


def default_prompts(dataset):
    """MNIST: the lesson's 64 prompts; scenes: a form per category and held-out compositions; other datasets:
    one caption per concept, held-out pairs included."""
    if dataset.name == "mnist":
        return LESSON_PROMPTS
    if isinstance(dataset, SceneDataset):
        return [prompt for row in scene_grid_prompts() for prompt in row]
    return [dataset.canonical(concept) for concept in dataset.concepts]


MAX_PROMPTS_FILE_BYTES = 64 * 2**20


def read_prompts(args, dataset):
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            what = describe(path)
            if what == "not found":
                raise UserError(f"prompts file not found: {shorten(path)}")
            raise UserError(f"prompts file {shorten(path)} is {what}; give a text file with one prompt per line")
        if path.stat().st_size > MAX_PROMPTS_FILE_BYTES:
            raise UserError(f"prompts file {shorten(path)} is larger than {MAX_PROMPTS_FILE_BYTES // 2**20} MiB")
        try:
            lines = [line.strip() for line in path.read_bytes().decode("utf-8").splitlines()]
        except UnicodeDecodeError:
            raise UserError(
                f"prompts file {shorten(path)} is not UTF-8 text but {describe(path)}; give one prompt per line"
            )
        if not any(lines):
            raise UserError(f"prompts file {shorten(path)} holds no prompt; give one prompt per line")
        prompts += [line for line in lines if line]
    return prompts or default_prompts(dataset)


def read_primer(args, dataset, dvae_config):
    """The primer image (1, C, S, S) uint8 from --prime_image or --prime_validation_digit, or None."""
    if args.prime_image is not None:
        return read_image_file(args.prime_image, dataset.channels, dvae_config.image_size)
    _, (images, labels) = load_train_and_validation(
        dataset.source, args.data_dir, dvae_config.image_size, log=lambda line: None
    )
    if not 0 <= args.prime_validation_digit < len(images):
        raise UserError(
            f"--prime_validation_digit must be between 0 and {len(images) - 1}, got {args.prime_validation_digit}"
        )
    i = slice(args.prime_validation_digit, args.prime_validation_digit + 1)
    shown, _ = in_training_colours(
        dataset, images[i], labels[i], torch.Generator().manual_seed(args.prime_validation_digit)
    )
    return shown


def check_prompts(trained, prompts):
    """Refuse, before any work, a prompt the model was not trained to read: one line naming an accepted form."""
    if isinstance(trained.dataset, SceneDataset):
        for prompt in prompts:
            trained_spec(prompt)
    else:
        check_trained_prompts(trained.tokenizer, trained.dataset, prompts, encode_prompts(trained.tokenizer, prompts))


def check_priming(args, grid_size, dataset):
    primed = args.prime_image is not None or args.prime_validation_digit is not None
    if primed and isinstance(dataset, SceneDataset):
        raise UserError("image completion (--prime_image, --prime_validation_digit) is for single images, not scenes")
    if args.prime_rows is not None and not primed:
        raise UserError("--prime_rows needs an image to complete: add --prime_image FILE or --prime_validation_digit I")
    if args.prime_rows is not None and not 0 <= args.prime_rows <= grid_size:
        raise UserError(f"--prime_rows must be between 0 and the grid's {grid_size} rows, got {args.prime_rows}")
    return primed


MAX_LABELLED = 256  # sample.png shows at most this many images; samples.npz holds them all


def show(ax, image, title):
    ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)


def labelled_grid(images, prompts):
    """One panel per image (the first MAX_LABELLED), its prompt above it."""
    images, prompts = images[:MAX_LABELLED], prompts[:MAX_LABELLED]
    columns = min(8, len(images))
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, prompt in zip(axes.flat, images, prompts):
        show(ax, image, prompt)
    figure.tight_layout()
    return figure


def completion_grid(images, prompts, primer, kept_rows, per_prompt):
    """A row per prompt: the primer with only its kept rows, the whole primer, then the completions."""
    groups = min(len(images) // per_prompt, MAX_LABELLED // per_prompt or 1)
    figure, axes = plt.subplots(groups, 2 + per_prompt, figsize=(1.2 * (2 + per_prompt), 1.4 * groups), squeeze=False)
    kept = primer.clone()
    kept[..., kept_rows:, :] = 0.5  # what the transformer is not shown: grey
    for g, row in enumerate(axes):
        for ax in row:
            ax.axis("off")
        show(row[0], kept, f"kept {kept_rows} px rows")
        show(row[1], primer, "original")
        for j in range(per_prompt):
            show(row[2 + j], images[g * per_prompt + j], prompts[g * per_prompt])
    figure.tight_layout()
    return figure


def save_outputs(output_dir, images, prompts, figure, primer=None):
    """samples.npz and sample.png, each written atomically: a kill leaves the old file or the new one."""
    arrays = {"images": images.numpy().astype(np.float32), "prompts": np.array(prompts)}
    if primer is not None:
        arrays["primer"] = primer.numpy().astype(np.float32)
    atomic_write(output_dir / "samples.npz", lambda f: np.savez(f, **arrays))
    atomic_write(output_dir / "sample.png", lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)


def main():
    args = parse_args()
    device = pick_device(args.device)
    resolve_precision(args.precision, device)  # refuses bf16 where it cannot run
    check_output_dir(args.output_dir)
    trained = load_dall_e(args.dall_e_checkpoint, need_reranker=args.candidates > 1, device=device)
    model, dvae, tokenizer, dataset = trained.model, trained.dvae, trained.tokenizer, trained.dataset
    if args.dvae_checkpoint:
        other = dvae_from_checkpoint(load_checkpoint(args.dvae_checkpoint, "dvae"), args.dvae_checkpoint)
        check_dvae_matches(other.config, dvae.config, args.dvae_checkpoint)
        dvae = other.to(device)
    check_sampling_args(args, dvae.config.codebook_size)
    primed = check_priming(args, dvae.config.grid_size, dataset)
    asked = read_prompts(args, dataset)
    count = len(asked) * args.samples_per_prompt
    check_request_fits(count, sampling_rows(args, count), model, dvae)
    check_prompts(trained, asked)
    prompts = [p for p in asked for _ in range(args.samples_per_prompt)]
    text = encode_prompts(tokenizer, prompts)  # (N, T)
    prime, primer, kept_rows = None, None, None
    if primed:
        primer = to_float(read_primer(args, dataset, dvae.config)).to(device)  # (1, C, S, S)
        token_rows = dvae.config.grid_size // 2 if args.prime_rows is None else args.prime_rows
        prime = completion_prime(dvae, primer, token_rows).expand(len(text), -1)  # (N, P)
        primer, kept_rows = primer[0].cpu(), token_rows * dvae.config.image_size // dvae.config.grid_size
    images = sample_in_batches(
        model, dvae, text, args.batch_size, args.seed, prime, trained.reranker, args.candidates, progress=True,
        **sampling_options(args),
    )  # fmt: skip
    if not images.isfinite().all():
        raise UserError(
            f"{args.dall_e_checkpoint} drew non-finite pixels (NaN); its weights are damaged, nothing written"
        )
    output_dir = Path(args.output_dir)
    if primed:
        figure = completion_grid(images, prompts, primer, kept_rows, args.samples_per_prompt)
    else:
        figure = labelled_grid(images, prompts)
    save_outputs(output_dir, images, prompts, figure, primer)
    print(f"wrote {len(images)} samples to {output_dir / 'sample.png'} and {output_dir / 'samples.npz'}")


if __name__ == "__main__":
    run_main(main)
