"""Speed figures for the default models on this device; prints a table, writes OUTPUT_DIR/bench.json.

    python benchmark.py
    python benchmark.py --compare ../old_checkout     # the same figures from another checkout, and the ratios
    python benchmark.py --settings_of output/dall_e/latest.pt   # images/s of each sampling setting

Measures, with freshly initialised models of the experiment's sizes (speed does not depend on
the weights): the machine (CPU name, bf16 support, float32 and bf16 matmul peaks); dVAE training
images/s; transformer training tokens/s and the FLOP/s it achieves as a share of the float32 peak;
sampling images/s (tokens and dVAE decoding) with and without the KV cache, at batch 1 and at
--large_batch, and with classifier-free guidance at --large_batch; peak memory. Training and
sampling run at --precision (auto: bf16 where the device computes it fast).

--compare REF runs REF/benchmark.py first, in its own folder and process, then this one, on
the same machine minutes apart, and prints both with the ratio this / REF: speed claims are
ratios measured side by side, never absolute times from another day or machine.
With --profile it also prints where dVAE training and one cached sampling run at --large_batch
spend their time, by operation, from torch.profiler.
"""

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from captions import DATASETS, encode_prompts
from checkpoints import load_dall_e
from config import load_config
from dall_e import DallE
from device import fast_bf16, pick_device, precision_context, resolve_precision
from dvae import DiscreteVAE
from errors import ArgumentParser, UserError, run_main
from files import check_output_dir, write_text
from flags import GUIDANCE_RANGE, SAMPLING_TEMPERATURE, add_precision_flag
from memory import check_request_fits
from sampling import sample_in_batches
from summarize import print_rows
from tokenizer import Tokenizer


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config_path", help="an experiment YAML (default: none, config.py's recipe)")
    parser.add_argument(
        "--large_batch",
        type=int,
        default=1024,
        between=(2, 10**6, "a batch larger than one, to time guided sampling"),
        help="the large sampling batch (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        between=(1, 10**6, "at least one step to time"),
        help="timed training steps per model (default: %(default)s)",
    )
    parser.add_argument("--output_dir", default="output/bench", help="default: %(default)s")
    parser.add_argument("--device", default="auto", help="default: %(default)s")
    parser.add_argument("--profile", action="store_true", help="also profile dVAE training and sampling")
    parser.add_argument(
        "--guidance",
        type=float,
        default=3.0,
        between=GUIDANCE_RANGE,
        help="the guided sampling's scale (default: %(default)s)",
    )
    parser.add_argument(
        "--compare", metavar="REF", help="a checkout of this project to measure first, side by side (optional)"
    )
    parser.add_argument(
        "--settings_of",
        metavar="CHECKPOINT",
        help="instead: images/s of each sampling setting of the README's table, on this trained DALL-E, for "
        "--large_batch prompts at once (optional)",
    )
    add_precision_flag(parser)
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


def matmul_peak(device, dtype=torch.float32, size=2048):
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / timed(lambda: a @ b, device, repeats=10)


def machine(device):
    """What the figures were measured on."""
    if device.type == "cuda":
        return {"name": torch.cuda.get_device_name(device), "fast_bf16": fast_bf16(device)}
    capabilities = torch.cpu.get_capabilities() if device.type == "cpu" else {}
    flags = [f for f in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if capabilities.get(f)]
    name = capabilities.get("cpu_name", device.type)
    return {"name": f"{name}, {capabilities.get('num_physical_cores', '?')} cores, flags {' '.join(flags) or 'none'}",
            "fast_bf16": fast_bf16(device)}  # fmt: skip


def train_speed(model, batch_fn, device, steps, precision):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with precision_context(precision, device):
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


def profiled(work, device, rows=10):
    """torch.profiler's table of the operations work() spends most time in."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        work()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=key, row_limit=rows)


def sampling_speeds(model, dvae, prompts, device, precision, guidance):
    """Images/s for one prompt batch: cached, uncached, and (at large batches) guided, at --precision
    as the scripts sample (auto: bf16 for large batches on fast-bf16 devices)."""
    batch = len(prompts)
    settings = {"cache": {}, "no_cache": {"use_cache": False}}
    if batch > 1:
        settings["guided"] = {"guidance": guidance}
    figures = {}
    for name, options in settings.items():
        work = lambda: sample_in_batches(model, dvae, prompts, batch, precision=precision, **options)  # noqa: E731
        seconds = timed(work, device, 3 if batch == 1 else 1, 1)
        figures[f"sampling_images_per_s_batch{'1' if batch == 1 else '_large'}_{name}"] = batch / seconds
    return figures


def measure(args):
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    config = load_config(args.config_path)
    figures = {"device": str(device), "threads": torch.get_num_threads(), "precision": precision} | {
        f"machine_{key}": value for key, value in machine(device).items()
    }
    bar = tqdm(total=6, desc="benchmark")
    figures["matmul_peak_flops"] = matmul_peak(device)
    # bf16 only where it is fast: emulated, one 2048x2048 bf16 matmul took 60 s on an AVX2-only CPU
    figures["matmul_peak_flops_bf16"] = matmul_peak(device, torch.bfloat16) if fast_bf16(device) else None
    bar.update()

    dvae = DiscreteVAE(config.dvae).to(device)
    b = config.train_dvae.batch_size
    images = torch.rand(b, config.dvae.channels, config.dvae.image_size, config.dvae.image_size, device=device)
    seconds = train_speed(dvae, lambda: (images, 0.5, 1.0), device, args.steps, precision)
    figures["dvae_train_images_per_s"] = b / seconds
    if args.profile:
        five_steps = profiled(lambda: train_speed(dvae, lambda: (images, 0.5, 1.0), device, 5, precision), device)
        profiles = {"dVAE training, 5 steps": five_steps}
    bar.update()

    tokenizer = Tokenizer(DATASETS["mnist"].words(), config.dall_e.text_length)
    model = DallE(config.dall_e, config.dvae, tokenizer.vocab_size).to(device)
    b, n = config.train_dall_e.batch_size, config.dvae.grid_size**2
    text = torch.randint(0, len(tokenizer.words), (b, config.dall_e.text_length), device=device)
    codes = torch.randint(0, config.dvae.codebook_size, (b, n), device=device)
    seconds = train_speed(model, lambda: (text, codes), device, args.steps, precision)
    tokens = b * (config.dall_e.text_length + n - 1)
    figures["transformer_train_tokens_per_s"] = tokens / seconds
    figures["transformer_train_flops"] = tokens * transformer_flops_per_token(model, (tokens // b) / 2) / seconds
    figures["transformer_share_of_peak"] = figures["transformer_train_flops"] / figures["matmul_peak_flops"]
    bar.update()

    model.eval(), dvae.eval()
    check_request_fits(args.large_batch, 2 * args.large_batch, model, dvae)  # guided: two rows per image
    for batch in (1, args.large_batch):
        prompts = torch.randint(0, len(tokenizer.words), (batch, config.dall_e.text_length), device=device)
        figures |= sampling_speeds(model, dvae, prompts, device, args.precision, args.guidance)
        bar.update()
    bar.close()
    figures["guided_cost"] = (
        figures["sampling_images_per_s_batch_large_cache"] / figures["sampling_images_per_s_batch_large_guided"]
    )
    if args.profile:  # prompts: the large batch, from the last turn of the loop above
        batch = len(prompts)
        sampled = profiled(lambda: sample_in_batches(model, dvae, prompts, batch, precision=args.precision), device)
        profiles[f"sampling, batch {len(prompts)}"] = sampled
        for name, table in profiles.items():
            print(f"{name}:\n{table}")
    figures["large_batch"] = args.large_batch
    figures["guidance"] = args.guidance
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
        ("device", f"{f['device']} ({f['threads']} threads), precision {f['precision']}"),
        ("machine", f"{f['machine_name']}; fast bf16: {'yes' if f['machine_fast_bf16'] else 'no'}"),
        (
            "matmul peak",
            f"{f['matmul_peak_flops'] / 1e9:.1f} GFLOP/s fp32, "
            + (
                f"{bf16 / 1e9:.1f} bf16"
                if (bf16 := f["matmul_peak_flops_bf16"])
                else "bf16 not measured (not fast here)"
            ),
        ),
        ("dVAE training", f"{f['dvae_train_images_per_s']:.0f} images/s"),
        (
            "transformer training",
            f"{f['transformer_train_tokens_per_s']:,.0f} tokens/s, "
            f"{f['transformer_train_flops'] / 1e9:.1f} GFLOP/s = {f['transformer_share_of_peak']:.0%} of fp32 peak",
        ),
        (
            "sampling, batch 1",
            f"{f['sampling_images_per_s_batch1_cache']:.1f} images/s with KV cache, "
            f"{f['sampling_images_per_s_batch1_no_cache']:.1f} without",
        ),
        (
            f"sampling, batch {large}",
            f"{f['sampling_images_per_s_batch_large_cache']:.0f} images/s with KV cache, "
            f"{f['sampling_images_per_s_batch_large_no_cache']:.0f} without; guided (S={f['guidance']}) "
            f"{f['sampling_images_per_s_batch_large_guided']:.0f}, {f['guided_cost']:.2f}x the time",
        ),
        ("peak memory", f"{f['peak_memory_bytes'] / 2**20:.0f} MiB"),
    ]
    print_rows(rows)


COMPARED = (  # (figure, what it is); higher is better for each
    ("dvae_train_images_per_s", "dVAE training, images/s"),
    ("transformer_train_tokens_per_s", "transformer training, tokens/s"),
    ("sampling_images_per_s_batch1_cache", "sampling batch 1, images/s"),
    ("sampling_images_per_s_batch_large_cache", "sampling large batch, images/s"),
    ("sampling_images_per_s_batch_large_no_cache", "sampling large batch, no cache"),
)


def measure_reference(reference, args):
    """Run REF/benchmark.py in its own folder and process with the same sizes; its bench.json figures."""
    script = Path(reference) / "benchmark.py"
    if not script.is_file():
        raise UserError(f"--compare {reference}: no benchmark.py there; give a checkout of this project")
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(script.resolve()), "--output_dir", folder, "--device", args.device,
                   "--steps", str(args.steps), "--large_batch", str(args.large_batch)]  # fmt: skip
        print(f"measuring the reference: {' '.join(command)}", file=sys.stderr)
        done = subprocess.run(command, cwd=reference, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise UserError(f"--compare {reference}: its benchmark.py failed (exit {done.returncode})")
        return json.loads((Path(folder) / "bench.json").read_text())


def print_comparison(reference, figures, reference_path):
    rows = [("measured side by side", f"this checkout / {reference_path}, same machine, one run")]
    rows += [
        (what, f"{figures[key]:,.1f} / {reference[key]:,.1f} = {figures[key] / reference[key]:.2f}x")
        for key, what in COMPARED
        if key in figures and key in reference
    ]
    print_rows(rows)


SETTINGS = (  # (name, sample_in_batches options): README's sampling table
    ("plain, one draw", {}),
    *((f"guidance {g}, one draw", {"guidance": g}) for g in (1.5, 2.0, 3.0, 5.0)),
    *((f"top-p {p}, one draw", {"top_p": p}) for p in (0.8, 0.9, 0.95)),
    *((f"first of {c}", {"candidates": c}) for c in (4, 8, 16)),
    *((f"guidance {g}, first of 8", {"guidance": g, "candidates": 8}) for g in (1.5, 2.0)),
)


@torch.no_grad()
def settings_speed(checkpoint_path, device, precision, prompts):
    """Images/s of sample_in_batches for each of SETTINGS, on a trained checkpoint, `prompts` prompts in one batch."""
    trained = load_dall_e(checkpoint_path, need_reranker=True, device=device)
    captions = [trained.dataset.canonical(c) for c in trained.dataset.concepts]
    text = encode_prompts(trained.tokenizer, [captions[i % len(captions)] for i in range(prompts)])
    rows = []
    for name, options in SETTINGS:
        work = lambda: sample_in_batches(  # noqa: E731
            trained.model, trained.dvae, text, prompts, reranker=trained.reranker,
            temperature=SAMPLING_TEMPERATURE, precision=precision, **options,
        )  # fmt: skip
        rows.append((name, f"{len(text) / timed(work, device, repeats=1, warmup=0):.0f} images/s"))
    return rows


def main():
    args = parse_args()
    if args.settings_of:
        device = pick_device(args.device)
        print_rows(settings_speed(args.settings_of, device, args.precision, args.large_batch))
        return
    check_output_dir(args.output_dir)  # before minutes of measuring
    reference = measure_reference(args.compare, args) if args.compare else None
    figures = measure(args)
    output_dir = Path(args.output_dir)
    if reference:
        figures["reference"] = reference | {"path": str(args.compare)}
    write_text(output_dir / "bench.json", json.dumps(figures, indent=2) + "\n")
    print_table(figures)
    if reference:
        print_comparison(reference, figures, args.compare)
    print(f"wrote {output_dir / 'bench.json'}")


if __name__ == "__main__":
    run_main(main)
