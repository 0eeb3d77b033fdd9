"""Draw the README's figures from the code and from what the two trainers wrote to output/.

    python make_figures.py          # after train_dvae.py and train_mnist.py with their defaults

Each figure is one function below. The first two need no training; the others read
output/dvae/ and output/dall_e/ (checkpoints, metrics.csv, sample grids) and are skipped, with a
line naming the command that makes their inputs, where those are missing. Writes docs/*.png.
"""

import math
import textwrap
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyArrowPatch, Rectangle

from captions import encode_prompts, shown_split
from checkpoints import dataset_of, dvae_from_checkpoint, load_checkpoint, load_dall_e
from data import load_train_and_validation, to_float
from errors import ArgumentParser, run_main
from evaluate_scenes import benchmark_prompts
from files import atomic_write, check_output_dir
from flags import CANDIDATES, GUIDANCE, SAMPLING_TEMPERATURE
from generate_mnist import BATCH_SIZE, completion_grid, default_prompts, labelled_grid
from judge import load_or_train_judge
from sampling import completion_prime, sample_in_batches
from scene_grammar import trained_spec
from scene_score import judge_reader, score
from scenes import spec_held_out
from train_dvae import save_reconstructions
from training import row_step
from transformer import MASK_KINDS, attention_mask, layer_mask_kinds


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--dvae_dir", default="output/dvae", help="train_dvae.py's output (default: %(default)s)")
    parser.add_argument("--dall_e_dir", default="output/dall_e", help="train_mnist.py's output (default: %(default)s)")
    parser.add_argument("--colour_dir", default="output/dall_e_colour", help="a color_mnist run (default: %(default)s)")
    parser.add_argument(
        "--fashion_dir", default="output/dall_e_fashion", help="a fashion_mnist run (default: %(default)s)"
    )
    parser.add_argument(
        "--scenes_dir", default="output/dall_e_scenes", help="a --dataset scenes run (default: %(default)s)"
    )
    parser.add_argument("--judge_dir", default="output/judge", help="evaluate.py's judges (default: %(default)s)")
    parser.add_argument("--data_dir", default="data", help="MNIST, as the trainers read it (default: %(default)s)")
    parser.add_argument("--docs_dir", default="docs", help="where the figures go (default: %(default)s)")
    return parser.parse_args(argv)


def save(figure, path):
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)
    print(f"wrote {path}")


def masks_figure(path, text_length=3, grid_size=4, kernel=3):
    """The three masks of appendix B.1 (Fig. 11) on a small grid, from transformer.attention_mask itself."""
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.8))
    for ax, kind in zip(axes, MASK_KINDS):
        mask = attention_mask(kind, text_length, grid_size, kernel)
        ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.4)
        ax.axhline(text_length - 0.5, color="k", lw=0.8)
        ax.axvline(text_length - 0.5, color="k", lw=0.8)
        ax.set_title(f"{kind}, laid out on the input cell (paper)", fontsize=9)
        ax.set_xlabel("key position", fontsize=8)
        ax.set_ylabel("query position", fontsize=8)
        ax.tick_params(labelsize=6)
    schedule = ", ".join(layer_mask_kinds(4))
    figure.suptitle(
        f"{text_length} text tokens + a {grid_size}x{grid_size} grid, conv kernel {kernel}; "
        f"the default 4 layers use: {schedule}",
        fontsize=10,
    )
    save(figure, path)


def sequence_figure(path, text_length=3, shown_image=4):
    """[t1 t2 t3 | z1 .. z64]: which output position predicts which token, through which head."""
    inputs = [f"t{i + 1}" for i in range(text_length)] + [f"z{i + 1}" for i in range(shown_image)] + ["...", "z63"]
    targets = (
        [f"t{i + 2}" for i in range(text_length - 1)] + [f"z{i + 1}" for i in range(shown_image + 1)] + ["...", "z64"]
    )
    figure, ax = plt.subplots(figsize=(11, 3))
    for x, (token, target) in enumerate(zip(inputs, targets)):
        is_text_head = x < text_length - 1
        colour = "tab:orange" if is_text_head else "tab:blue"
        ax.add_patch(Rectangle((x, 0), 0.8, 0.6, fc="#f2f2f2" if x >= text_length else "#ffe9cc", ec="k"))
        ax.text(x + 0.4, 0.3, token, ha="center", va="center")
        ax.add_patch(Rectangle((x, 2), 0.8, 0.6, fc="white", ec=colour, lw=2))
        ax.text(x + 0.4, 2.3, target, ha="center", va="center")
        if token != "...":
            ax.add_patch(
                FancyArrowPatch((x + 0.4, 0.65), (x + 0.4, 1.95), arrowstyle="->", mutation_scale=12, color=colour)
            )
    ax.text(-0.2, 0.3, "input", ha="right", va="center")
    ax.text(-0.2, 2.3, "predicts", ha="right", va="center")
    ax.text(text_length - 0.6, 1.3, "the last text position\npredicts z1 (image head)", fontsize=8, ha="center")
    ax.plot([], [], color="tab:orange", label="text head (1/8 of the loss)")
    ax.plot([], [], color="tab:blue", label="image head (7/8 of the loss)")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.25), ncol=2, fontsize=8, frameon=False)
    ax.set_xlim(-1.2, len(inputs))
    ax.set_ylim(-0.2, 2.8)
    ax.axis("off")
    save(figure, path)


