"""Measure a trained DALL-E: does it draw the digit it is asked for, how real does it look, and is
it copying its training digits?

    python evaluate.py                                             # validation split: choose settings here
    python evaluate.py --split test --test_data_dir ../shared/mnist/raw    # report once, at the end

Prints a table and writes OUTPUT_DIR/metrics.json (default output/eval). --samples_per_digit
images per digit and spelling are drawn once plainly and once reranked (--candidates), and each
set is measured by two independent judges (judge.py):
  prompt accuracy   share of generated digits the judge reads as the prompted digit;
  unsure            share the judge is unsure of (top class below 0.9), beside real digits' share;
  judge FID         Frechet distance to the split's real digits in the judge's features, beside
                    two references: the real-vs-real floor (other real digits, from the training
                    split) and the dVAE reconstructions of those digits (the best a transformer
                    could reach with this dVAE);
  near-copies       share of samples closer (pixel distance) to their nearest training digit of
                    the same class than 99% of real digits of the split are: memorisation.
Also: bits per image token on the split's real digits, the dVAE's reconstruction figures, the
reranker's accuracy on real digits and the sampling speed. The first run trains and caches the
two judges (a few minutes on a laptop CPU).
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import (
    add_sampling_flags,
    check_sampling_args,
    dall_e_from_checkpoint,
    encode_prompts,
    load_checkpoint,
    pick_device,
    print_rows,
    reranker_from_checkpoint,
)
from dall_e import heldout_losses
from data import load_mnist, load_train_and_validation, to_float
from dvae import reconstruction_metrics
from errors import UserError, run_main
from judge import JUDGES, classify, frechet_distance, load_or_train_judge, unsure_share
from sampling import generate_images
from tokenizer import DIGITS, WORDS

JUDGE_MIN_ACCURACY = 0.98
NEAR_COPY_PERCENTILE = 0.01


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dall_e_checkpoint", default="output/dall_e/latest.pt", help="default: %(default)s")
    parser.add_argument(
        "--split",
        choices=("validation", "test"),
        default="validation",
        help="validation (carved from the training digits) to choose settings, test to report (default: %(default)s)",
    )
    parser.add_argument("--data_dir", default="data", help="training digits (default: %(default)s)")
    parser.add_argument("--test_data_dir", help="folder with MNIST's t10k-*-ubyte(.gz) files (default: --data_dir)")
    parser.add_argument(
        "--samples_per_digit", type=int, default=100, help="per digit and spelling (default: %(default)s)"
    )
    add_sampling_flags(parser, batch_size=1000)
    parser.add_argument("--output_dir", default="output/eval", help="default: %(default)s")
    parser.add_argument(
        "--judge_dir", default="output/judge", help="where the judges are cached (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="default: %(default)s")
    return parser.parse_args(argv)


def generate_for_every_digit(model, dvae, tokenizer, args, device, reranker=None, candidates=1):
    """Images for every digit in both spellings: (N, C, S, S), their digits (N,), seconds spent."""
    prompts = [p for p in DIGITS + WORDS for _ in range(args.samples_per_digit)]
    digits = torch.arange(10).repeat_interleave(args.samples_per_digit).repeat(2)
    text = encode_prompts(tokenizer, prompts).to(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    images = []
    for t in text.split(max(1, args.batch_size // candidates)):
        drawn = generate_images(
            model,
            dvae,
            t,
            args.temperature,
            args.top_k,
            generator,
            reranker=reranker,
            candidates=candidates,
            keep=args.keep,
        )
        images.append(drawn.cpu())
    return torch.cat(images), digits, time.perf_counter() - start


def nearest_training_distance(images, labels, train_images, train_labels):
    """(N,) pixel (L2) distance from each image in [0, 1] to the nearest training digit of its class."""
    distances = torch.full((len(images),), float("inf"))  # inf where the class has no training digit
    for d in range(10):
        mine, theirs = labels == d, to_float(train_images[train_labels == d]).flatten(1)
        if mine.any() and len(theirs):
            distances[mine] = torch.cdist(images[mine].float().flatten(1), theirs).min(dim=1).values
    return distances


class Instrument:
    """One judge and its references on the split.

    Every FID compares a set as large as the samples (generated digits; other real digits, from
    the training split; their dVAE reconstructions) with the same reference set: the first
    `reference_size` digits of the split. FID is biased upwards at small set sizes, so figures
    compare only at equal sizes (the validation split offline has 500 digits, the test split 10,000).
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

    def measure(self, images, digits):
        """Prompt accuracy (overall, per digit, per spelling), unsure share and FID of generated images."""
        probabilities, features = classify(self.judge, images, self.device)
        correct = probabilities.argmax(1) == digits
        n = len(images)
        fid = frechet_distance(features, self.real)
        return {
            "prompt_accuracy": correct.float().mean().item(),
            "prompt_accuracy_per_digit": {str(d): correct[digits == d].float().mean().item() for d in range(10)},
            "prompt_accuracy_digits": correct[: n // 2].float().mean().item(),
            "prompt_accuracy_words": correct[n // 2 :].float().mean().item(),
            "unsure": unsure_share(probabilities),
            "fid": fid,
            "fid_over_floor": fid / self.floor,
            "fid_over_dvae": fid / self.reconstructions,
        }

    def references(self):
        return {
            "accuracy_on_real": self.accuracy,
            "unsure_on_real": self.unsure,
            "fid_floor": self.floor,
            "fid_dvae_reconstructions": self.reconstructions,
            "fid_reference_size": len(self.real),
            "fid_compared_size": self.compared,
        }


def load_data(args, size, channels):
    """(training digits, the split's digits), each (images, labels)."""
    training, validation = load_train_and_validation(args.data_dir, size, channels)
    if args.split == "validation":
        return training, validation
    return training, load_mnist(args.test_data_dir or args.data_dir, False, size, channels)


def measure_draws(images, digits, instruments, real_distances, train):
    """Both judges' figures and the near-copy share for one set of generated images."""
    threshold = real_distances.quantile(NEAR_COPY_PERCENTILE)
    distances = nearest_training_distance(images, digits, *train)
    return {name: judge.measure(images, digits) for name, judge in instruments.items()} | {
        "near_copies": (distances < threshold).float().mean().item(),
        "median_training_distance": distances.median().item(),
    }


def measure(args):
    device = pick_device(args.device)
    checkpoint = load_checkpoint(args.dall_e_checkpoint, "dall_e")
    model, dvae, tokenizer = dall_e_from_checkpoint(checkpoint)
    check_sampling_args(args, dvae.config.codebook_size)
    model.to(device), dvae.to(device)
    train, split = load_data(args, dvae.config.image_size, dvae.config.channels)
    samples = 20 * args.samples_per_digit  # every digit in both spellings
    split_images = split[0][:samples]
    other = train[0][torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(1))][:samples]
    reconstructions = torch.cat([dvae.decode(dvae.encode(to_float(x).to(device))).cpu() for x in other.split(1000)])
    instruments = {
        name: Instrument(
            load_or_train_judge(args.judge_dir, name, *train, device), split, other, reconstructions, samples, device
        )
        for name in JUDGES
    }
    real_distances = nearest_training_distance(to_float(split_images), split[1][: len(split_images)], *train)

    images, digits, seconds = generate_for_every_digit(model, dvae, tokenizer, args, device)
    draws, reranker_accuracy = {"1": measure_draws(images, digits, instruments, real_distances, train)}, None
    if args.candidates > 1:
        reranker = reranker_from_checkpoint(checkpoint, args.dall_e_checkpoint).to(device)
        kept, _, _ = generate_for_every_digit(model, dvae, tokenizer, args, device, reranker, args.candidates)
        draws[str(args.candidates)] = measure_draws(kept, digits, instruments, real_distances, train)
        with torch.no_grad():
            read = torch.cat(
                [reranker.digit_probabilities(to_float(x).to(device)).argmax(1).cpu() for x in split[0].split(1000)]
            )
        reranker_accuracy = (read == split[1]).float().mean().item()

    spelling = torch.arange(len(split[1])) % 2
    text = encode_prompts(tokenizer, DIGITS + WORDS)[split[1] + 10 * spelling].to(device)
    codes = torch.cat([dvae.encode(to_float(x).to(device)).flatten(1) for x in split[0].split(1000)])
    return {
        "split": args.split,
        "draws": draws,
        "judges": {name: instrument.references() for name, instrument in instruments.items()},
        "real_median_training_distance": real_distances.median().item(),
        "bits_per_image_token": heldout_losses(model, text, codes)["image_loss"] / math.log(2),
        "dvae": reconstruction_metrics(dvae, split[0], device),
        "reranker_accuracy": reranker_accuracy,
        "samples": len(images),
        "sampling_images_per_second": len(images) / seconds,
        "split_digits": len(split[0]),
    }


def draw_rows(label, d, judges):
    rows = [(f"prompt accuracy, {label}", " ".join(f"judge {j} {d[j]['prompt_accuracy']:.1%}" for j in JUDGES))]
    rows.append(
        ("  per digit (judge A)", " ".join(f"{k}:{a:.0%}" for k, a in d["A"]["prompt_accuracy_per_digit"].items()))
    )
    for j in JUDGES:
        r = judges[j]
        rows.append(
            (
                f"judge {j} FID, {label}",
                f"{d[j]['fid']:.2f} = {d[j]['fid_over_floor']:.2f}x floor {r['fid_floor']:.2f}, "
                f"{d[j]['fid_over_dvae']:.2f}x dVAE recon. {r['fid_dvae_reconstructions']:.2f}",
            )
        )
    rows.append(
        (
            f"unsure, {label}",
            " ".join(f"judge {j} {d[j]['unsure']:.1%} (real {judges[j]['unsure_on_real']:.1%})" for j in JUDGES),
        )
    )
    rows.append(
        (
            f"near-copies, {label}",
            f"{d['near_copies']:.1%} (median distance to training {d['median_training_distance']:.2f})",
        )
    )
    return rows


def print_table(m, codebook_size):
    rows = []
    for candidates, d in m["draws"].items():
        rows += draw_rows("one draw" if candidates == "1" else f"{m['keep']} of {candidates}", d, m["judges"])
    rows += [
        (
            "real digits",
            f"median distance to training {m['real_median_training_distance']:.2f}; "
            f"FID: sets of {m['judges']['A']['fid_compared_size']} against "
            f"{m['judges']['A']['fid_reference_size']} real",
        ),
        ("bits per image token", f"{m['bits_per_image_token']:.3f} on {m['split_digits']:,} {m['split']} digits"),
        ("dVAE MSE", f"{m['dvae']['mse']:.5f}"),
        ("dVAE codes used", f"{m['dvae']['codes_used']}/{codebook_size}, perplexity {m['dvae']['perplexity']:.1f}"),
        (
            "judge accuracy",
            " ".join(f"{j} {m['judges'][j]['accuracy_on_real']:.2%}" for j in JUDGES) + " on real digits",
        ),
    ]
    if m["reranker_accuracy"] is not None:
        rows.append(("reranker accuracy", f"{m['reranker_accuracy']:.2%} on real digits"))
    rows.append(
        (
            "sampling speed",
            f"{m['sampling_images_per_second']:.0f} images/s, one draw each (batch of up to {m['batch_size']})",
        )
    )
    print_rows(rows)


def main():
    args = parse_args()
    if args.samples_per_digit < 1:
        raise UserError(f"--samples_per_digit must be >= 1, got {args.samples_per_digit}")
    settings = {
        "keep": args.keep,
        "batch_size": args.batch_size,
        "temperature": args.temperature,
        "candidates": args.candidates,
        "checkpoint": str(args.dall_e_checkpoint),
    }
    metrics = measure(args) | settings
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    codebook_size = load_checkpoint(args.dall_e_checkpoint, "dall_e")["dvae"]["dvae_config"]["codebook_size"]
    print(f"{args.split} split")
    print_table(metrics, codebook_size)
    for name, judge in metrics["judges"].items():
        if judge["accuracy_on_real"] < JUDGE_MIN_ACCURACY:
            print(
                f"warning: judge {name} reads only {judge['accuracy_on_real']:.1%} of real digits right; "
                f"its verdicts mean little below {JUDGE_MIN_ACCURACY:.0%}"
            )
    print(f"wrote {output_dir / 'metrics.json'}")


if __name__ == "__main__":
    run_main(main)
