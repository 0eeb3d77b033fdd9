"""The scenes benchmark (issue 21): GenEval's six categories, scored on a scenes checkpoint's drawings.

    python evaluate.py --dall_e_checkpoint output/dall_e_scenes/latest.pt        # validation: to choose
    python evaluate.py --dall_e_checkpoint output/dall_e_scenes/latest.pt --split test --test_data_dir DIR

evaluate.py hands a scenes checkpoint here. The prompts: --samples in all, an equal share per category
(single object, two objects, counting, colours, position, colour attribution, as GenEval's); in the
three categories that have held-out compositions (scenes.py), every HELD_OUT_EVERY-th prompt asks for
one of them, in turn; the others are seen Specs drawn as training draws them (scenes.draw_spec,
held-out ones drawn again). Each prompt is a random phrasing of its Spec. Every image is scored by
scene_score.py with judge A and with judge B (evaluate.py's MNIST judges), right or wrong with a reason.

Reported per category, seen and held-out apart, for one draw and for the first of --candidates the
reranker accepts, in both judges; overall as GenEval computes it, the mean over the six categories.
Beside them, the ceilings: the scorer's proof on true scenes painted from the split's digits
(prove_scene_scorer.py), and the same true scenes through the dVAE's tokens and back, what this dVAE
lets any transformer reach.
"""

from collections import Counter
from pathlib import Path

import torch

from captions import encode_prompts
from data import to_float
from judge import JUDGES, classify, load_or_train_judge
from prove_scene_scorer import draw_proof_set, summarise
from rerank import ACCEPT
from scene_grammar import CATEGORIES, phrasings
from scene_score import judge_reader, reason_kind, score
from scene_training import concept_key, scene_concepts
from scenes import Renderer, draw_spec, held_out_specs, spec_held_out

HELD_OUT_EVERY = 4  # in counting, position and colour attribution, one prompt in four asks for a held-out composition


