"""A training run's folder, dataset and config: the YAML, the flags, and what --resume may and may not change.

The config of a run is config.py's defaults, then the dataset's configs/DATASET.yaml (or
--config_path), then --set and the training flags. A resumed run keeps its stored config and seed:
a value that would change the run is refused, as the resumed run would be another run.
"""

import dataclasses
from pathlib import Path

from checkpoints import load_resumed
from config import Config, config_from_dict, load_config
from dataset_index import get_dataset
from errors import UserError
from files import check_fresh_start, check_not_busy, check_output_dir
from memory import check_training_fits

RESUMABLE_CHANGES = ("sample_every", "checkpoint_seconds")  # what --resume may change: it keeps the run exact


def prepare_output_dir(args, kind):
    """A trainer's checks on --output_dir, before any work: it can be written, no trainer holds it, and
    a new run does not start over an earlier one unless --overwrite says so. The checkpoint to resume, or None."""
    check_output_dir(args.output_dir)
    check_not_busy(args.output_dir)
    check_fresh_start(args.output_dir, kind, args.resume, args.overwrite)
    return load_resumed(Path(args.output_dir) / "latest.pt", kind) if args.resume else None


def choose_dataset(name, stored=None, source=None):
    """The dataset named by --dataset, or stored in a checkpoint; the two must agree."""
    if name is None:
        return get_dataset(stored or "mnist")
    dataset = get_dataset(name)
    if stored is not None and stored != dataset.name:
        raise UserError(f"{source} was trained on {stored}, but --dataset is {dataset.name}; leave --dataset out")
    return dataset


def dataset_config_path(dataset):
    path = Path(__file__).resolve().parent / "configs" / f"{dataset.name}.yaml"
    return path if path.is_file() else None


def experiment_config(args, section, dataset, stored=None):
    """The config for a run: the YAML (or a resumed checkpoint's config), then flags; checked against the dataset."""
    overrides = list(args.set)
    for flag in ("num_training_steps", "batch_size"):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{section}.{flag}={getattr(args, flag)}")
    if stored is None:
        config = load_config(args.config_path or dataset_config_path(dataset), overrides)
    else:
        if args.config_path:  # the same file again is fine; one that changes the run is not
            check_unchanged(config_from_dict(stored), load_config(args.config_path, overrides))
        config = load_config(None, overrides, base=config_from_dict(stored))
        check_unchanged(config_from_dict(stored), config)
    check_config_fits(config, dataset)
    check_training_fits(config, section, len(dataset.colours), len(dataset.words()) + config.dall_e.text_length)
    return config


def check_unchanged(stored, config):
    for part in dataclasses.fields(Config):
        old, new = dataclasses.asdict(getattr(stored, part.name)), dataclasses.asdict(getattr(config, part.name))
        for key in old:
            if old[key] != new[key] and key not in RESUMABLE_CHANGES:
                raise UserError(
                    f"--resume keeps the run's config, but {part.name}.{key} would change from {old[key]} to "
                    f"{new[key]}; drop that setting, or start a new run in another --output_dir"
                )


def resume_seed(args, resumed):
    """The run's seed: --seed, or the resumed run's (a different one would change the batch order)."""
    stored = resumed.get("seed") if resumed else None
    if args.seed is not None and stored is not None and args.seed != stored:
        raise UserError(f"the run being resumed used --seed {stored}; leave --seed out or pass --seed {stored}")
    return args.seed if args.seed is not None else (stored or 0)


def check_config_fits(config, dataset):
    """The dataset's images and captions must fit the model the config describes."""
    if config.dvae.channels != dataset.channels:
        raise UserError(
            f"{dataset.name} images have {dataset.channels} channel(s) but dvae.channels is {config.dvae.channels}; "
            f"use configs/{dataset.name}.yaml or --set dvae.channels={dataset.channels}"
        )
    if config.dall_e.text_length < dataset.text_length():
        raise UserError(
            f"{dataset.name} captions have up to {dataset.text_length()} words but dall_e.text_length is "
            f"{config.dall_e.text_length}; use configs/{dataset.name}.yaml or --set dall_e.text_length="
            f"{dataset.text_length()}"
        )
