"""Measure a trained DALL-E: does it draw what it is asked for, how real does it look, does it
copy its training images, and can it draw combinations it never saw?

    python evaluate.py                                                    # validation split: choose here
    python evaluate.py --split test --test_data_dir ../shared/mnist/raw   # report once, at the end

Prints a table and writes OUTPUT_DIR/metrics.json (default output/eval). About --samples images
are drawn, the same number for every concept of the checkpoint's dataset (captions.py), cycling
through its phrasings; once plainly and once reranked (--candidates). Each set is measured by two
independent judges (judge.py), which read images in grey (the brightest channel):
  prompt accuracy   share of images whose class the judge reads as the prompted one;
  colour, both      (coloured data) share whose stroke colour, the palette colour nearest the mean
                    of the bright pixels, is the prompted one; and share right in class and colour,
                    for seen and for held-out (zero-shot) pairs separately;
  unsure            share the judge is unsure of (top class below 0.9), beside real images' share; read it
                    for single draws: reranked draws passed the reranker's own p > 0.9 test, and the
                    reranker and the judges are MNIST classifiers trained on the same digits, so
                    reranked "unsure" is low by construction;
  judge FID         Frechet distance to the split's real images in the judge's features, beside two
                    references: the real-vs-real floor (other real images, from the training split)
                    and the dVAE reconstructions of those images (what this dVAE allows);
  near-copies       share of samples closer (pixel distance) to their nearest training image of the
                    same class than 99% of the dVAE's reconstructions of the split's real images are
                    (samples are dVAE decodes, so they are compared with decodes): memorisation.
The test split draws its own prompts' phrasings and sampling noise (--seed + 1,000,003): the two
splits' figures are separate measurements.
Also: bits per image token on the split's real images, the dVAE's reconstruction figures, the
reranker's retrieval accuracy and the sampling speed. The first run for a dataset trains and
caches its two judges (about 4 minutes on a laptop CPU).
"""

import json
import math
import time
from functools import partial
from pathlib import Path

import torch

from captions import (
    PALETTE,
    caption_table,
    colourise,
    concept_index,
    encode_prompts,
    held_out_mask,
    in_training_colours,
    sample_prompts,
    shown_split,
)
from checkpoints import load_dall_e
from dall_e import heldout_losses
from data import load_images, load_train_and_validation, to_float
from device import pick_device, resolve_precision
from dvae import encode_in_batches, reconstruction_metrics
from errors import ArgumentParser, run_main
from evaluate_scenes import measure_scenes, print_scene_table
from files import check_output_dir, write_text
from flags import COUNT_RANGE, add_sampling_flags, add_split_flags, check_sampling_args, sampling_options, sampling_rows
from judge import JUDGES, classify, frechet_distance, load_or_train_judge, unsure_share
from memory import check_request_fits
from sampling import sample_in_batches
from scenes import SCENES, SceneDataset
from summarize import print_rows