def benchmark_prompts(samples, seed):
    """(prompts, Specs, held-out flags): samples // 6 per category, seen and held-out as the docstring says."""
    generator = torch.Generator().manual_seed(seed)
    held_out = {c: [s for s in held_out_specs() if s.category == c] for c in CATEGORIES}
    prompts, specs, flags = [], [], []
    for category in CATEGORIES:
        for i in range(max(1, samples // len(CATEGORIES))):
            if held_out[category] and i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1:
                spec = held_out[category][(i // HELD_OUT_EVERY) % len(held_out[category])]
            else:
                spec = draw_spec(category, generator)
                while spec_held_out(spec):
                    spec = draw_spec(category, generator)
            options = phrasings(spec)
            prompts.append(options[torch.randint(len(options), (), generator=generator).item()])
            specs.append(spec)
            flags.append(spec_held_out(spec))
    return prompts, specs, flags


def share(verdicts, chosen):
    """Share right among the chosen verdicts; None where none is chosen."""
    picked = [right for (right, _), keep in zip(verdicts, chosen) if keep]
    return sum(picked) / len(picked) if picked else None


def failure_kinds(verdicts, chosen, most=4):
    """{kind of reason: its share of the chosen verdicts}, the commonest few (scene_score.reason_kind)."""
    kinds = Counter(reason_kind(reason) for (right, reason), keep in zip(verdicts, chosen) if keep and not right)
    return {kind: n / max(1, sum(chosen)) for kind, n in kinds.most_common(most)}


def per_category(verdicts, specs, held_out):
    """{category: {all, seen, held_out}}, overall (GenEval's mean over categories) and the commonest reasons."""
    figures = {}
    for category in CATEGORIES:
        mine = [s.category == category for s in specs]
        figures[category] = {
            "all": share(verdicts, mine),
            "seen": share(verdicts, [m and not h for m, h in zip(mine, held_out)]),
            "held_out": share(verdicts, [m and h for m, h in zip(mine, held_out)]),
            "wrong_by_kind": failure_kinds(verdicts, mine),
        }
    reasons = Counter(reason for right, reason in verdicts if not right)
    return {
        "categories": figures,
        "overall": sum(f["all"] for f in figures.values()) / len(figures),
        "reasons": dict(reasons.most_common(8)),
    }


def ceilings(dvae, readers, proof_set, device):
    """The scorer's proof on the split's digits (true scenes and mistakes right) and true scenes through the dVAE."""
    images, specs, kinds = proof_set
    true = [k == "true" for k in kinds]
    painted = to_float(images[torch.tensor(true)])
    rebuilt = torch.cat([dvae.decode(dvae.encode(x.to(device))).cpu() for x in painted.split(500)])
    true_specs = [s for s, t in zip(specs, true) if t]
    figures = {}
    for name, reader in readers.items():
        proof = summarise(score(to_float(images), specs, reader), specs, kinds)
        through = per_category(score(rebuilt, true_specs, reader), true_specs, [False] * len(true_specs))
        figures[name] = {"scorer_true": proof["true"], "scorer_mistakes": proof["mistakes"]["overall"]}
        figures[name]["through_dvae"] = {c: through["categories"][c]["all"] for c in CATEGORIES}
        figures[name]["through_dvae"]["overall"] = through["overall"]
    return figures


def reranker_reading(reranker, proof_set, device):
    """How the reranker reads true scenes, per category: the share whose concept is its favourite of the
    category (top-1), and the share it accepts (the concept above rerank.ACCEPT), as reranking asks it to."""
    images, specs, kinds = proof_set
    true = [k == "true" for k in kinds]
    specs = [s for s, t in zip(specs, true) if t]
    keys = {key: i for i, key in enumerate(scene_concepts()[0])}  # the concepts in the reranker's order
    truth = torch.tensor([keys[concept_key(s)] for s in specs], device=device)  # (N,)
    painted = to_float(images[torch.tensor(true)])
    probabilities = torch.cat([reranker.concept_probabilities(x.to(device)) for x in painted.split(500)])  # (N, K)
    figures = {}
    for i, category in enumerate(CATEGORIES):
        mine = torch.tensor([s.category == category for s in specs], device=device)
        favourite = probabilities[mine].masked_fill(reranker.categories != i, -1.0).argmax(dim=1)
        accepted = probabilities[mine].gather(1, truth[mine, None]).squeeze(1) > ACCEPT
        figures[category] = {
            "top1": (favourite == truth[mine]).float().mean().item(),
            "accepted": accepted.float().mean().item(),
        }
    return figures


def measure_scenes(trained, train, split, args, seed, draw):
    """The benchmark's figures for a scenes checkpoint; draw(text, candidates=) -> (images, seconds)."""
    device = next(trained.model.parameters()).device
    judges = {name: load_or_train_judge(Path(args.judge_dir) / "mnist", name, *train, device) for name in JUDGES}
    readers = {name: judge_reader(judge, device) for name, judge in judges.items()}
    prompts, specs, held_out = benchmark_prompts(args.samples, seed)
    proof_set = draw_proof_set(Renderer(*split), args.proof_scenes, torch.Generator().manual_seed(seed))
    text = encode_prompts(trained.tokenizer, prompts)
    draws, seconds = {}, {}
    for candidates in sorted({1, args.candidates}):
        images, seconds[str(candidates)] = draw(text, candidates=candidates)
        draws[str(candidates)] = {
            name: per_category(score(images, specs, reader), specs, held_out) for name, reader in readers.items()
        }
    accuracy = {
        name: (classify(judge, split[0], device)[0].argmax(1) == split[1]).float().mean().item()
        for name, judge in judges.items()
    }
    return {
        "samples": len(prompts),
        "held_out_prompts": sum(held_out),
        "draws": draws,
        "ceilings": ceilings(trained.dvae, readers, proof_set, device),
        "reranker_on_true_scenes": reranker_reading(trained.reranker, proof_set, device),
        "judges": {name: {"accuracy_on_real": a} for name, a in accuracy.items()},
        "sampling_images_per_second": {k: len(prompts) / s for k, s in seconds.items()},
        "split_images": len(split[0]),
    }


def percent(value):
    return "  -  " if value is None else f"{value:5.1%}"


def draw_name(candidates):
    """ "one draw", or "first of 8" for the reranked draws."""
    return "one draw" if candidates == "1" else f"first of {candidates}"


def print_scene_table(m):
    """A row per category: one draw and reranked, seen / held-out, per judge; then overall and the ceilings."""
    columns = [(k, j) for k in m["draws"] for j in JUDGES]
    names = [draw_name(k) for k, _ in columns]
    print(
        f"{'category (seen / held-out)':26s} "
        + "  ".join(f"{n + ', judge ' + j:>24s}" for n, (_, j) in zip(names, columns))
    )
    for category in CATEGORIES:
        cells = [m["draws"][k][j]["categories"][category] for k, j in columns]
        pairs = [f"{percent(c['seen'])} / {percent(c['held_out'])}" for c in cells]
        print(f"  {category:24s} " + "  ".join(f"{p:>24s}" for p in pairs))
    print(f"  {'overall (mean of six)':24s} " + "  ".join(f"{m['draws'][k][j]['overall']:>24.1%}" for k, j in columns))
    for j in JUDGES:
        c = m["ceilings"][j]
        true = " ".join(f"{k} {v:.1%}" for k, v in c["scorer_true"].items())
        print(f"ceiling, judge {j}: scorer on true scenes {true}; mistakes scored right {c['scorer_mistakes']:.2%}")
        through = " ".join(f"{k} {v:.1%}" for k, v in c["through_dvae"].items())
        print(f"ceiling, judge {j}: true scenes through the dVAE {through}")
        print(f"wrong, why (judge {j}, {names[-1]}): {m['draws'][columns[-1][0]][j]['reasons']}")
    for k in m["draws"]:
        kinds = "; ".join(
            f"{category}: " + ", ".join(f'"{kind}" {v:.0%}' for kind, v in c["wrong_by_kind"].items())
            for category, c in m["draws"][k]["A"]["categories"].items()
            if c["wrong_by_kind"]
        )
        print(f"wrong, by kind, share of the category's prompts (judge A, {draw_name(k)}): {kinds}")
    reading = " ".join(f"{k} {v['top1']:.1%} / {v['accepted']:.1%}" for k, v in m["reranker_on_true_scenes"].items())
    print(f"reranker on true scenes, its favourite of the category / accepted: {reading}")
    speed = ", ".join(f"{v:.1f} images/s ({draw_name(k)})" for k, v in m["sampling_images_per_second"].items())
    print(f"{m['samples']} prompts ({m['held_out_prompts']} held-out); sampling {speed}")