def read_metrics(path):
    """metrics.csv -> {metric: (steps, values)}; the last row wins where a resumed run repeated a step."""
    series = {}
    for line in Path(path).read_text(errors="replace").splitlines()[1:]:
        if row_step(line) < math.inf:  # a whole row: a kill can leave a blank or half-written last line
            step, metric, value = line.split(",")
            series.setdefault(metric, {})[int(step)] = float(value)
    return {name: (list(values), list(values.values())) for name, values in series.items()}


def training_curves_figure(path, dvae_csv, dall_e_csv):
    """Losses, schedules and validation figures of both trainings, from their metrics.csv."""
    dvae, dall_e = read_metrics(dvae_csv), read_metrics(dall_e_csv)
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(*dvae["mse"], lw=0.6, label="training batch")
    axes[0].plot(*dvae["validation_mse"], "o-", label="validation")
    axes[0].set(title="dVAE: reconstruction MSE", xlabel="step", yscale="log")
    axes[1].plot(*dvae["tau"], label="Gumbel temperature tau")
    axes[1].plot(*dvae["kl_weight"], label="KL weight beta")
    axes[1].plot(dvae["lr"][0], [v / max(dvae["lr"][1]) for v in dvae["lr"][1]], label="learning rate (scaled)")
    axes[1].set(title="dVAE: schedules", xlabel="step")
    axes[2].plot(*dall_e["image"], lw=0.6, label="training batch")
    steps, values = dall_e["validation_image_loss"]
    axes[2].plot(steps, values, "o-", label="validation")
    best = values.index(min(values))
    axes[2].annotate(
        "validation loss turns",
        (steps[best], values[best]),
        xytext=(0, -30),
        textcoords="offset points",
        arrowprops={"arrowstyle": "->"},
        ha="center",
        fontsize=8,
    )
    axes[2].set(title="transformer: image loss (nats/token)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=8)
    save(figure, path)


@torch.no_grad()
def codebook_figure(path, dvae, images, shown=16):
    """How often each code is used on validation digits, and what the most used codes look like alone."""
    codes = torch.cat([dvae.encode(to_float(x)) for x in images.split(500)])  # (M, G, G)
    counts = torch.bincount(codes.flatten(), minlength=dvae.config.codebook_size).float()
    order = counts.argsort(descending=True)
    background = int(order[0])  # the blank-paper code
    figure = plt.figure(figsize=(12, 4.5))
    ax = figure.add_subplot(2, 1, 1)
    ax.bar(range(len(counts)), (counts[order] / counts.sum()).numpy())
    ax.set(
        yscale="log",
        xlabel="codes, most used first",
        ylabel="share of grid cells",
        title=f"codebook usage on {len(images)} validation digits: {int((counts > 0).sum())} of {len(counts)} used",
    )
    g = dvae.config.grid_size
    for i, code in enumerate(order[1 : shown + 1].tolist()):
        grid = torch.full((1, g, g), background)
        grid[0, g // 2, g // 2] = code  # one code in the middle of blank paper
        picture = dvae.decode(grid)[0].mean(0)[8:28, 8:28]  # (20, 20) around the code's 4x4-pixel cell
        sub = figure.add_subplot(2, shown, shown + i + 1)
        sub.imshow(picture, cmap="gray", vmin=0, vmax=1)
        sub.set_title(f"code {code}", fontsize=7)
        sub.axis("off")
    save(figure, path)


def samples_over_training_figure(path, grids):
    """The trainer's sample-<step>.png grids side by side: digits emerging as training goes on."""
    figure, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 2.2), squeeze=False)
    for ax, (step, grid) in zip(axes[0], grids):
        ax.imshow(mpimg.imread(grid), cmap="gray")
        ax.set_title(f"step {step}", fontsize=9)
        ax.axis("off")
    save(figure, path)


