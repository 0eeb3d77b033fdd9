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

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoints import load_weights, save_checkpoint
from device import pick_device, resolve_precision
from errors import UserError, leave_process_group
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
    precision: str = "fp32"  # or "bf16": autocast around every training step (device.precision_context)
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


def seed_step(seed, step, rank=0):
    """Seed this process's random numbers for one training step (dropout, Gumbel noise) and return a
    generator for the step's data choices (colours, phrasings): both pure functions of (seed, step,
    rank), so a resumed run draws exactly what an uninterrupted one would have, on every rank."""
    torch.manual_seed(step_seed(seed, step, rank))
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


def restore(checkpoint, model, make_optimizer, run):
    """Move the model to the run's device, build its optimiser, then load both from a checkpoint
    (None: a fresh run); returns (optimizer, the step to continue from).

    In that order, as nanoGPT does: optimizer.load_state_dict puts Adam's moments on the device and
    dtype the parameters have at that moment, and step() must find them together.
    No random state is stored: every step reseeds each process from (seed, step, rank) (fit), so a
    resumed run, under torchrun too, draws on every rank what the uninterrupted run would have.
    """
    model.to(run.device)
    optimizer = make_optimizer(model)
    if checkpoint is None:
        return optimizer, 0
    load_weights(model, checkpoint["model"], "the checkpoint being resumed")
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise UserError(f"the checkpoint being resumed has an optimiser state this run cannot use ({error})")
    run.log(f"resuming at step {checkpoint['step']}")
    return optimizer, checkpoint["step"]


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


class Bookkeeping:
    """What a training loop does besides learning: log every step to metrics.csv and the progress bar,
    validate every sample_every steps, save checkpoints, stop every process on a non-finite value,
    and leave cleanly after Ctrl-C or SIGTERM.

    latest.pt is refreshed at least every checkpoint_seconds; <name>-<step>.pt every sample_every
    steps and at the end (rank 0 writes). make_checkpoint(step) -> the script's checkpoint dict;
    validate(step) writes grids (rank 0) and returns validation figures.
    """

    def __init__(self, run, name, output_dir, t, start_step, make_checkpoint, validate, shown):
        self.run, self.name, self.t, self.shown = run, name, t, shown
        self.make_checkpoint, self.validate = make_checkpoint, validate
        self.latest = output_dir / "latest.pt"
        self.saved = start_step > 0  # whether latest.pt holds good weights of this run
        self.last_save = time.monotonic()
        self.log = MetricsLog(output_dir / "metrics.csv", start_step, run.is_main)
        self.bar = tqdm(total=t.num_training_steps, initial=start_step, desc=name, disable=not run.is_main,
                        dynamic_ncols=True)  # fmt: skip
        self.interrupts = Interrupts()

    def __enter__(self):
        self.interrupts.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.close()
        self.interrupts.__exit__(*exc)

    def check(self, loss, grad_norm, step):
        """Before optimizer.step(): every process agrees (one all-reduce) whether a loss or gradient norm
        is non-finite anywhere, which stops them all before NaN reaches the weights, and whether a
        signal came; returns the latter."""
        bad_loss, bad_gradient, interrupted = agree(
            self.run, [not torch.isfinite(loss), not torch.isfinite(grad_norm), self.interrupts.received is not None]
        )
        if bad_loss or bad_gradient:
            what, value = ("loss", loss) if bad_loss else ("gradient norm", grad_norm)
            self.stop(what, value.item() if not value.isfinite() else "non-finite on another process", step)
        return interrupted

    def stop(self, what, value, step):
        self.bar.close()
        kept = f"{self.latest} holds the last good weights" if self.saved else "no checkpoint was written yet"
        raise UserError(
            f"{self.name} {what} became {value} at step {step + 1}; {kept}; "
            "try a lower learning rate (--set <section>.learning_rate=...)"
        )

    def end_step(self, step, model, metrics, interrupted):
        """After step `step` (counted from 1): check the weights, log, validate and save when due; exit if
        interrupted. A finite but explosive learning rate can still overflow the weights in optimizer.step()."""
        if not all(p.isfinite().all() for p in model.parameters()):  # replicas agree: no all-reduce needed
            self.stop("weights", "non-finite after the optimiser step", step - 1)
        self.log.write(
            step, {name: value.detach() if torch.is_tensor(value) else value for name, value in metrics.items()}
        )
        self.bar.update(1)
        self.bar.set_postfix(
            {k: f"{float(torch.as_tensor(metrics[k]).detach()):.4g}" for k in self.shown}, refresh=False
        )
        if step % self.t.sample_every == 0 or step == self.t.num_training_steps:
            if self.run.is_main:
                self.log.write(step, {f"validation_{name}": value for name, value in self.validate(step).items()})
            self.save(step, numbered=True)
        elif interrupted or time.monotonic() - self.last_save >= self.t.checkpoint_seconds:
            self.save(step)
        if interrupted:
            self.bar.close()
            name, status = Interrupts.SIGNALS[self.interrupts.received or signal.SIGINT]
            self.run.log(
                f"interrupted at step {step} ({name}): saved {self.latest}; continue with --resume", error=True
            )
            leave_process_group()
            sys.exit(status)

    def save(self, step, numbered=False):
        if self.run.is_main:
            payload = self.make_checkpoint(step) | {"step": step, "seed": self.run.seed}
            save_checkpoint(payload, self.latest)
            if numbered:
                save_checkpoint(payload, self.latest.parent / f"{self.name}-{step}.pt")
        self.saved = True
        self.last_save = time.monotonic()
