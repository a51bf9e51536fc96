#!/usr/bin/env python
"""Per-run and pooled CPU ratios from bench_cpu_ratios.py's runs log.

    python benchmarks/pool_runs.py                                   # every run in the log
    python benchmarks/pool_runs.py --from "full run 1 at 5a37974" --skip "malloc keep"

The log (benchmarks/results/cpu_ratios_runs.log) holds one run per `# label` line, followed
by that run's `[section] {json}` lines (the `result` of each section of a report .json);
`# ...` lines with no section after them are a round's header or notes (`--from` matches them
too). For every run with a block, sweep or bandwidth
section this prints one row of the ratios the CPU-speed targets name, then, over the
selected runs, each ratio's median, range and how many runs meet its target:

- sweep d12 / d24 / d48: mHC / HC `Trainer.step`, medians (target <= 1.3);
- eager: MHC eager / residual block, medians (<= 1.35);
- compiled / eager res, compiled / compiled res: MHC under torch.compile against the eager
  and the compiled residual block, as ratios of medians and of minima (<= 1.10);
- pre-agg / post-res fwd+bwd: % of the copy bandwidth measured in the same rounds (>= 40);
- static / eager res (no target): a 4-stream mixing with fixed coefficients around the same
  MLP under torch.compile, against the eager residual block, ratio of medians: the floor of
  the compiled block's ratio (runs since the contender was added).

A run that lacks a section (block-only runs, runs from before a contender was added) has
no value in that column and is not counted for it.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "benchmarks" / "results" / "cpu_ratios_runs.log"

# column -> (target, True when a value <= target meets it / False when >= target does)
TARGETS = {
    "sweep d12": (1.3, True), "sweep d24": (1.3, True), "sweep d48": (1.3, True),
    "eager": (1.35, True),
    "compiled / eager res": (1.10, True), "compiled / eager res, minima": (1.10, True),
    "compiled / compiled res": (1.10, True), "compiled / compiled res, minima": (1.10, True),
    "pre-agg fwd+bwd %": (40.0, False), "post-res fwd+bwd %": (40.0, False),
}
# columns reported beside the targets, with no target of their own
UNTARGETED = ("static / eager res",)


def parse_log(text: str) -> list[tuple[str, dict, tuple]]:
    """[(label, {section: result}, notes)] in log order: one entry per `# label` line that is
    followed by at least one `[section] {json}` line; notes are the `# ...` lines between the
    previous run and this label (round headers). A section that repeats under one label
    starts a further run of that label ("label [2]", ...): several runs logged under one
    comment. ValueError names a malformed line."""
    runs: list[tuple[str, dict, tuple]] = []
    comments: list[str] = []
    sections: dict = {}
    repeat = 1
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# "):
            if sections:
                runs.append((_numbered(comments[-1], repeat), sections, tuple(comments[:-1])))
                comments, sections, repeat = [], {}, 1
            comments.append(line[2:].strip())
        elif line.startswith("["):
            name, _, payload = line.partition("] ")
            if not comments:
                raise ValueError(f"line {number}: a section before any '# label' line")
            try:
                result = json.loads(payload)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {number}: expected '[section] {{json}}', {e}") from None
            if name[1:] in sections:  # the same section again: the label's next run
                runs.append((_numbered(comments[-1], repeat), sections, tuple(comments[:-1])))
                sections, repeat = {}, repeat + 1
            sections[name[1:]] = result
        elif line.strip():
            raise ValueError(f"line {number}: expected '# label' or '[section] {{json}}', got {line[:60]!r}")
    if sections:
        runs.append((_numbered(comments[-1], repeat), sections, tuple(comments[:-1])))
    return runs


def _numbered(label: str, repeat: int) -> str:
    return label if repeat == 1 else f"{label} [{repeat}]"


def _positive(entry: dict, key: str) -> float:
    """A time or percentage field of one result: a finite number > 0, else ValueError."""
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key} = {value!r}, expected a finite number > 0")
    return float(value)


def _ratio(a: dict, b: dict, key: str) -> float:
    ratio = _positive(a, key) / _positive(b, key)
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"{key} ratio {ratio!r} is not a finite positive number")
    return ratio


def run_ratios(sections: dict) -> dict:
    """The target ratios of one run (only those its sections allow). ValueError / KeyError /
    TypeError for sections that are not bench_cpu_ratios.py results."""
    out = {}
    sweep = sections.get("sweep", {})
    for depth in (12, 24, 48):
        s = sweep.get(f"depth{depth}")
        if s and "mhc" in s and "hc" in s:
            out[f"sweep d{depth}"] = _ratio(s["mhc"], s["hc"], "median_ms")
    block = sections.get("block", {})
    res = block.get("residual")
    if res and "mhc eager" in block:
        out["eager"] = _ratio(block["mhc eager"], res, "median_ms")
    comp, comp_res = block.get("mhc compiled"), block.get("residual compiled")
    if res and comp:
        out["compiled / eager res"] = _ratio(comp, res, "median_ms")
        out["compiled / eager res, minima"] = _ratio(comp, res, "min_ms")
    if res and "static mixing compiled" in block:
        out["static / eager res"] = _ratio(block["static mixing compiled"], res, "median_ms")
    if comp and comp_res:
        out["compiled / compiled res"] = _ratio(comp, comp_res, "median_ms")
        out["compiled / compiled res, minima"] = _ratio(comp, comp_res, "min_ms")
    bandwidth = sections.get("bandwidth", {})
    for key, column in (("pre_aggregate fwd+bwd", "pre-agg fwd+bwd %"), ("post_residual fwd+bwd", "post-res fwd+bwd %")):
        if key in bandwidth:
            out[column] = _positive(bandwidth[key], "pct_copy")
    return out


def select(runs: list, start: str | None, skip: list[str]) -> list:
    """(label, sections) of the runs from the first whose label, or a `# ...` line before it
    (a round header), contains `start`, without those whose label contains any of `skip`.
    ValueError when no such line contains `start`."""
    if start is not None:
        first = next((i for i, (label, _, notes) in enumerate(runs)
                      if any(start in line for line in (label, *notes))), None)
        if first is None:
            raise ValueError(f"--from: no run has a label or a round header before it containing {start!r}")
        runs = runs[first:]
    return [(label, s) for label, s, _ in runs if not any(word in label for word in skip)]


def pooled(rows: list[dict]) -> dict:
    """column -> (median, min, max, runs meeting the target, runs with a value); runs meeting
    the target is None for an UNTARGETED column."""
    out = {}
    for column in (*TARGETS, *UNTARGETED):
        values = [r[column] for r in rows if column in r]
        if values:
            if column in TARGETS:
                target, at_most = TARGETS[column]
                met = sum((v <= target) if at_most else (v >= target) for v in values)
            else:
                met = None
            out[column] = (statistics.median(values), min(values), max(values), met, len(values))
    return out


def markdown(selected: list) -> str:
    """The per-run table and the pooled one. ValueError names a run whose sections lack a
    field the ratios need."""
    rows = []
    for label, sections in selected:
        try:
            rows.append(run_ratios(sections))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"run {label!r}: its sections are not bench_cpu_ratios.py results "
                             f"({type(e).__name__}: {e})") from None
    if not any(rows):
        raise ValueError("no selected run has a sweep, block or bandwidth result to take a ratio of")
    columns = [c for c in (*TARGETS, *UNTARGETED) if any(c in r for r in rows)]
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for (label, _), r in zip(selected, rows):
        cells = [f"{r[c]:.{1 if c.endswith('%') else 3}f}" if c in r else "" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | target | median | range | runs meeting the target |", "|---|---|---|---|---|"]
    for column, (median, low, high, met, count) in pooled(rows).items():
        digits = 1 if column.endswith("%") else 3
        if column in TARGETS:
            target, at_most = TARGETS[column]
            target_cell, met_cell = f"{'<=' if at_most else '>='} {target:g}", f"{met} of {count}"
        else:
            target_cell, met_cell = "none", f"({count} runs)"
        lines.append(f"| {column} | {target_cell} | {median:.{digits}f} | "
                     f"{low:.{digits}f}-{high:.{digits}f} | {met_cell} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", nargs="?", default=str(LOG), help="the runs log (default: %(default)s)")
    ap.add_argument("--from", dest="start", metavar="TEXT",
                    help="start at the first run whose label or round header contains TEXT")
    ap.add_argument("--skip", metavar="TEXT", action="append", default=[],
                    help="leave out runs whose label contains TEXT (repeatable)")
    args = ap.parse_args(argv)
    try:
        text = Path(args.log).read_text()
        selected = select(parse_log(text), args.start, args.skip)
        if not selected:
            raise ValueError("no run selected")
        table = markdown(selected)
    except (OSError, ValueError) as e:
        ap.error(f"{args.log}: {e}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
