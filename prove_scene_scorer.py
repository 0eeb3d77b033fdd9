"""Prove the scene scorer before any model is judged by it: on scenes painted from real test digits,
true scenes must score right and deliberately wrong ones must not.

    python prove_scene_scorer.py --split test --test_data_dir ../shared/mnist/raw   # report
    python prove_scene_scorer.py                                                   # validation: to choose

For every category, --scenes true scenes (held-out compositions included: the scorer must read
them too) and, from each, every mistake that applies to it:
  colours swapped      a two-colour scene with its colours exchanged; one colour: another colour
  positions swapped    a relation's two digits in each other's places
  one digit too many   one more digit in a free place (the same digit, for a count)
  one digit too few    one digit left out
  a different digit    one digit replaced by another
Each is scored with both judges (judge.py, trained on the training split and cached as evaluate.py
caches them). Targets (issue 21): true scenes right at least 97% overall and 95% in every category;
mistakes scored right at most 3%. Writes OUTPUT_DIR/proof.json.
"""

import json
from collections import Counter
from pathlib import Path

import torch

from captions import PALETTE
from data import load_images, load_train_and_validation, to_float
from errors import ArgumentParser, UserError, run_main
from files import check_output_dir, write_text
from flags import add_split_flags
from judge import JUDGES, load_or_train_judge
from scene_grammar import CATEGORIES
from scene_score import READ_THRESHOLD, judge_reader, score
from scenes import PLACES, Item, Renderer, draw_spec, place_spec

