"""argparse types shared by the benchmark scripts (no torch import: gpu_check parses its
arguments before it imports the machine's torch). Each raises argparse.ArgumentTypeError,
so a bad value is a usage error naming what was expected, before anything runs.

    positive_int("8") -> 8             counts, sizes (>= 1)
    non_negative_int("0") -> 0         token counts where an empty batch is meaningful
    shape_pair("4096:16384") -> (4096, 16384)    a (C, tokens) pair, both >= 1
    positive_float("35") -> 35.0       time budgets (> 0, finite)
    out_folder("results") -> Path      a report folder: absent (created later) or a writable directory
    out_file("r.json") -> Path         a report file: not a folder, its folder creatable and writable
    file_stem("bench") -> "bench"      a report file name without suffix (no folder part)
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from mhc_core.experiments.out_paths import folder_problem


def _int(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum} ({what}), got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum} ({what}), got {value}")
    return value


def positive_int(text: str) -> int:
    return _int(text, 1, "a count or size")


def non_negative_int(text: str) -> int:
    return _int(text, 0, "0 is an empty batch")


def shape_pair(text: str) -> tuple[int, int]:
    """'C:T' -> (C, T), both integers >= 1."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected C:T, two integers >= 1 such as 4096:16384, got {text!r}")
    try:
        return tuple(_int(p, 1, "C:T such as 4096:16384") for p in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected C:T, two integers >= 1 such as 4096:16384, got {text!r}") from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 (seconds), got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 (seconds), got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def out_folder(text: str) -> Path:
    """A folder for reports: one that exists, or none yet (the script creates it, parents
    included); a file there, a file on its path, or a folder we cannot write is refused now,
    not after a sweep has run for a minute."""
    path = Path(text)
    problem = folder_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"expected a folder for the reports, got {text!r}, {problem}")
    return path


def out_file(text: str) -> Path:
    """A report file path: not an existing folder, and its folder can be created and written."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file path for the report, got {text!r}, which is a folder")
    problem = folder_problem(path.parent)
    if problem:
        raise argparse.ArgumentTypeError(f"expected a file path for the report, got {text!r}, {problem}")
    return path


def file_stem(text: str) -> str:
    """A report file name without suffix, written inside --out: no folder separators, not empty."""
    if not text or text in (".", "..") or "/" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"expected a file name stem such as 'bench' (no folder part: the "
                                         f"folder is --out), got {text!r}")
    return text
