"""The training loop both training scripts share, with its schedules and torchrun support.

Run a script directly for one process, or under `torchrun --nproc_per_node=N` for N: each
process trains on its own share of every batch (DistributedDataParallel, gloo on CPU, NCCL on
CUDA) and rank 0 alone writes logs, grids and checkpoints.
"""

import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common import load_weights, pick_device, precision_context, resolve_precision, save_checkpoint
from errors import UserError
from files import append_text, read_own_text, write_text


def cosine(start, end, progress):
    """Cosine interpolation from `start` (progress 0) to `end` (progress >= 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Run:
    """Where this process stands: its device, rank and the world it belongs to."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"  # or "bf16": autocast around every training step (common.precision_context)
    seed: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    def log(self, message, error=False):
        if self.is_main:
            tqdm.write(message, file=sys.stderr if error else sys.stdout)


def start_run(device_name, seed, batch_size, precision="fp32"):
    """Pick the device and precision, join torchrun's process group if there is one, seed every process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        run = Run(pick_device(device_name))
    else:
        local_rank = int(os.environ["LOCAL_RANK"])
        device = pick_device(device_name)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        run = Run(device, dist.get_rank(), world_size)
    if batch_size % run.world_size:
        raise UserError(f"batch_size {batch_size} must be divisible by the {run.world_size} processes")
    torch.manual_seed(seed + run.rank)
    run.seed = seed
    run.precision = resolve_precision(precision, run.device)
    run.log(f"device {run.device}, {run.world_size} process(es), precision {run.precision}")
    return run


def step_seed(seed, step, rank=0):
    """The seed of one process's random choices at one step, a pure function of (seed, step, rank)."""
    return (seed * 1_000_003 + step) * 101 + rank


def step_generator(seed, step, rank=0):
    """A generator for one training step's random choices (colours, captions): a resumed run draws
    exactly what an uninterrupted one would have."""
    return torch.Generator().manual_seed(step_seed(seed, step, rank))


def finish_run(run, model):
    """Under torchrun: check that every process ends with the same weights, then leave the group."""
    if run.world_size == 1:
        return
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(weights) for _ in range(run.world_size)]
    dist.all_gather(gathered, weights)
    if not all(torch.equal(gathered[0], other) for other in gathered[1:]):
        raise UserError("the processes ended with different weights; please report this as a bug")
    run.log(f"all {run.world_size} processes hold identical weights")
    dist.destroy_process_group()


def wrap(model, run):
    """Move to the device; under torchrun, wrap in DistributedDataParallel."""
    model = model.to(run.device)
    if run.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def restore(checkpoint, model, optimizer, run):
    """Load model and optimiser from a checkpoint; returns the step to continue from.

    No random state is stored: every step reseeds each process from (seed, step, rank) (fit), so a
    resumed run, under torchrun too, draws on every rank what the uninterrupted run would have.
    """
    if checkpoint is None:
        return 0
    load_weights(model, checkpoint["model"], "the checkpoint being resumed")
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise UserError(f"the checkpoint being resumed has an optimiser state this run cannot use ({error})")
    run.log(f"resuming at step {checkpoint['step']}")
    return checkpoint["step"]


def set_learning_rate(optimizer, learning_rate):
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


@dataclass
class Loop:
    """What the shared loop needs from a script."""

    name: str  # checkpoint prefix: "dvae" -> dvae-<step>.pt
    output_dir: Path
    total_steps: int
    sample_every: int
    checkpoint_seconds: float
    grad_clip: float
    shown: tuple  # metric names for the progress bar


