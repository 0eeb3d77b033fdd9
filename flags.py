"""The command-line flags the scripts share, their defaults and their checks.

Each script builds its own argparse parser from these groups, so a flag means the same in every
script: the dataset and folders, training length and resume, device and precision, and how
images are sampled and reranked.
"""

from config import MAX_SEED
from dataset_index import DATASETS
from device import PRECISIONS
from errors import UserError, shorten

# Sampling defaults (docs/experiments.md, sampling settings): reranking filters out wrong digits, so the
# transformer can sample above temperature 1 and give the reranker a wider choice.
SAMPLING_TEMPERATURE = 1.3
CANDIDATES = 8
GUIDANCE = 1.0
MAX_CANDIDATES = 512  # the paper's largest number of draws per caption

# Ranges of numeric flags (errors.ArgumentParser's between=): a value outside is one line, before any work.
SEED_RANGE = (0, MAX_SEED, "what per-step seeds are computed from")
COUNT_RANGE = (1, 10**9, "more than one request can hold")
GUIDANCE_RANGE = (0, 20, "larger scales push the logits to extremes")
SAMPLING_RANGES = {
    "candidates": (1, MAX_CANDIDATES, "the paper's most"),
    "temperature": (0.1, 10, "below, every draw is the likeliest code; above, noise"),
    "top_p": (0.01, 1, "a share of the probability"),
    "guidance": GUIDANCE_RANGE,
    "seed": SEED_RANGE,
    "batch_size": COUNT_RANGE,
}


def add_dataset_flag(parser):
    parser.add_argument(
        "--dataset", help=f"{', '.join(DATASETS)} (default: the checkpoint's where there is one, else mnist)"
    )


def add_common_flags(parser, output_dir):
    """The trainers' flags: dataset, config, folders, device, seed, overrides."""
    add_dataset_flag(parser)
    parser.add_argument(
        "--config_path",
        help="an experiment YAML holding only what it changes (default: configs/DATASET.yaml where there is one, "
        "else none: config.py's recipe)",
    )
    parser.add_argument("--data_dir", default="data", help="where images are read or downloaded (default: %(default)s)")
    parser.add_argument("--output_dir", default=output_dir, help="where outputs are written (default: %(default)s)")
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        between=SEED_RANGE,
        help="random seed; it fixes the batch order (default: 0, or the resumed run's)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set dvae.codebook_size=64 (repeatable)",
    )


def add_split_flags(parser, split_help):
    """Which held-out digits an instrument reads: --split, and where the training and test files are."""
    parser.add_argument(
        "--split", choices=("validation", "test"), default="validation", help=f"{split_help} (default: %(default)s)"
    )
    parser.add_argument("--data_dir", default="data", help="training images (default: %(default)s)")
    parser.add_argument("--test_data_dir", help="folder with the t10k-*-ubyte(.gz) files (default: --data_dir)")


def add_training_flags(parser):
    parser.add_argument("--num_training_steps", type=int, help="training steps (default: from the config)")
    parser.add_argument(
        "--batch_size", type=int, help="global batch size, split across processes (default: from the config)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR/latest.pt to the same final step"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --output_dir that holds a run, replacing its files (without it, that is refused)",
    )
    add_precision_flag(parser)


def add_precision_flag(parser):
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="bf16 autocast or plain float32; auto: bf16 where the device computes it fast (a CPU with "
        "AVX-512 BF16 or AMX, a CUDA GPU with bf16), else fp32 (default: %(default)s)",
    )


def add_sampling_flags(parser, batch_size):
    """Flags shared by generate_mnist.py and evaluate.py: how images are drawn and reranked."""
    parser.add_argument(
        "--candidates",
        type=int,
        default=CANDIDATES,
        between=SAMPLING_RANGES["candidates"],
        help="draws per image; the first the reranker accepts is kept (paper 2.3; 1 turns it off; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=SAMPLING_TEMPERATURE,
        between=SAMPLING_RANGES["temperature"],
        help="softmax temperature (default: %(default)s)",
    )
    parser.add_argument("--top_k", type=int, help="sample among the k most likely codes (default: all)")
    parser.add_argument(
        "--top_p",
        type=float,
        between=SAMPLING_RANGES["top_p"],
        help="nucleus sampling: the fewest codes holding this much probability (default: all)",
    )
    add_guidance_flag(parser, GUIDANCE)
    parser.add_argument("--seed", type=int, default=0, between=SEED_RANGE, help="default: %(default)s")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=batch_size,
        between=COUNT_RANGE,
        help="images sampled at once (default: %(default)s)",
    )
    add_precision_flag(parser)


def add_guidance_flag(parser, default):
    parser.add_argument(
        "--guidance",
        type=float,
        default=default,
        between=GUIDANCE_RANGE,
        help="classifier-free guidance scale S: uncond + S * (cond - uncond); 1 is plain sampling "
        "(default: %(default)s)",
    )


def check_sampling_args(args, codebook_size):
    """The sampling settings' ranges, for callers that do not come through the parser (demo.py), and the
    one that depends on the checkpoint: top_k."""
    for name, (lowest, highest, why) in SAMPLING_RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not lowest <= value <= highest:  # nan fails too
            raise UserError(f"{name} must be between {lowest:,} and {highest:,} ({why}), got {shorten(value)}")
    if args.top_k is not None and not 1 <= args.top_k <= codebook_size:
        raise UserError(f"--top_k must be between 1 and the codebook size {codebook_size}, got {shorten(args.top_k)}")


def sampling_rows(args, images):
    """Sequences one batch of `images` runs at once: guidance runs each prompt twice."""
    return min(args.batch_size, images) * (2 if args.guidance != 1 else 1)


def sampling_options(args):
    """The sampling flags as sampling.draw's keyword arguments."""
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "guidance": args.guidance,
        "precision": args.precision,
    }