def draw_as_generate(trained, prompts, prime=None, guidance=GUIDANCE):
    """Images for the prompts as generate_mnist.py draws them by default: seed 0, the first of 8 accepted."""
    text = encode_prompts(trained.tokenizer, prompts)
    return sample_in_batches(
        trained.model, trained.dvae, text, BATCH_SIZE, 0, prime, trained.reranker, CANDIDATES,
        temperature=SAMPLING_TEMPERATURE, guidance=guidance,
    )  # fmt: skip


@torch.no_grad()
def samples_figure(path, checkpoint_path):
    """generate_mnist.py's default prompts and sampling: the first of 8 draws the reranker accepts."""
    trained = load_dall_e(checkpoint_path, need_reranker=True)
    prompts = default_prompts(trained.dataset)
    save(labelled_grid(draw_as_generate(trained, prompts), prompts), path)


def show_image(ax, image, title, fontsize=6.5):
    """One (3, H, W) image on ax, titled, without ticks (the y label stays free for a row name)."""
    ax.imshow(image.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([]), ax.set_yticks([])


@torch.no_grad()
def zero_shot_figure(path, checkpoint_path, per_pair=2):
    """For every digit: its held-out colour (never seen in training) beside a seen one, reranked as generate draws."""
    trained = load_dall_e(checkpoint_path, need_reranker=True)
    dataset = trained.dataset
    held = dict(dataset.held_out)
    k = len(dataset.colours)
    rotated = {d: dataset.colours[d % k :] + dataset.colours[: d % k] for d in held}  # varied seen colours
    seen = {d: next(c for c in rotated[d] if dataset.seen(d, c)) for d in held}
    rows = [("held out", held), ("seen", seen)]
    prompts = [dataset.canonical((d, colours[d])) for _, colours in rows for _ in range(per_pair) for d in range(10)]
    images = draw_as_generate(trained, prompts)
    figure, axes = plt.subplots(len(rows) * per_pair, 10, figsize=(12, 1.45 * len(rows) * per_pair))
    for ax, image, prompt in zip(axes.flat, images, prompts):
        show_image(ax, image, prompt, fontsize=7)
    for r, (name, _) in enumerate(rows):
        axes[r * per_pair, 0].set_ylabel(name, fontsize=9)
    save(figure, path)


@torch.no_grad()
def completion_figure(path, checkpoint_path, data_dir, rows=3, per_prompt=6):
    """Image completion (paper section 3.3): the top rows of a validation 7, completed under four prompts."""
    trained = load_dall_e(checkpoint_path, need_reranker=True)
    c = trained.dvae.config
    _, (validation, labels) = load_train_and_validation("mnist", data_dir, c.image_size, log=lambda line: None)
    primer = to_float(validation[labels == 7][:1])  # (1, 1, S, S)
    prompts = [p for p in ("seven", "nine", "one", "four") for _ in range(per_prompt)]
    prime = completion_prime(trained.dvae, primer, rows).expand(len(prompts), -1)  # (N, rows * G)
    images = draw_as_generate(trained, prompts, prime)
    save(completion_grid(images, prompts, primer[0], rows * c.image_size // c.grid_size, per_prompt), path)


SCENE_GUIDANCE = 2.0  # what the README recommends for scenes (chosen on validation: docs/experiments.md)
# Each pair: a held-out composition, then the same words with the binding, the order or the digit swapped
SCENE_PAIRS = (
    ("a red three and a blue seven", "a blue three and a red seven"),
    ("a green one and a magenta four", "a magenta one and a green four"),
    ("a three to the left of a seven", "a seven to the left of a three"),
    ("a zero above an eight", "an eight above a zero"),
    ("three fours", "three sevens"),
    ("two nines", "two fives"),
)


@torch.no_grad()
def scenes_figure(path, checkpoint_path, per_prompt=3):
    """Held-out compositions beside their swapped, seen twins, as generate_mnist.py --guidance 2 draws them."""
    trained = load_dall_e(checkpoint_path, need_reranker=True)
    prompts = [p for pair in SCENE_PAIRS for p in pair]
    images = draw_as_generate(trained, [p for p in prompts for _ in range(per_prompt)], guidance=SCENE_GUIDANCE)
    figure, axes = plt.subplots(
        per_prompt, len(prompts), figsize=(1.25 * len(prompts), 1.5 * per_prompt), squeeze=False
    )
    for i, prompt in enumerate(prompts):
        label = "HELD OUT\n" if spec_held_out(trained_spec(prompt)) else "seen\n"
        title = label + "\n".join(textwrap.wrap(prompt, 16))
        for j in range(per_prompt):
            show_image(axes[j, i], images[i * per_prompt + j], title if j == 0 else "")
    save(figure, path)


@torch.no_grad()
def scene_failures_figure(path, checkpoint_path, judge_dir, data_dir, prompts=240, shown=16):
    """Benchmark prompts (evaluate_scenes.py's, validation seed) drawn as generate --guidance 2 does; the ones
    the scorer (judge A) calls wrong, with its reasons."""
    trained = load_dall_e(checkpoint_path, need_reranker=True)
    train, _ = load_train_and_validation("mnist", data_dir, trained.dvae.config.image_size, log=lambda line: None)
    judge = load_or_train_judge(Path(judge_dir) / "mnist", "A", *train, "cpu")
    captions, specs, _ = benchmark_prompts(prompts, seed=0)
    images = draw_as_generate(trained, captions, guidance=SCENE_GUIDANCE)
    wrong = [
        (i, reason) for i, (right, reason) in enumerate(score(images, specs, judge_reader(judge, "cpu"))) if not right
    ]
    columns = 8
    rows = max(1, math.ceil(min(shown, len(wrong)) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, reason) in zip(axes.flat, wrong[:shown]):
        show_image(ax, images[i], "\n".join(textwrap.wrap(captions[i], 24)) + f"\n-> {reason}")
    figure.suptitle(f"{len(wrong)} of {len(captions)} benchmark prompts scored wrong (judge A); the first {shown}")
    save(figure, path)


def skipped(name, needs, command):
    print(f"skipped {name}: needs {needs} (run {command} first)")


def main():
    args = parse_args()
    docs, dvae_dir, dall_e_dir = Path(args.docs_dir), Path(args.dvae_dir), Path(args.dall_e_dir)
    check_output_dir(docs, "--docs_dir")
    masks_figure(docs / "masks.png")
    sequence_figure(docs / "sequence.png")
    if (dvae_dir / "metrics.csv").is_file() and (dall_e_dir / "metrics.csv").is_file():
        training_curves_figure(docs / "training_curves.png", dvae_dir / "metrics.csv", dall_e_dir / "metrics.csv")
    else:
        skipped("training_curves.png", "metrics.csv from both trainers", "the two trainings")
    if (dvae_dir / "latest.pt").is_file():
        checkpoint = load_checkpoint(dvae_dir / "latest.pt", "dvae")
        dvae = dvae_from_checkpoint(checkpoint)
        c = dvae.config
        dataset = dataset_of(checkpoint)
        _, (grey, labels) = load_train_and_validation(
            dataset.source, args.data_dir, c.image_size, log=lambda line: None
        )
        validation, _ = shown_split(dataset, grey, labels)
        codebook_figure(docs / "codebook.png", dvae, validation)
        save_reconstructions(dvae, validation, docs / "dvae_reconstructions.png", "cpu")
        print(f"wrote {docs / 'dvae_reconstructions.png'}")
    else:
        skipped("codebook.png and dvae_reconstructions.png", dvae_dir / "latest.pt", "python train_dvae.py")
    grids = sorted((int(p.stem.split("-")[1]), p) for p in dall_e_dir.glob("sample-*.png"))
    if grids and (dall_e_dir / "latest.pt").is_file():
        samples_over_training_figure(docs / "samples_over_training.png", grids)
        samples_figure(docs / "dall_e_samples.png", dall_e_dir / "latest.pt")
        completion_figure(docs / "completion.png", dall_e_dir / "latest.pt", args.data_dir)
    else:
        skipped("samples_over_training.png, dall_e_samples.png, completion.png", dall_e_dir, "python train_mnist.py")
    colour, fashion = Path(args.colour_dir) / "latest.pt", Path(args.fashion_dir) / "latest.pt"
    if colour.is_file():
        zero_shot_figure(docs / "zero_shot.png", colour)
    else:
        skipped("zero_shot.png", colour, "the color_mnist commands in the README")
    if fashion.is_file():
        samples_figure(docs / "fashion_samples.png", fashion)
    else:
        skipped("fashion_samples.png", fashion, "the fashion_mnist commands in the README")
    scenes = Path(args.scenes_dir) / "latest.pt"
    if scenes.is_file():
        scenes_figure(docs / "scenes.png", scenes)
        scene_failures_figure(docs / "scene_failures.png", scenes, args.judge_dir, args.data_dir)
    else:
        skipped("scenes.png and scene_failures.png", scenes, "the scenes commands in the README")


if __name__ == "__main__":
    run_main(main)
