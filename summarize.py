"""Mean and spread of evaluate.py's figures over several runs (seeds), as the README reports them.

    python summarize.py output/eval_s0/metrics.json output/eval_s1/metrics.json output/eval_s2/metrics.json

For each figure: the mean over the runs and, in brackets, the lowest and highest run. A
difference between two settings smaller than these ranges is noise, not a reason.
"""

import argparse
import json
from pathlib import Path

from common import print_rows
from errors import UserError, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", help="metrics.json files written by evaluate.py (required)")
    return parser.parse_args(argv)


def read(path):
    """One metrics.json's headline figures, or one line saying why not."""
    path = Path(path)
    try:
        return headline(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"cannot read {path} as this version's evaluate.py metrics.json ({type(error).__name__})")


def headline(m):
    """The figures the README reports, by name, from one metrics.json."""
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
    runs = [read(path) for path in args.metrics]
    rows = [("figure", f"mean [lowest, highest] over {len(runs)} runs")]
    for name in runs[0]:
        values = [run[name] for run in runs if name in run]
        rows.append((name, f"{sum(values) / len(values):.4g} [{min(values):.4g}, {max(values):.4g}]"))
    print_rows(rows)


if __name__ == "__main__":
    run_main(main)
