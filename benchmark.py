"""Speed figures for the default models on this device; prints a table, writes OUTPUT_DIR/bench.json.

    python benchmark.py

Measures, with freshly initialised models of the experiment's sizes (speed does not depend on
the weights): this machine's float32 matmul peak; dVAE training images/s; transformer training
tokens/s and the FLOP/s it achieves as a share of that peak; sampling images/s (tokens and dVAE
decoding) with and without the KV cache, at batch 1 and at --large_batch; peak memory.
With --profile it also prints where one cached sampling run at --large_batch spends its time,
by operation, from torch.profiler.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from captions import DATASETS
from common import pick_device, print_rows
from config import load_config
from dall_e import DallE
from dvae import DiscreteVAE
from errors import run_main
from sampling import generate_images
from tokenizer import Tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", help="an experiment YAML (default: none, config.py's recipe)")
    parser.add_argument("--large_batch", type=int, default=1024, help="the large sampling batch (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (default: %(default)s)")
    parser.add_argument("--output_dir", default="output/bench", help="default: %(default)s")
    parser.add_argument("--device", default="auto", help="default: %(default)s")
    parser.add_argument("--profile", action="store_true", help="also profile sampling at --large_batch")
    return parser.parse_args(argv)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats, warmup=2):
    """Seconds per call of fn(), after warmup calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def matmul_peak(device, size=2048):
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 / timed(lambda: a @ b, device, repeats=10)


def train_speed(model, batch_fn, device, steps):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = model(*batch_fn())["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed(step, device, steps)


def transformer_flops_per_token(model, context):
    """Training FLOPs per token: 6 per matmul weight (forward + backward), plus attention scores."""
    c = model.config
    weights = sum(
        p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n and "position" not in n
    )
    attention = 2 * 2 * c.n_layer * context * c.n_embd  # QK^T and AV, forward
    return 6 * weights + 3 * attention


def profile_sampling(model, dvae, prompts, device, rows=10):
    """torch.profiler's table of the operations one cached sampling run spends most time in."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        generate_images(model, dvae, prompts)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=key, row_limit=rows)


def measure(args):
    device = pick_device(args.device)
    config = load_config(args.config_path)
    figures = {"device": str(device), "threads": torch.get_num_threads()}
    bar = tqdm(total=6, desc="benchmark")
    figures["matmul_peak_flops"] = matmul_peak(device)
    bar.update()

    dvae = DiscreteVAE(config.dvae).to(device)
    b = config.train_dvae.batch_size
    images = torch.rand(b, config.dvae.channels, config.dvae.image_size, config.dvae.image_size, device=device)
    figures["dvae_train_images_per_s"] = b / train_speed(dvae, lambda: (images, 0.5, 1.0), device, args.steps)
    bar.update()

    tokenizer = Tokenizer(DATASETS["mnist"].words(), config.dall_e.text_length)
    model = DallE(config.dall_e, config.dvae, tokenizer.vocab_size).to(device)
    b, n = config.train_dall_e.batch_size, config.dvae.grid_size**2
    text = torch.randint(0, len(tokenizer.words), (b, config.dall_e.text_length), device=device)
    codes = torch.randint(0, config.dvae.codebook_size, (b, n), device=device)
    seconds = train_speed(model, lambda: (text, codes), device, args.steps)
    tokens = b * (config.dall_e.text_length + n - 1)
    figures["transformer_train_tokens_per_s"] = tokens / seconds
    figures["transformer_train_flops"] = tokens * transformer_flops_per_token(model, (tokens // b) / 2) / seconds
    figures["transformer_share_of_peak"] = figures["transformer_train_flops"] / figures["matmul_peak_flops"]
    bar.update()

    model.eval(), dvae.eval()
    for batch in (1, args.large_batch):
        prompts = torch.randint(0, len(tokenizer.words), (batch, config.dall_e.text_length), device=device)
        for use_cache in (True, False):
            repeats = 3 if batch == 1 else 1
            seconds = timed(
                lambda: generate_images(model, dvae, prompts, use_cache=use_cache), device, repeats, warmup=1
            )
            figures[
                f"sampling_images_per_s_batch{'1' if batch == 1 else '_large'}_{'cache' if use_cache else 'no_cache'}"
            ] = batch / seconds
        bar.update()
    bar.close()
    if args.profile:  # prompts: the large batch, from the last turn of the loop above
        print(profile_sampling(model, dvae, prompts, device))
    figures["large_batch"] = args.large_batch
    if device.type == "cuda":
        figures["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        figures["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
            1 if sys.platform == "darwin" else 1024
        )
    return figures


def print_table(f):
    large = f["large_batch"]
    rows = [
        ("device", f"{f['device']} ({f['threads']} threads)"),
        ("matmul peak (fp32)", f"{f['matmul_peak_flops'] / 1e9:.1f} GFLOP/s"),
        ("dVAE training", f"{f['dvae_train_images_per_s']:.0f} images/s"),
        (
            "transformer training",
            f"{f['transformer_train_tokens_per_s']:,.0f} tokens/s, "
            f"{f['transformer_train_flops'] / 1e9:.1f} GFLOP/s = {f['transformer_share_of_peak']:.0%} of peak",
        ),
        (
            "sampling, batch 1",
            f"{f['sampling_images_per_s_batch1_cache']:.1f} images/s with KV cache, "
            f"{f['sampling_images_per_s_batch1_no_cache']:.1f} without",
        ),
        (
            f"sampling, batch {large}",
            f"{f['sampling_images_per_s_batch_large_cache']:.0f} images/s with KV cache, "
            f"{f['sampling_images_per_s_batch_large_no_cache']:.0f} without",
        ),
        ("peak memory", f"{f['peak_memory_bytes'] / 2**20:.0f} MiB"),
    ]
    print_rows(rows)


def main():
    args = parse_args()
    figures = measure(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    print_table(figures)
    print(f"wrote {output_dir / 'bench.json'}")


if __name__ == "__main__":
    run_main(main)
