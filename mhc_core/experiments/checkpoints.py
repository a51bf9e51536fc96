"""Resumable runs, framework-free: checkpoints as safetensors + JSON, written atomically.

A checkpoint of step s (the number of steps done) is two files in one directory:

    ckpt-00000040.safetensors   every array (model, optimizer, RNG), numpy dtypes
    ckpt-00000040.json          {"step", "meta" (JSON state: data position, optimizer
                                 hyper-parameters, counters...), "tensors_file",
                                 "tensors_bytes", "tensors_sha256", "meta_sha256"}

Both are written to a `.tmp` name, flushed and fsync'd, then renamed (POSIX rename is
atomic), the JSON last: it is the commit record, so a kill at any instant leaves either
a complete checkpoint or none. Loading checks the JSON parses, the tensor file exists and
has the recorded size and SHA-256, the meta has its recorded SHA-256, and the safetensors
header parses; a checkpoint failing any check is reported (`Loaded.problems`, and a
warning) and the previous one is used. The newest `keep` (default 2) are kept; saving
step s removes any checkpoint newer than s (a run resumed from before it).

`RunCheckpointer` adds the bookkeeping of a training loop that logs `metrics.jsonl`:
each checkpoint records how many metric lines were written when it was taken, and
resuming truncates the log back to that count, so after any number of kills and
restarts the log has every step exactly once.

Backends provide what goes in (`mhc_core_torch.training.checkpoint`,
`mhc_core_mlx.training.checkpoint`: capture / restore of model, optimizer and RNG).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import checks

FORMAT = "mhc-checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{8,})\.json$")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems / platforms cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _meta_digest(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


@dataclass
class Loaded:
    """The newest valid checkpoint (step, arrays, meta) or none (step 0), and the problems
    found on the way: one sentence per skipped checkpoint."""

    step: int = 0
    tensors: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: str | None = None
    problems: list = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.path is not None


class CheckpointStore:
    """Atomic, checksummed checkpoints in `directory`, keeping the newest `keep`."""

    def __init__(self, directory: str, keep: int = 2):
        self.directory, self.keep = directory, checks.integer(keep, "keep")

    def _paths(self, step: int) -> tuple[str, str]:
        base = os.path.join(self.directory, f"ckpt-{step:08d}")
        return base + ".safetensors", base + ".json"

    def _check_directory(self) -> None:
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"checkpoint directory {self.directory} is not a directory")

    def steps(self) -> list[int]:
        """Steps with a commit record (JSON), newest first; validity is not checked here.
        NotADirectoryError when the directory's path is a file."""
        self._check_directory()
        if not os.path.isdir(self.directory):
            return []
        found = (_NAME.match(f) for f in os.listdir(self.directory))
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def save(self, step: int, tensors: dict[str, np.ndarray], meta: dict) -> str:
        """Write checkpoint `step` (tensors: name -> numpy array; meta: JSON-able); returns
        the JSON path. Older checkpoints beyond `keep` are deleted afterwards. The meta is
        stored as JSON reads it back (integer keys become strings, tuples lists), and its
        checksum is taken over that form."""
        from safetensors.numpy import save as st_save

        step = checks.integer(step, "step", minimum=0, meaning="steps done")
        meta = json.loads(json.dumps(meta))  # a meta that is not JSON fails here, before any write
        arrays = {k: np.require(v, requirements="C") for k, v in tensors.items()}  # keeps 0-d shapes
        blob = st_save(arrays, metadata={"format": FORMAT, "step": str(step)})
        st_path, js_path = self._paths(step)
        record = {"format": FORMAT, "step": step, "tensors_file": os.path.basename(st_path),
                  "tensors_bytes": len(blob), "tensors_sha256": hashlib.sha256(blob).hexdigest(),
                  "meta_sha256": _meta_digest(meta), "meta": meta}
        text = json.dumps(record, indent=1, sort_keys=True).encode()
        self._check_directory()
        os.makedirs(self.directory, exist_ok=True)
        atomic_write(st_path, blob)
        atomic_write(js_path, text)
        self._prune(step)
        return js_path

    def _prune(self, saved: int) -> None:
        """Keep the newest `keep` checkpoints up to `saved`, the one just written. Newer ones
        are removed: a run saving step `saved` resumed from before them (they were damaged,
        and the metrics log was cut back past them), and kept they would push out the
        checkpoints the run is now writing."""
        steps = self.steps()
        older = [s for s in steps if s <= saved]
        for step in [s for s in steps if s > saved] + older[self.keep:]:
            for p in self._paths(step):
                if os.path.exists(p):
                    os.remove(p)
        for f in os.listdir(self.directory):  # leftovers of writes killed half-way
            if f.endswith(".tmp"):
                os.remove(os.path.join(self.directory, f))

    def _read(self, step: int) -> Loaded:
        """Load and verify checkpoint `step`; raises ValueError saying what is wrong."""
        from safetensors.numpy import load as st_load

        st_path, js_path = self._paths(step)
        try:
            with open(js_path, "rb") as f:
                record = json.loads(f.read())
        except (OSError, ValueError) as err:
            raise ValueError(f"{js_path}: unreadable JSON ({err})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("step") != step:
            raise ValueError(f"{js_path}: not a {FORMAT} record for step {step}")
        missing = [k for k in ("tensors_bytes", "tensors_sha256", "meta_sha256", "meta") if k not in record]
        if missing:
            raise ValueError(f"{js_path}: the record lacks {', '.join(missing)}")
        if _meta_digest(record.get("meta")) != record.get("meta_sha256"):
            raise ValueError(f"{js_path}: meta checksum mismatch (the JSON was altered)")
        try:
            with open(st_path, "rb") as f:
                blob = f.read()
        except OSError as err:
            raise ValueError(f"{st_path}: missing ({err.strerror})") from None
        if len(blob) != record["tensors_bytes"]:
            raise ValueError(f"{st_path}: {len(blob)} bytes, the record says {record['tensors_bytes']} (truncated?)")
        if hashlib.sha256(blob).hexdigest() != record["tensors_sha256"]:
            raise ValueError(f"{st_path}: SHA-256 mismatch (corrupted)")
        try:
            tensors = st_load(blob)
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad checkpoint
            raise ValueError(f"{st_path}: not a readable safetensors file ({err})") from None
        return Loaded(step=step, tensors=tensors, meta=record["meta"], path=js_path)

    def load_latest(self, *, warn: bool = True) -> Loaded:
        """The newest checkpoint that passes every check; problems with newer ones are
        listed in `.problems` (and warned about). Step 0 and no path when none is valid."""
        problems = []
        for step in self.steps():
            try:
                loaded = self._read(step)
            except ValueError as err:
                problems.append(f"checkpoint {step} skipped: {err}")
                continue
            loaded.problems = problems
            break
        else:
            loaded = Loaded(problems=problems)
        if warn:
            for p in problems:
                warnings.warn(p, RuntimeWarning, stacklevel=2)
        return loaded


class RunCheckpointer:
    """Checkpoint a training loop every `every` steps and resume it, metrics log included.

        ckpt = RunCheckpointer(run_dir, every=K)
        loaded = ckpt.resume()                 # truncates run_dir/metrics.jsonl to match
        if loaded.found: restore(loaded.tensors, loaded.meta)
        with ckpt.open_log() as log:           # append mode
            for step in range(loaded.step, steps):
                ...; log.write(json.dumps(record) + "\\n"); log.flush()
                ckpt.step_done(step + 1, capture, final=(step + 1 == steps))

    `capture()` returns (tensors, meta); the checkpointer adds to meta the number of
    metric lines written so far under "metrics_lines".

    readonly=True (the other ranks of a data-parallel run): `resume` loads but never
    touches the log, `open_log` discards what is written, `step_done` saves nothing.
    """

    def __init__(self, run_dir: str, every: int, *, keep: int = 2, log_name: str = "metrics.jsonl",
                 subdir: str = "checkpoints", readonly: bool = False):
        self.every = checks.integer(every, "checkpoint every")
        self.store = CheckpointStore(os.path.join(run_dir, subdir), keep=keep)
        self.log_path = os.path.join(run_dir, log_name)
        self.lines = 0
        self._log = None
        self.readonly = readonly

    def resume(self) -> Loaded:
        """Load the newest valid checkpoint and cut the metrics log back to it (a fresh run,
        step 0, when there is none: the log is emptied). Problems are reported on stderr."""
        loaded = self.store.load_latest(warn=False)
        if self.readonly:
            return loaded
        for p in loaded.problems:
            print(f"[resume] {p}; using the previous one", flush=True, file=sys.stderr)
        keep = int(loaded.meta.get("metrics_lines", 0)) if loaded.found else 0
        self.lines = self._truncate_log(keep)
        if self.lines != keep:
            raise RuntimeError(f"{self.log_path} has {self.lines} complete lines but checkpoint "
                               f"{loaded.step} recorded {keep}: the log was edited or lost")
        return loaded

    def _truncate_log(self, keep: int) -> int:
        """Keep the first `keep` complete lines of the log (atomically); returns how many."""
        lines = []
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)  # a new run's directory
        if os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                for raw in f:
                    if len(lines) == keep or not raw.endswith(b"\n"):
                        break  # beyond the checkpoint, or a line cut by the kill
                    lines.append(raw)
        atomic_write(self.log_path, b"".join(lines))
        return len(lines)

    def open_log(self):
        """The metrics log opened for appending (text, line-buffered)."""
        self._log = _CountingLog(self, open(os.devnull if self.readonly else self.log_path, "a", buffering=1))
        return self._log

    def step_done(self, steps_done: int, capture: Callable[[], tuple[dict, dict]], *, final: bool = False) -> bool:
        """Save when `steps_done` is a multiple of `every` (or `final`); returns whether it did."""
        if self.readonly or (steps_done % self.every and not final):
            return False
        if self._log is not None and not self._log.closed:
            self._log.sync()  # the checkpoint must never count a line the disk lacks
        tensors, meta = capture()
        self.store.save(steps_done, tensors, {**meta, "metrics_lines": self.lines})
        return True


class _CountingLog:
    """A text file that counts the lines written through it (for `metrics_lines`)."""

    def __init__(self, owner: RunCheckpointer, f):
        self._owner, self._f = owner, f

    def write(self, text: str) -> int:
        self._owner.lines += text.count("\n")
        return self._f.write(text)

    def flush(self) -> None:
        self._f.flush()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
