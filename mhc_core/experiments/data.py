"""Real data for the depth sweep, offline (numpy, framework-free): digits images and text bytes.

Nothing is downloaded: the images are the 8x8 handwritten digits that scikit-learn's wheel
ships (`sklearn.datasets.load_digits`, 1,797 images, 10 classes), the text is a fixed list
of Python standard-library source files read from this interpreter's own install.

- digits: each image (pixel values 0..16, scaled to [0, 1]) cut into non-overlapping
  `patch x patch` squares, row-major, one token per square: inputs [B, T, P] float32 with
  T = (8 / patch)^2 and P = patch^2; targets [B] int32 class labels. Fixed split: a
  permutation drawn from seed `SPLIT_SEED` (independent of the run's seed), the last
  `DIGITS_TEST` images held out.
- text: byte-level next-token prediction (vocab 256) on the concatenated sources: the
  first 90% of the bytes train, the last 10% are held out. Inputs / targets [B, T] int32,
  mask [T] all ones (every byte is a target).

Every stream has the interface of `tasks.TaskStream` (`next()`, `batch(i)`, `position`,
`state()`), so checkpoints resume it, plus `eval_set()`: the held-out examples the sweep
scores every --eval-every steps (`describe()` records what they are in config.json).
Training batches are a pure function of (seed, batch index): rows drawn uniformly with
replacement from the training split.
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass, field

import numpy as np

from .. import checks
from .tasks import TASKS as SYNTHETIC_TASKS
from .tasks import TaskStream

REAL_TASKS = ("digits", "text")
ALL_TASKS = SYNTHETIC_TASKS + REAL_TASKS
SPLIT_SEED = 0
DIGITS_TEST = 450  # held-out images (25% of 1,797)
DIGITS_SIDE = 8
TEXT_FILES = ("argparse.py", "difflib.py", "textwrap.py", "typing.py", "inspect.py", "pathlib.py")
TEXT_MAX_BYTES = 600_000
TEXT_HELDOUT = 0.1
SYNTHETIC_EVAL_SEED = 10_007  # held-out batches of a synthetic task come from this seed


def task_kind(task: str) -> str:
    """'patches' (digits: float patches in, one class out) or 'tokens' (every other task)."""
    if task not in ALL_TASKS:
        raise ValueError(f"task must be one of {ALL_TASKS}, got {task!r}")
    return "patches" if task == "digits" else "tokens"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float64 in [0, 1], labels [1797] int) from scikit-learn's wheel.

    ImportError naming the package to install when scikit-learn is missing."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits task needs scikit-learn (its wheel ships the 8x8 digits images): "
                          "pip install scikit-learn") from e
    d = load_digits()
    return np.asarray(d.images, dtype=np.float64) / 16.0, np.asarray(d.target)


def patchify(images: np.ndarray, patch: int) -> np.ndarray:
    """images [N, S, S] -> [N, (S/patch)^2, patch^2]: non-overlapping squares, row-major."""
    n, s, s2 = images.shape
    if s != s2 or patch < 1 or s % patch:
        raise ValueError(f"patch must be >= 1 and divide the image side {s}, got {patch}")
    g = s // patch
    x = images.reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4)
    return x.reshape(n, g * g, patch * patch)


def text_corpus() -> tuple[bytes, dict]:
    """(bytes, description): the TEXT_FILES of this interpreter's standard library,
    concatenated in that order, cut at TEXT_MAX_BYTES."""
    stdlib = sysconfig.get_paths()["stdlib"]
    parts, used = [], []
    for name in TEXT_FILES:
        path = os.path.join(stdlib, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                parts.append(f.read())
            used.append(name)
    data = b"".join(parts)[:TEXT_MAX_BYTES]
    if len(data) < 10_000:
        raise RuntimeError(f"the text task found only {len(data)} bytes of standard-library sources in {stdlib}")
    return data, {"corpus": "Python standard-library sources", "stdlib": stdlib, "files": used,
                  "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class DataStream:
    """Training batches and a held-out set of a real task ('digits' or 'text').

    seq_len: text window length (digits: ignored, T comes from `patch`). eval_size:
    held-out examples scored by `eval_set()` (digits: images, at most DIGITS_TEST; text:
    windows evenly spaced over the held-out bytes, at most one per distinct start); 0 = every
    held-out image / 256 windows. A larger eval_size is a ValueError (it used to be cut silently).
    """

    task: str = "digits"
    seq_len: int = 32
    batch_size: int = 16
    seed: int = 0
    position: int = 0
    patch: int = 2
    eval_size: int = 0
    _arrays: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.task not in REAL_TASKS:
            raise ValueError(f"DataStream task must be one of {REAL_TASKS}, got {self.task!r}")
        for name, low in (("seq_len", 1), ("batch_size", 1), ("patch", 1), ("eval_size", 0), ("seed", 0),
                          ("position", 0)):
            # numpy integers are accepted and stored as int (state() is written to JSON)
            setattr(self, name, checks.integer(getattr(self, name), f"DataStream.{name}", minimum=low))
        if self.task == "digits":
            images, labels = load_digits_arrays()
            x = patchify(images, self.patch).astype(np.float32)
            order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
            train, test = order[:-DIGITS_TEST], order[-DIGITS_TEST:]
            self._arrays = {"x_train": x[train], "y_train": labels[train].astype(np.int32),
                            "x_test": x[test], "y_test": labels[test].astype(np.int32)}
            if self.eval_size > DIGITS_TEST:
                raise ValueError(f"eval_size must be at most the {DIGITS_TEST} held-out digits images "
                                 f"(0 = all of them), got {self.eval_size}")
            self._info = {"source": "sklearn.datasets.load_digits (shipped in scikit-learn's wheel)",
                          "images": int(len(x)), "train": int(len(train)), "heldout": int(len(test)),
                          "split": f"np.random.default_rng({SPLIT_SEED}).permutation; last {DIGITS_TEST} held out",
                          "pixels": "value / 16", "patch": self.patch, "tokens": int(x.shape[1]),
                          "patch_dim": int(x.shape[2])}
        else:
            data, info = text_corpus()
            cut = int(len(data) * (1 - TEXT_HELDOUT))
            arr = np.frombuffer(data, dtype=np.uint8)
            self._arrays = {"train": arr[:cut], "test": arr[cut:]}
            if len(arr) - cut < self.seq_len + 2:
                raise ValueError(f"seq_len {self.seq_len} is longer than the held-out text ({len(arr) - cut} bytes)")
            windows = len(arr) - cut - self.seq_len  # distinct window starts in the held-out bytes
            if self.eval_size > windows:
                raise ValueError(f"eval_size must be at most the {windows} distinct held-out text windows of "
                                 f"seq_len {self.seq_len} (0 = 256 of them), got {self.eval_size}")
            self._info = {**info, "train_bytes": cut, "heldout_bytes": len(arr) - cut,
                          "split": f"first {1 - TEXT_HELDOUT:.0%} of the bytes train, last {TEXT_HELDOUT:.0%} held out"}

    @property
    def vocab(self) -> int:
        """Classes (digits: 10) or byte values (text: 256)."""
        return 10 if self.task == "digits" else 256

    @property
    def tokens(self) -> int:
        """Sequence length the model sees: patches per image (digits) or seq_len (text)."""
        return self._arrays["x_train"].shape[1] if self.task == "digits" else self.seq_len

    @property
    def patch_dim(self) -> int:
        return self._arrays["x_train"].shape[2] if self.task == "digits" else 0

    def batch(self, index: int):
        """Training batch `index`: (inputs, targets, mask), see the module docstring."""
        rng = np.random.default_rng([self.seed, index])
        if self.task == "digits":
            rows = rng.integers(0, len(self._arrays["y_train"]), self.batch_size)
            return self._arrays["x_train"][rows], self._arrays["y_train"][rows], np.ones(1, np.float32)
        train = self._arrays["train"]
        starts = rng.integers(0, len(train) - self.seq_len - 1, self.batch_size)
        return self._windows(train, starts)

    def _windows(self, arr: np.ndarray, starts: np.ndarray):
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        seq = arr[idx].astype(np.int32)
        return seq[:, :-1], seq[:, 1:], np.ones(self.seq_len, np.float32)

    def eval_set(self):
        """The held-out examples (inputs, targets, mask), the same for every seed and step."""
        if self.task == "digits":
            k = self.eval_size or DIGITS_TEST
            return self._arrays["x_test"][:k], self._arrays["y_test"][:k], np.ones(1, np.float32)
        test = self._arrays["test"]
        k = self.eval_size or min(256, len(test) - self.seq_len)  # distinct starts: linspace step >= 1
        starts = np.linspace(0, len(test) - self.seq_len - 1, k).astype(np.int64)
        return self._windows(test, starts)

    def next(self):
        out = self.batch(self.position)
        self.position += 1
        return out

    def state(self) -> dict:
        return {"task": self.task, "seq_len": self.seq_len, "batch_size": self.batch_size, "seed": self.seed,
                "position": self.position, "patch": self.patch, "eval_size": self.eval_size}

    def describe(self) -> dict:
        """What config.json records of the data: source, size, split, held-out set (text:
        how many held-out windows, input and target bytes, also occur verbatim in the
        training bytes; source code repeats lines, so a split by position is not a split
        by content)."""
        out = {**self._info, "eval_examples": int(len(self.eval_set()[1]))}
        if self.task == "text":
            inputs, targets, _ = self.eval_set()
            windows = np.concatenate([inputs, targets[:, -1:]], axis=1).astype(np.uint8)
            train = self._arrays["train"].tobytes()
            out["eval_windows_in_train"] = int(sum(w.tobytes() in train for w in windows))
        return out


class SyntheticStream(TaskStream):
    """A synthetic task (tasks.TaskStream) with a held-out set: `eval_size` rows (0: 32)
    drawn from seed SYNTHETIC_EVAL_SEED, which no training stream may use (ValueError).

    A held-out seed is not held-out data: an incrementing row is fixed by its first token,
    so the task has only `vocab` distinct sequences and training draws every one of them
    (the held-out score measures fit, not generalisation); copy has vocab^k (k = half the
    row) and overlaps only at tiny vocab / seq_len. `describe()` records the count."""

    def __init__(self, *args, eval_size: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.seed == SYNTHETIC_EVAL_SEED:  # its batch 0 would be the held-out rows
            raise ValueError(f"training seed {self.seed} is SYNTHETIC_EVAL_SEED, the seed the held-out rows are "
                             "drawn from: a stream from it trains on them; use another seed")
        self.eval_size = checks.integer(eval_size, "eval_size", minimum=0) or 32

    def eval_set(self):
        held = TaskStream(self.task, vocab=self.vocab, seq_len=self.seq_len, batch_size=self.eval_size,
                          seed=SYNTHETIC_EVAL_SEED)
        return held.batch(0)

    def describe(self) -> dict:
        k = self.seq_len + 1 if self.task == "incrementing" else (self.seq_len + 2) // 2
        distinct = self.vocab if self.task == "incrementing" else self.vocab ** k
        return {"source": f"synthetic task {self.task!r} (mhc_core.experiments.tasks)",
                "heldout": f"{self.eval_size} rows from seed {SYNTHETIC_EVAL_SEED}",
                "distinct_sequences": distinct,
                "heldout_disjoint": "no: incrementing has only vocab distinct sequences, and training draws them too" if self.task == "incrementing"
                else "not enforced: rows drawn independently of training",
                "eval_examples": self.eval_size}


def make_stream(task: str, *, vocab: int, seq_len: int, batch_size: int, seed: int, patch: int = 2,
                eval_size: int = 0):
    """The training stream of `task` (any of ALL_TASKS) with its held-out `eval_set()`."""
    if task not in ALL_TASKS:
        raise ValueError(f"task must be one of {ALL_TASKS}, got {task!r}")
    if task in REAL_TASKS:
        return DataStream(task, seq_len=seq_len, batch_size=batch_size, seed=seed, patch=patch, eval_size=eval_size)
    return SyntheticStream(task, vocab=vocab, seq_len=seq_len, batch_size=batch_size, seed=seed, eval_size=eval_size)
