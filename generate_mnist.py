"""Generate digits from prompts with a trained DALL-E checkpoint.

    python generate_mnist.py --prompt seven --prompt "3"
    python generate_mnist.py --prompts_file prompts.txt --samples_per_prompt 4 --seed 0
    python generate_mnist.py                      # the lesson's 8x8 grid of 64 prompts
    python generate_mnist.py --dall_e_checkpoint output/dall_e_colour/latest.pt --prompt "a blue seven"

The checkpoint says which dataset it was trained on; prompts use that dataset's words.

Writes to --output_dir (default output/dall_e_samples): sample.png (every image labelled with
its prompt) and samples.npz with `images` (float32, N x C x H x W, in [0, 1]) and `prompts`
(N strings, in order, as typed). The same prompts, seed and batch size give the same samples.
"""

import argparse
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from common import (
    add_sampling_flags,
    check_dvae_matches,
    check_sampling_args,
    dall_e_from_checkpoint,
    dataset_of,
    dvae_from_checkpoint,
    encode_prompts,
    load_checkpoint,
    pick_device,
    reranker_from_checkpoint,
)
from errors import UserError, run_main
from sampling import generate_images

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dall_e_checkpoint", default="output/dall_e/latest.pt", help="default: %(default)s")
    parser.add_argument(
        "--dvae_checkpoint", help="decode with this dVAE instead of the copy inside the DALL-E checkpoint (optional)"
    )
    parser.add_argument("--prompt", action="append", default=[], help="a prompt such as 7 or seven (repeatable)")
    parser.add_argument("--prompts_file", help="a UTF-8 text file with one prompt per line (optional)")
    parser.add_argument("--samples_per_prompt", type=int, default=1, help="default: %(default)s")
    add_sampling_flags(parser, batch_size=256)
    parser.add_argument("--output_dir", default="output/dall_e_samples", help="default: %(default)s")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    return parser.parse_args(argv)


def default_prompts(dataset):
    """MNIST: the lesson's 64 prompts; other datasets: one caption per concept, held-out pairs included."""
    if dataset.name == "mnist":
        return LESSON_PROMPTS
    return [dataset.canonical(concept) for concept in dataset.concepts]


def read_prompts(args, dataset):
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"prompts file not found: {path}")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts or default_prompts(dataset)


@torch.no_grad()
def sample(model, dvae, text, args, device, reranker=None):
    """text (N, T) -> images (N, C, S, S) in [0, 1], in batches, from one seeded generator."""
    generator = torch.Generator(device).manual_seed(args.seed)
    chunks = []
    for batch in tqdm(text.split(args.batch_size), desc="sampling", unit="batch"):
        images = generate_images(
            model,
            dvae,
            batch.to(device),
            args.temperature,
            args.top_k,
            generator,
            reranker=reranker,
            candidates=args.candidates,
            keep=args.keep,
        )
        chunks.append(images.cpu())
    return torch.cat(chunks)


def save_labelled_grid(images, prompts, path):
    """One panel per image, its prompt above it."""
    columns = min(8, len(images))
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, prompt in zip(axes.flat, images, prompts):
        ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(prompt, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    args = parse_args()
    device = pick_device(args.device)
    checkpoint = load_checkpoint(args.dall_e_checkpoint, "dall_e")
    model, dvae, tokenizer = dall_e_from_checkpoint(checkpoint)
    reranker = reranker_from_checkpoint(checkpoint, args.dall_e_checkpoint) if args.candidates > 1 else None
    if args.dvae_checkpoint:
        own = dvae.config
        dvae = dvae_from_checkpoint(load_checkpoint(args.dvae_checkpoint, "dvae"))
        check_dvae_matches(dvae.config, own, args.dvae_checkpoint)
    if args.samples_per_prompt < 1:
        raise UserError(f"--samples_per_prompt must be >= 1, got {args.samples_per_prompt}")
    check_sampling_args(args, dvae.config.codebook_size)
    prompts = [p for p in read_prompts(args, dataset_of(checkpoint)) for _ in range(args.samples_per_prompt)]
    text = encode_prompts(tokenizer, prompts)  # (N, T); unknown words fail here, before any work
    model.to(device), dvae.to(device)
    images = sample(model, dvae, text, args, device, reranker and reranker.to(device))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    np.savez(output_dir / "samples.npz", images=images.numpy().astype(np.float32), prompts=np.array(prompts))
    save_labelled_grid(images, prompts, output_dir / "sample.png")
    print(f"wrote {len(images)} samples to {output_dir / 'sample.png'} and {output_dir / 'samples.npz'}")


if __name__ == "__main__":
    run_main(main)