TARGETS = {"overall": 0.97, "category": 0.95, "mistakes": 0.03}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    add_split_flags(parser, "whose digits paint the scenes: validation to choose, test to report")
    parser.add_argument("--scenes", type=int, default=500, help="true scenes per category (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument(
        "--read_threshold",
        type=float,
        default=READ_THRESHOLD,
        help="a digit reads as every class at least this probable (default: %(default)s)",
    )
    parser.add_argument(
        "--judge_dir", default="output/judge", help="where the judges are cached (default: %(default)s)"
    )
    parser.add_argument("--output_dir", default="output/scene_scorer", help="default: %(default)s")
    parser.add_argument("--device", default="cpu", help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        raise UserError(f"--scenes must be >= 1, got {args.scenes}")
    if not 0 < args.read_threshold <= 1:
        raise UserError(f"--read_threshold must be in (0, 1], got {args.read_threshold}")
    return args


def _other(options, avoid, generator):
    choices = [o for o in options if o not in avoid]
    return choices[torch.randint(len(choices), (), generator=generator).item()]


def mistakes(spec, contents, generator):
    """{kind: wrong contents} for every mistake that applies to one true scene."""
    wrong = {}
    items = list(contents)
    if spec.category == "colour_attr":
        a, b = items
        wrong["colours swapped"] = (Item(a.digit, b.colour, a.place), Item(b.digit, a.colour, b.place))
    if spec.category == "colours":
        a = items[0]
        wrong["colours swapped"] = (Item(a.digit, _other(list(PALETTE), [a.colour], generator), a.place),)
    if spec.relation:
        a, b = items
        wrong["positions swapped"] = (Item(a.digit, a.colour, b.place), Item(b.digit, b.colour, a.place))
    if len(items) < PLACES:
        digit = items[0].digit if spec.category == "counting" else _other(range(10), [], generator)
        place = _other(range(PLACES), [i.place for i in items], generator)
        wrong["one digit too many"] = (*items, Item(digit, None, place))
    drop = torch.randint(len(items), (), generator=generator).item()
    wrong["one digit too few"] = tuple(items[:drop] + items[drop + 1 :])
    change = torch.randint(len(items), (), generator=generator).item()
    old = items[change]
    new = Item(_other(range(10), [i.digit for i in items], generator), old.colour, old.place)
    wrong["a different digit"] = tuple(items[:change] + [new] + items[change + 1 :])
    return wrong


def draw_proof_set(renderer, per_category, generator):
    """(images (N, 3, 64, 64) uint8, Specs, kinds): true scenes, kind 'true', and their mistakes."""
    images, specs, kinds = [], [], []
    for category in CATEGORIES:
        for _ in range(per_category):
            spec = draw_spec(category, generator)
            contents = place_spec(spec, generator)
            for kind, shown in {"true": contents, **mistakes(spec, contents, generator)}.items():
                images.append(renderer.render(shown, generator))
                specs.append(spec)
                kinds.append(kind)
    return torch.stack(images), specs, kinds


def share_right(verdicts, chosen):
    picked = [right for (right, _), keep in zip(verdicts, chosen) if keep]
    return sum(picked) / len(picked)


def summarise(verdicts, specs, kinds):
    """Shares scored right: true scenes overall and per category, mistakes overall and per kind; top reasons."""
    true = [k == "true" for k in kinds]
    figures = {"true": {"overall": share_right(verdicts, true)}, "mistakes": {}}
    for category in CATEGORIES:
        chosen = [t and s.category == category for t, s in zip(true, specs)]
        figures["true"][category] = share_right(verdicts, chosen)
    figures["mistakes"]["overall"] = share_right(verdicts, [not t for t in true])
    for kind in sorted(set(kinds) - {"true"}):
        figures["mistakes"][kind] = share_right(verdicts, [k == kind for k in kinds])
    misread = Counter(reason for (right, reason), t in zip(verdicts, true) if t and not right)
    figures["true_scenes_scored_wrong"] = dict(misread.most_common(8))
    return figures


def print_report(results, counts):
    print(f"{'true scenes scored right':28s} " + "   ".join(f"judge {j}" for j in JUDGES))
    for key in ["overall", *CATEGORIES]:
        shares = "   ".join(f"{results[j]['true'][key]:7.2%}" for j in JUDGES)
        print(f"  {key:26s} {shares}   ({counts['true'][key]:,})")
    print("mistakes scored right")
    for key in results[JUDGES[0]]["mistakes"]:
        shares = "   ".join(f"{results[j]['mistakes'][key]:7.2%}" for j in JUDGES)
        print(f"  {key:26s} {shares}   ({counts['mistakes'][key]:,})")
    for j in JUDGES:
        print(f"judge {j}: true scenes scored wrong, why: {results[j]['true_scenes_scored_wrong']}")
    met = all(
        r["true"]["overall"] >= TARGETS["overall"]
        and min(r["true"][c] for c in CATEGORIES) >= TARGETS["category"]
        and r["mistakes"]["overall"] <= TARGETS["mistakes"]
        for r in results.values()
    )
    print(f"targets (>= 97% overall, >= 95% per category, mistakes <= 3%): {'met' if met else 'NOT met'}")


def main():
    args = parse_args()
    check_output_dir(args.output_dir)  # before minutes of work
    train, validation = load_train_and_validation("mnist", args.data_dir, 32)
    split = (
        validation
        if args.split == "validation"
        else load_images("mnist", args.test_data_dir or args.data_dir, False, 32)
    )
    judges = {j: load_or_train_judge(Path(args.judge_dir) / "mnist", j, *train, args.device) for j in JUDGES}
    generator = torch.Generator().manual_seed(args.seed)
    images, specs, kinds = draw_proof_set(Renderer(*split), args.scenes, generator)
    print(
        f"scenes: {len(images):,} painted from {len(split[0]):,} {args.split} digits, {args.scenes} true per category"
    )
    results = {}
    for name, judge in judges.items():
        verdicts = score(to_float(images), specs, judge_reader(judge, args.device), args.read_threshold)
        results[name] = summarise(verdicts, specs, kinds)
    counts = {
        "true": {"overall": kinds.count("true")}
        | {c: sum(k == "true" and s.category == c for k, s in zip(kinds, specs)) for c in CATEGORIES},
        "mistakes": {"overall": len(kinds) - kinds.count("true")} | Counter(k for k in kinds if k != "true"),
    }
    print_report(results, counts)
    output = Path(args.output_dir)
    write_text(
        output / "proof.json",
        json.dumps(
            {
                "split": args.split,
                "read_threshold": args.read_threshold,
                "judges": results,
                "counts": counts,
                "seed": args.seed,
            },
            indent=2,
        )
        + "\n",
    )
    print(f"wrote {output / 'proof.json'}")


if __name__ == "__main__":
    run_main(main)