JUDGE_MIN_ACCURACY = 0.98
NEAR_COPY_PERCENTILE = 0.01
TEST_SEED_OFFSET = 1_000_003  # the test split draws its own prompts and sampling noise, not the validation split's


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--dall_e_checkpoint", default="output/dall_e/latest.pt", help="default: %(default)s")
    add_split_flags(parser, "validation (carved from the training images) to choose settings, test to report")
    parser.add_argument(
        "--samples", type=int, default=2000, between=COUNT_RANGE, help="images drawn per set (default: %(default)s)"
    )
    add_sampling_flags(parser, batch_size=1000)
    parser.add_argument("--output_dir", default="output/eval", help="default: %(default)s")
    parser.add_argument(
        "--judge_dir", default="output/judge", help="where the judges are cached, per dataset (default: %(default)s)"
    )
    parser.add_argument(
        "--proof_scenes",
        type=int,
        default=200,
        between=COUNT_RANGE,
        help="scenes: true scenes per category for the ceilings (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help="default: %(default)s")
    return parser.parse_args(argv)


def split_seed(args):
    """The seed of the prompts' phrasings and of sampling: --seed on validation, another one on test, so
    that the figures of the two splits are two measurements, not one read twice."""
    return args.seed + (TEST_SEED_OFFSET if args.split == "test" else 0)


def generate(trained, text, args, candidates=1):
    """Images (N, C, S, S) for prompts text (N, T), and the seconds spent."""
    start = time.perf_counter()
    images = sample_in_batches(
        trained.model, trained.dvae, text, args.batch_size, split_seed(args), None, trained.reranker, candidates,
        **sampling_options(args),
    )  # fmt: skip
    return images, time.perf_counter() - start


@torch.no_grad()
def reconstruct(dvae, images, device, batch_size=1000):
    """(N, C, S, S) uint8 -> (N, C, S, S) in [0, 1]: the images through the dVAE's tokens and back."""
    return torch.cat([dvae.decode(dvae.encode(to_float(x).to(device))).cpu() for x in images.split(batch_size)])


def grey(images):
    """(N, C, S, S) in [0, 1] -> (N, 1, S, S): the brightest channel, a coloured stroke's intensity."""
    return images.float().amax(dim=1, keepdim=True)


def stroke_colour(images, dataset):
    """(N, 3, S, S) in [0, 1] -> (N,) index of the palette colour nearest the mean of the bright pixels."""
    bright = (grey(images) > 0.5).float()  # (N, 1, S, S)
    mean = (images * bright).sum(dim=(2, 3)) / bright.sum(dim=(2, 3)).clamp(min=1)  # (N, 3)
    palette = torch.tensor([PALETTE[c] for c in dataset.colours], dtype=torch.float32) / 255
    return torch.cdist(mean, palette).argmin(dim=1)


def nearest_training_distance(images, labels, train_images, train_labels):
    """(N,) pixel (L2) distance from each grey image in [0, 1] to the nearest training image of its class."""
    distances = torch.full((len(images),), float("inf"))  # inf where the class has no training image
    for d in range(int(train_labels.max()) + 1):
        mine, theirs = labels == d, to_float(train_images[train_labels == d]).flatten(1)
        if mine.any() and len(theirs):
            distances[mine] = torch.cdist(grey(images[mine]).flatten(1), theirs).min(dim=1).values
    return distances


class JudgeReferences:
    """One judge and what its verdicts on samples are compared with: its reading of the split's real images.

    Every FID compares a set as large as the samples (generated images; other real images, from
    the training split; their dVAE reconstructions) with the same reference set: the first
    `reference_size` images of the split. FID is biased upwards at small set sizes, so figures
    compare only at equal sizes (offline, the validation split has 500 images, the test split 10,000).
    """

    def __init__(self, judge, split, other_real, reconstructions, reference_size, device):
        self.judge, self.device = judge, device
        probabilities, self.real = classify(judge, split[0], device)
        self.accuracy = (probabilities.argmax(1) == split[1]).float().mean().item()
        self.unsure = unsure_share(probabilities)
        self.real = self.real[:reference_size]
        self.floor = frechet_distance(classify(judge, other_real, device)[1], self.real)
        self.reconstructions = frechet_distance(classify(judge, reconstructions, device)[1], self.real)
        self.compared = len(other_real)

    def measure(self, images, labels):
        """Prompt accuracy (overall and per class), unsure share and FID of generated images; the class read."""
        probabilities, features = classify(self.judge, images, self.device)
        read = probabilities.argmax(1)
        fid = frechet_distance(features, self.real)
        figures = {
            "prompt_accuracy": (read == labels).float().mean().item(),
            "prompt_accuracy_per_class": {
                str(d): (read == labels)[labels == d].float().mean().item() for d in range(10)
            },
            "unsure": unsure_share(probabilities),
            "fid": fid,
            "fid_over_floor": fid / self.floor,
            "fid_over_dvae": fid / self.reconstructions,
        }
        return figures, read

    def references(self):
        return {
            "accuracy_on_real": self.accuracy,
            "unsure_on_real": self.unsure,
            "fid_floor": self.floor,
            "fid_dvae_reconstructions": self.reconstructions,
            "fid_reference_size": len(self.real),
            "fid_compared_size": self.compared,
        }


def zero_shot(right_class, right_colour, held_out):
    """Class, colour and joint accuracy for seen and held-out pairs, and held-out joint over seen joint."""
    both = right_class & right_colour
    measures = {"class": right_class, "colour": right_colour, "both": both}
    groups = {"seen": ~held_out, "held_out": held_out}
    figures = {name: {k: v[mask].float().mean().item() for k, v in measures.items()} for name, mask in groups.items()}
    figures["held_out_over_seen"] = figures["held_out"]["both"] / max(figures["seen"]["both"], 1e-9)
    return figures


def measure_draws(images, prompted, dataset, references, real_distances, train):
    """Both judges' figures, zero-shot figures (coloured data) and the near-copy share for one set of images."""
    labels, colours = prompted
    figures, reads = {}, {}
    for name, judge in references.items():
        figures[name], reads[name] = judge.measure(images, labels)
    if dataset.channels == 3:
        held_out = held_out_mask(dataset)[concept_index(dataset, labels, colours)]
        right_colour = stroke_colour(images, dataset) == colours
        figures["zero_shot"] = {j: zero_shot(reads[j] == labels, right_colour, held_out) for j in references}
    return figures | near_copies(images, labels, real_distances, train)


def near_copies(images, labels, real_distances, train):
    """Share of images nearer their nearest training image than all but NEAR_COPY_PERCENTILE of the
    real references are (real_distances (M,)), and the images' median distance to training."""
    threshold = real_distances.quantile(NEAR_COPY_PERCENTILE)
    distances = nearest_training_distance(images, labels, *train)
    return {
        "near_copies": (distances < threshold).float().mean().item(),
        "median_training_distance": distances.median().item(),
    }


def load_data(args, dataset, size):
    """(training images, the split's images), each (grey images, labels)."""
    training, validation = load_train_and_validation(dataset.source, args.data_dir, size)
    if args.split == "validation":
        return training, validation
    return training, load_images(dataset.source, args.test_data_dir or args.data_dir, False, size)


@torch.no_grad()
def reranker_retrieval(reranker, split_images, split_labels, dataset, device):
    """Share of real images (shown in every colour, for coloured data) whose concept the reranker reads
    right, over seen and over held-out concepts."""
    held_out, right = held_out_mask(dataset), []
    concepts = []
    for c in range(len(dataset.colours)):
        shown = colourise(split_images, torch.full((len(split_images),), c), dataset)
        probabilities = torch.cat(
            [reranker.concept_probabilities(to_float(x).to(device)).cpu() for x in shown.split(1000)]
        )
        concept = concept_index(dataset, split_labels, torch.full_like(split_labels, c))
        right.append(probabilities.argmax(1) == concept)
        concepts.append(concept)
    right, concepts = torch.cat(right), torch.cat(concepts)
    figures = {"seen": right[~held_out[concepts]].float().mean().item()}
    if held_out.any():
        figures["held_out"] = right[held_out[concepts]].float().mean().item()
    return figures


def measure(args):
    device = pick_device(args.device)
    resolve_precision(args.precision, device)  # refuses bf16 where it cannot run
    trained = load_dall_e(args.dall_e_checkpoint, need_reranker=args.candidates > 1, device=device)
    model, dvae, tokenizer, dataset = trained.model, trained.dvae, trained.tokenizer, trained.dataset
    check_sampling_args(args, dvae.config.codebook_size)
    check_request_fits(4 * args.samples, sampling_rows(args, args.samples), model, dvae)  # 4 sets of images kept
    train, split = load_data(args, dataset, dvae.config.image_size)
    if isinstance(dataset, SceneDataset):
        scenes = measure_scenes(trained, train, split, args, split_seed(args), partial(generate, trained, args=args))
        return scenes | {"dataset": dataset.name, "split": args.split, "sampling_seed": split_seed(args)}
    per_concept = max(1, args.samples // len(dataset.concepts))
    prompts, concepts = sample_prompts(dataset, per_concept, split_seed(args))
    samples = len(prompts)
    prompted = (concepts // len(dataset.colours), concepts % len(dataset.colours))  # (labels, colours)
    pick = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(1))[:samples]
    other = train[0][pick]  # other real images, for the floor and the dVAE's reference
    shown, _ = in_training_colours(dataset, other, train[1][pick], torch.Generator().manual_seed(2))
    reconstructions = reconstruct(dvae, shown, device)
    judge_dir = Path(args.judge_dir) / dataset.source
    references = {
        name: JudgeReferences(
            load_or_train_judge(judge_dir, name, *train, device), split, other, reconstructions, samples, device
        )
        for name in JUDGES
    }
    seen_split, colours = shown_split(dataset, split[0], split[1])
    # near-copies: samples are dVAE decodes, so the reference distances are those of decodes of real split
    # images (raw digits are sharper, and a blurred copy of a training digit would not count as one)
    split_decoded = reconstruct(dvae, seen_split[:samples], device)
    real_distances = nearest_training_distance(split_decoded, split[1][:samples], *train)

    text = encode_prompts(tokenizer, prompts)
    images, seconds = generate(trained, text, args)
    draws = {"1": measure_draws(images, prompted, dataset, references, real_distances, train)}
    reranker_accuracy, reranked_seconds = None, None
    if args.candidates > 1:
        kept, reranked_seconds = generate(trained, text, args, args.candidates)
        draws[str(args.candidates)] = measure_draws(kept, prompted, dataset, references, real_distances, train)
        reranker_accuracy = reranker_retrieval(
            trained.reranker, split[0][:samples], split[1][:samples], dataset, device
        )

    captions = caption_table(dataset, tokenizer)
    split_text = captions[concept_index(dataset, split[1], colours), 0].to(device)
    codes = encode_in_batches(dvae, seen_split, device).to(device)
    return {
        "dataset": dataset.name,
        "split": args.split,
        "sampling_seed": split_seed(args),
        "draws": draws,
        "judges": {name: reference.references() for name, reference in references.items()},
        "real_median_training_distance": real_distances.median().item(),
        "bits_per_image_token": heldout_losses(model, split_text, codes)["image_loss"] / math.log(2),
        "dvae": reconstruction_metrics(dvae, seen_split, device),
        "codebook_size": dvae.config.codebook_size,
        "reranker_accuracy": reranker_accuracy,
        "samples": samples,
        "sampling_images_per_second": samples / seconds,
        "reranked_images_per_second": samples / reranked_seconds if args.candidates > 1 else None,
        "split_images": len(split[0]),
    }


def draw_rows(label, d, judges):
    rows = [(f"prompt accuracy, {label}", " ".join(f"judge {j} {d[j]['prompt_accuracy']:.1%}" for j in JUDGES))]
    per_class = d["A"]["prompt_accuracy_per_class"].items()
    rows.append(("  per class (judge A)", " ".join(f"{k}:{a:.0%}" for k, a in per_class)))
    for name, z in d.get("zero_shot", {}).items():
        rows.append(
            (
                f"  zero-shot (judge {name})",
                " ".join(f"{g} class {z[g]['class']:.1%} colour {z[g]['colour']:.1%} both {z[g]['both']:.1%};"
                         for g in ("seen", "held_out")) + f" held-out/seen {z['held_out_over_seen']:.2f}",
            )
        )  # fmt: skip
    for j in JUDGES:
        r = judges[j]
        rows.append(
            (
                f"judge {j} FID, {label}",
                f"{d[j]['fid']:.3g} = {d[j]['fid_over_floor']:.2f}x floor {r['fid_floor']:.3g}, "
                f"{d[j]['fid_over_dvae']:.2f}x dVAE recon. {r['fid_dvae_reconstructions']:.3g}",
            )
        )
    unsure = " ".join(f"judge {j} {d[j]['unsure']:.1%} (real {judges[j]['unsure_on_real']:.1%})" for j in JUDGES)
    rows.append((f"unsure, {label}", unsure))
    copies = f"{d['near_copies']:.1%} (median distance to training {d['median_training_distance']:.2f})"
    rows.append((f"near-copies, {label}", copies))
    return rows


def print_table(m):
    rows = []
    for candidates, d in m["draws"].items():
        rows += draw_rows("one draw" if candidates == "1" else f"first of {candidates}", d, m["judges"])
    a = m["judges"]["A"]
    rows += [
        (
            "real images",
            f"median distance to training {m['real_median_training_distance']:.2f}; "
            f"FID: sets of {a['fid_compared_size']} against {a['fid_reference_size']} real",
        ),
        ("bits per image token", f"{m['bits_per_image_token']:.3f} on {m['split_images']:,} {m['split']} images"),
        ("dVAE MSE", f"{m['dvae']['mse']:.5f}"),
        (
            "dVAE codes used",
            f"{m['dvae']['codes_used']}/{m['codebook_size']}, perplexity {m['dvae']['perplexity']:.1f}",
        ),
        ("judge accuracy", " ".join(f"{j} {m['judges'][j]['accuracy_on_real']:.2%}" for j in JUDGES) + " on real"),
    ]
    if m["reranker_accuracy"] is not None:
        retrieval = " ".join(f"{group} {share:.2%}" for group, share in m["reranker_accuracy"].items())
        rows.append(("reranker retrieval", f"{retrieval} of real images"))
    speed = f"{m['sampling_images_per_second']:.0f} images/s, one draw each (batch of up to {m['batch_size']})"
    if m["reranked_images_per_second"] is not None:
        speed += f"; {m['reranked_images_per_second']:.0f} images/s reranked"
    rows.append(("sampling speed", speed))
    print_rows(rows)


def main():
    args = parse_args()
    check_output_dir(args.output_dir)  # before any work: the figures are written at the end
    settings = {
        "batch_size": args.batch_size,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "guidance": args.guidance,
        "precision": args.precision,
        "candidates": args.candidates,
        "checkpoint": str(args.dall_e_checkpoint),
    }
    metrics = measure(args) | settings
    output_dir = Path(args.output_dir)
    write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"{metrics['dataset']}, {args.split} split")
    (print_scene_table if metrics["dataset"] == SCENES.name else print_table)(metrics)
    for name, judge in metrics["judges"].items():
        if judge["accuracy_on_real"] < JUDGE_MIN_ACCURACY:
            print(
                f"warning: judge {name} reads only {judge['accuracy_on_real']:.1%} of real images right; "
                f"its verdicts mean little below {JUDGE_MIN_ACCURACY:.0%}"
            )
    print(f"wrote {output_dir / 'metrics.json'}")


if __name__ == "__main__":
    run_main(main)