class MetricsLog:
    """OUTPUT_DIR/metrics.csv: one `step,metric,value` row per measurement, for make_figures.py.

    A fresh run starts the file anew; a resumed run keeps the rows up to the step it resumes from
    (a blank or half-written last line, as a kill can leave, is dropped). The file is replaced, never
    written through a link (files.py), and rows are appended to the file this run made.
    """

    HEADER = "step,metric,value\n"

    def __init__(self, path, start_step, enabled=True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        earlier = read_own_text(path) if start_step else None
        kept = [line + "\n" for line in (earlier or "").splitlines()[1:] if row_step(line) <= start_step]
        write_text(path, self.HEADER + "".join(kept))

    def write(self, step, values):
        if self.enabled and values:
            append_text(self.path, "".join(f"{step},{name},{float(value):.6g}\n" for name, value in values.items()))


def row_step(line):
    """The step of one metrics.csv row, or infinity for a line that is not a whole row."""
    fields = line.split(",")
    try:
        return int(fields[0]) if len(fields) == 3 and math.isfinite(float(fields[2])) else math.inf
    except ValueError:
        return math.inf


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM (sent by `timeout`, containers, cluster schedulers) only raise a
    flag; the loop saves at the next step boundary, so a checkpoint never holds half a step. A second
    signal acts at once, as it would without this (checkpoints are atomic: nothing is lost)."""

    SIGNALS = {signal.SIGINT: ("Ctrl-C", 130), signal.SIGTERM: ("SIGTERM", 143)}

    def __init__(self):
        self.received = None
        self.previous = {}

    def _handle(self, number, frame):
        self.received = number
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def __enter__(self):
        self.previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def agree(run, flags):
    """Flags (list of bool) OR-ed over every process: all ranks stop, or none, at the same step."""
    flags = torch.tensor(flags, dtype=torch.float32, device=run.device)
    if run.world_size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.bool().tolist()


def fit(
    loop: Loop,
    run: Run,
    model,
    optimizer,
    train_step,
    make_checkpoint,
    on_sample,
    start_step=0,
    after_step=None,
):
    """Optimise from start_step to loop.total_steps.

    train_step(step) -> dict of scalar tensors with "loss" (the script sets its schedules there);
    after_step(step), if given, runs after each optimiser step (train_mnist.py updates its EMA there);
    make_checkpoint(step) -> the script's checkpoint dict; on_sample(step) writes grids (rank 0) and
    returns validation figures. Every metric goes to OUTPUT_DIR/metrics.csv (MetricsLog).
    latest.pt is refreshed at least every checkpoint_seconds; <name>-<step>.pt every sample_every
    steps and at the end. Ctrl-C or SIGTERM saves latest.pt at the next step boundary and exits; a
    non-finite loss or gradient on any process stops every process before the weights change.
    """
    latest = loop.output_dir / "latest.pt"
    saved = False  # whether this run has written latest.pt

    def save(step, numbered=False):
        nonlocal saved
        if run.is_main:
            payload = make_checkpoint(step) | {"step": step, "seed": run.seed}
            save_checkpoint(payload, latest)
            if numbered:
                save_checkpoint(payload, loop.output_dir / f"{loop.name}-{step}.pt")
        saved = True

    def stop(what, value, step):
        bar.close()
        kept = f"{latest} holds the last good weights" if saved or start_step else "no checkpoint was written yet"
        raise UserError(
            f"{loop.name} {what} became {value} at step {step + 1}; {kept}; "
            "try a lower learning rate (--set <section>.learning_rate=...)"
        )

    last_save = time.monotonic()
    step = start_step
    log = MetricsLog(loop.output_dir / "metrics.csv", start_step, run.is_main)
    bar = tqdm(total=loop.total_steps, initial=start_step, desc=loop.name, disable=not run.is_main, dynamic_ncols=True)
    with Interrupts() as interrupts:
        while step < loop.total_steps:
            torch.manual_seed(step_seed(run.seed, step, run.rank))  # dropout, Gumbel noise: fixed by (seed, step, rank)
            with precision_context(run.precision, run.device):
                metrics = train_step(step)
            loss = metrics["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = loop.grad_clip if loop.grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            bad_loss, bad_gradient, interrupted = agree(
                run,
                [not torch.isfinite(loss), not torch.isfinite(metrics["grad_norm"]), interrupts.received is not None],
            )
            if bad_loss or bad_gradient:  # checked before optimizer.step(): NaN never reaches the weights
                what, value = ("loss", loss) if bad_loss else ("gradient norm", metrics["grad_norm"])
                stop(what, value.item() if not value.isfinite() else "non-finite on another process", step)
            optimizer.step()
            if not all(p.isfinite().all() for p in model.parameters()):  # replicas agree: no all-reduce needed
                stop("weights", "non-finite after the optimiser step", step)
            if after_step:
                after_step(step)
            step += 1
            log.write(
                step, {name: value.detach() if torch.is_tensor(value) else value for name, value in metrics.items()}
            )
            bar.update(1)
            bar.set_postfix(
                {k: f"{float(torch.as_tensor(metrics[k]).detach()):.4g}" for k in loop.shown}, refresh=False
            )
            if step % loop.sample_every == 0 or step == loop.total_steps:
                if run.is_main:
                    log.write(step, {f"validation_{name}": value for name, value in on_sample(step).items()})
                save(step, numbered=True)
                last_save = time.monotonic()
            elif interrupted or time.monotonic() - last_save >= loop.checkpoint_seconds:
                save(step)
                last_save = time.monotonic()
            if interrupted:
                bar.close()
                name, status = Interrupts.SIGNALS[interrupts.received or signal.SIGINT]
                run.log(f"interrupted at step {step} ({name}): saved {latest}; continue with --resume", error=True)
                sys.exit(status)
    bar.close()
