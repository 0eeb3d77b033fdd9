"""Measure a trained DALL-E: does it draw the digit it is asked for, and how well?

    python evaluate.py --test_data_dir ../shared/mnist/raw

Prints a table and writes OUTPUT_DIR/metrics.json (default output/eval):
  prompt accuracy   share of generated digits the judge (judge.py) reads as the prompted digit,
                    over --samples_per_digit images per digit and spelling, overall and per digit;
  judge FID         Frechet distance between generated and held-out real digits in the judge's
                    feature space (not Inception FID), beside the real-vs-real floor;
                    both for single draws and for the best of --candidates draws (rerank.py),
                    and for real digits passed through the dVAE (the best the transformer could do);
  bits/image token  held-out cross-entropy of the transformer on real digits given their label;
  dVAE              held-out reconstruction MSE, codes used and codebook perplexity.
Held-out digits are MNIST's test split, from --test_data_dir (default: --data_dir).
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import (
    add_sampling_flags, check_sampling_args, dall_e_from_checkpoint, encode_prompts, load_checkpoint, pick_device,
    print_rows, reranker_from_checkpoint,
)
from dall_e import generate_images, heldout_losses
from data import load_mnist, to_float
from dvae import reconstruction_metrics
from errors import UserError, run_main
from judge import classify, frechet_distance, load_or_train_judge
from tokenizer import DIGITS, WORDS

JUDGE_MIN_ACCURACY = 0.98


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dall_e_checkpoint", default="output/dall_e/latest.pt", help="default: %(default)s")
    parser.add_argument("--data_dir", default="data", help="training digits, for the judge (default: %(default)s)")
    parser.add_argument("--test_data_dir", help="folder with MNIST's t10k-*-ubyte(.gz) files (default: --data_dir)")
    parser.add_argument("--samples_per_digit", type=int, default=100, help="per digit and spelling (default: %(default)s)")
    add_sampling_flags(parser, batch_size=1000)
    parser.add_argument("--output_dir", default="output/eval", help="default: %(default)s")
    parser.add_argument("--judge_path", default="output/judge/judge.pt", help="cached judge (default: %(default)s)")
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
            model, dvae, t, args.temperature, args.top_k, generator, reranker=reranker, candidates=candidates, keep=args.keep
        )
        images.append(drawn.cpu())
    return torch.cat(images), digits, time.perf_counter() - start


def judge_samples(judge, images, digits, real_features, device):
    """Prompt accuracy (overall, per digit, per spelling) and judge FID of generated images."""
    predicted, fake_features = classify(judge, images, device)
    correct = predicted == digits
    n = len(images)
    return {
        "prompt_accuracy": correct.float().mean().item(),
        "prompt_accuracy_per_digit": {str(d): correct[digits == d].float().mean().item() for d in range(10)},
        "prompt_accuracy_digits": correct[: n // 2].float().mean().item(),
        "prompt_accuracy_words": correct[n // 2 :].float().mean().item(),
        "judge_fid": frechet_distance(fake_features, real_features[:n]),
    }


def measure(args):
    device = pick_device(args.device)
    checkpoint = load_checkpoint(args.dall_e_checkpoint, "dall_e")
    model, dvae, tokenizer = dall_e_from_checkpoint(checkpoint)
    check_sampling_args(args, dvae.config.codebook_size)
    model.to(device), dvae.to(device)
    size, channels = dvae.config.image_size, dvae.config.channels
    test_images, test_labels = load_mnist(args.test_data_dir or args.data_dir, False, size, channels)
    judge = load_or_train_judge(args.judge_path, *load_mnist(args.data_dir, True, size, channels), device)
    judged, real_features = classify(judge, test_images, device)
    judge_accuracy = (judged == test_labels).float().mean().item()

    images, digits, seconds = generate_for_every_digit(model, dvae, tokenizer, args, device)
    draws, reranker_accuracy = {"1": judge_samples(judge, images, digits, real_features, device)}, None
    if args.candidates > 1:
        reranker = reranker_from_checkpoint(checkpoint, args.dall_e_checkpoint).to(device)
        best, _, _ = generate_for_every_digit(model, dvae, tokenizer, args, device, reranker, args.candidates)
        draws[str(args.candidates)] = judge_samples(judge, best, digits, real_features, device)
        with torch.no_grad():
            read = torch.cat([reranker.digit_probabilities(to_float(x).to(device)).argmax(1).cpu() for x in test_images.split(1000)])
        reranker_accuracy = (read == test_labels).float().mean().item()
    n = len(images)
    real_a, real_b = real_features[:n], real_features[n : 2 * n]
    with torch.no_grad():  # the floor's second set, through the dVAE: what a perfect transformer could reach
        recon = torch.cat([dvae.decode(dvae.encode(to_float(x).to(device))).cpu() for x in test_images[n : 2 * n].split(1000)])
    _, recon_features = classify(judge, recon, device)

    spelling = torch.arange(len(test_labels)) % 2
    text = encode_prompts(tokenizer, DIGITS + WORDS)[test_labels + 10 * spelling].to(device)
    codes = torch.cat([dvae.encode(to_float(x).to(device)).flatten(1) for x in test_images.split(1000)])
    with torch.no_grad():
        losses = heldout_losses(model, text, codes)
    return {
        "best_of": draws,
        "judge_fid_real_vs_real": frechet_distance(real_b, real_a) if len(real_b) == n else None,
        "judge_fid_dvae_reconstructions": frechet_distance(recon_features, real_a) if len(real_b) == n else None,
        "bits_per_image_token": losses["image_loss"] / math.log(2),
        "dvae": reconstruction_metrics(dvae, test_images, device),
        "judge_heldout_accuracy": judge_accuracy,
        "reranker_heldout_accuracy": reranker_accuracy,
        "samples": n,
        "sampling_images_per_second": n / seconds,
        "heldout_digits": len(test_images),
    }


def print_table(m, codebook_size):
    floor = m["judge_fid_real_vs_real"]
    rows = []
    for candidates, d in m["best_of"].items():
        draw = "one draw" if candidates == "1" else f"{m['keep']} of {candidates}"
        rows += [
            (f"prompt accuracy, {draw}", f"{d['prompt_accuracy']:.1%} of {m['samples']} samples "
                                         f"(digits {d['prompt_accuracy_digits']:.1%}, words {d['prompt_accuracy_words']:.1%})"),
            ("  per digit", " ".join(f"{k}:{a:.0%}" for k, a in d["prompt_accuracy_per_digit"].items())),
            (f"judge FID, {draw}", f"{d['judge_fid']:.2f}" + (f" (real vs real floor {floor:.2f}, ratio {d['judge_fid'] / floor:.2f}x)" if floor else "")),
        ]
    if floor:
        rows.append(("judge FID, dVAE recon.", f"{m['judge_fid_dvae_reconstructions']:.2f} (real digits through the dVAE: "
                                              f"ratio {m['judge_fid_dvae_reconstructions'] / floor:.2f}x)"))
    rows += [
        ("bits per image token", f"{m['bits_per_image_token']:.3f} on {m['heldout_digits']:,} held-out digits"),
        ("dVAE held-out MSE", f"{m['dvae']['mse']:.5f}"),
        ("dVAE codes used", f"{m['dvae']['codes_used']}/{codebook_size}, perplexity {m['dvae']['perplexity']:.1f}"),
        ("judge accuracy", f"{m['judge_heldout_accuracy']:.2%} on held-out real digits"),
    ]
    if m["reranker_heldout_accuracy"] is not None:
        rows.append(("reranker accuracy", f"{m['reranker_heldout_accuracy']:.2%} on held-out real digits"))
    rows.append(
        ("sampling speed", f"{m['sampling_images_per_second']:.0f} images/s, one draw each (batch of up to {m['batch_size']})")
    )
    print_rows(rows)


def main():
    args = parse_args()
    if args.samples_per_digit < 1:
        raise UserError(f"--samples_per_digit must be >= 1, got {args.samples_per_digit}")
    settings = {"keep": args.keep, "batch_size": args.batch_size, "checkpoint": str(args.dall_e_checkpoint)}
    metrics = measure(args) | settings
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    codebook_size = load_checkpoint(args.dall_e_checkpoint, "dall_e")["dvae"]["dvae_config"]["codebook_size"]
    print_table(metrics, codebook_size)
    if metrics["judge_heldout_accuracy"] < JUDGE_MIN_ACCURACY:
        print(f"warning: the judge reads only {metrics['judge_heldout_accuracy']:.1%} of real digits right; "
              f"its verdicts mean little below {JUDGE_MIN_ACCURACY:.0%}")
    print(f"wrote {output_dir / 'metrics.json'}")


if __name__ == "__main__":
    run_main(main)
