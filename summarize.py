"""Mean and spread of evaluate.py's figures over several runs (seeds), as the README reports them.

    python summarize.py output/eval_s0/metrics.json output/eval_s1/metrics.json output/eval_s2/metrics.json
    python summarize.py --table output/eval_g*/metrics.json     # one row per sampling setting

For each figure: the mean over the runs and, in brackets, the lowest and highest run. A
difference between two settings smaller than these ranges is noise, not a reason.
With --table: a Markdown table, a row per run (the sampling settings evaluate.py was given), with
prompt accuracy, FID over the dVAE reconstructions' FID (both judges), near-copies and images/s,
for one draw and for the reranked draws.

Scenes (evaluate_scenes.py's metrics): the GenEval-style overall and every category, held-out over
seen where a category has held-out prompts, for one draw and reranked, and the two ceilings; with
--table, a row per run and draw with each category's share, judge A / judge B.
"""

import json
from pathlib import Path

from errors import ArgumentParser, UserError, run_main, shorten
from files import describe


def print_rows(rows):
    """Print (name, value) pairs as a two-column table (evaluate.py and benchmark.py print theirs so too)."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("metrics", nargs="+", help="metrics.json files written by evaluate.py (required)")
    parser.add_argument("--table", action="store_true", help="a Markdown row per run instead (default: off)")
    return parser.parse_args(argv)


def read(path, figures):
    """figures(one metrics.json), or one line saying why not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{shorten(path)} is {describe(path)}; give metrics.json files written by evaluate.py")
    try:
        return figures(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"cannot read {path} as this version's evaluate.py metrics.json ({type(error).__name__})")


TABLE_HEADER = (
    "| guidance | top-p | draws | accuracy A / B | FID/recon. A / B | near-copies | images/s |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def draws_cell(draws):
    """The table's name for a draw setting: "1", or "first of 8" for reranked draws."""
    return "1" if draws == "1" else f"first of {draws}"


def percent_pair(a, b):
    """Two shares, judge A / judge B, as percentages."""
    return f"{100 * a:.1f} / {100 * b:.1f}"


def table_rows(m):
    """Markdown rows of one metrics.json: its one-draw set, then its reranked set where there is one."""
    rows = []
    for draws, d in m["draws"].items():
        speed = m["sampling_images_per_second"] if draws == "1" else m["reranked_images_per_second"]
        rows.append(
            f"| {m['guidance']:g} | {m['top_p'] or 'off'} | {draws_cell(draws)} "
            f"| {percent_pair(d['A']['prompt_accuracy'], d['B']['prompt_accuracy'])}% "
            f"| {d['A']['fid_over_dvae']:.2f} / {d['B']['fid_over_dvae']:.2f} "
            f"| {100 * d['near_copies']:.1f}% | {speed:.0f} |"
        )
    return rows


SCENE_TABLE_HEADER = (
    "| guidance | draws | overall A / B | single object | two objects | counting | colours | position "
    "| colour attribution |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def scene_table_rows(m):
    """Markdown rows of one scenes metrics.json: one draw, then reranked; every share judge A / judge B."""
    rows = []
    for draws, judges in m["draws"].items():
        a, b = judges["A"], judges["B"]
        cells = [percent_pair(a["overall"], b["overall"]) + "%"] + [
            percent_pair(c["all"], b["categories"][name]["all"]) for name, c in a["categories"].items()
        ]
        rows.append(f"| {m['guidance']:g} | {draws_cell(draws)} | " + " | ".join(cells) + " |")
    return rows


def table(m):
    """(header, Markdown rows) of one metrics.json, scenes or single images."""
    if m.get("dataset") == "scenes":
        return SCENE_TABLE_HEADER, scene_table_rows(m)
    return TABLE_HEADER, table_rows(m)


def scene_headline(m):
    """The scenes benchmark's figures by name: overall and per category, held-out over seen, the ceilings."""
    figures = {}
    for draws, judges in m["draws"].items():
        kind = "one draw" if draws == "1" else f"first of {draws}"
        for j, d in judges.items():
            figures[f"{kind}: overall (%, judge {j})"] = 100 * d["overall"]
            for name, c in d["categories"].items():
                figures[f"{kind}: {name} (%, judge {j})"] = 100 * c["all"]
                if c["held_out"] is not None and c["seen"]:
                    figures[f"{kind}: {name}, held-out / seen (judge {j})"] = c["held_out"] / c["seen"]
    for j, c in m["ceilings"].items():
        figures[f"ceiling: scorer on true scenes (%, judge {j})"] = 100 * c["scorer_true"]["overall"]
        figures[f"ceiling: true scenes through the dVAE (%, judge {j})"] = 100 * c["through_dvae"]["overall"]
    return figures


def headline(m):
    """The figures the README reports, by name, from one metrics.json."""
    if m.get("dataset") == "scenes":
        return scene_headline(m)
    kept = max(m["draws"], key=int)  # the reranked draws where there are some
    d, figures = m["draws"][kept], {}
    for j, judge in m["judges"].items():
        figures[f"prompt accuracy (judge {j})"] = 100 * d[j]["prompt_accuracy"]
        figures[f"judge {j} FID / dVAE reconstructions' FID"] = d[j]["fid_over_dvae"]
        figures[f"judge {j} FID / real-vs-real floor"] = d[j]["fid_over_floor"]
        figures[f"judge {j} unsure, samples / real"] = d[j]["unsure"] / max(judge["unsure_on_real"], 1e-9)
    figures["near-copies (%)"] = 100 * d["near_copies"]
    for j, z in d.get("zero_shot", {}).items():
        for group in ("seen", "held_out"):
            figures[f"{group} pairs: class and colour right (%, judge {j})"] = 100 * z[group]["both"]
        figures[f"held-out / seen, class and colour (judge {j})"] = z["held_out_over_seen"]
    for group, share in (m["reranker_accuracy"] or {}).items():
        figures[f"reranker retrieval, {group} (%)"] = 100 * share
    figures["bits per image token"] = m["bits_per_image_token"]
    figures["dVAE MSE"] = m["dvae"]["mse"]
    return figures


def main():
    args = parse_args()
    if args.table:
        tables = [read(path, table) for path in args.metrics]
        if len({header for header, _ in tables}) > 1:
            raise UserError("--table takes runs of one kind: give scenes metrics and single-image metrics apart")
        print("\n".join([tables[0][0]] + [row for _, rows in tables for row in rows]))
        return
    runs = [read(path, headline) for path in args.metrics]
    rows = [("figure", f"mean [lowest, highest] over {len(runs)} runs")]
    for name in runs[0]:
        values = [run[name] for run in runs if name in run]
        rows.append((name, f"{sum(values) / len(values):.4g} [{min(values):.4g}, {max(values):.4g}]"))
    print_rows(rows)


if __name__ == "__main__":
    run_main(main)
