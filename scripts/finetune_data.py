"""Text, tokens and batches for scripts/finetune.py and scripts/compare_generation.py
(framework-free), and the checks on what the user passed.

- `load_text(source)`: a text file, or "stdlib": this Python's standard-library sources
  (the offline corpus: sorted *.py files, nothing downloaded).
- `load_tokenizer(model_dir, vocab_size)`: the Hugging Face tokenizer saved in the model
  directory, or, when there is none, UTF-8 bytes as token ids (needs vocab_size >= 256).
- `batch_at(tokens, step, batch, seq_len, seed)`: the batch of step `step`, a pure
  function of its arguments, so a resumed run sees the batches it would have seen.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import sysconfig

import numpy as np

MIXING_LR = 8.6e-4  # the Qwen3 seed's learning rate for phi / bias / alpha


def load_text(source: str, max_chars: int = 2_000_000) -> str:
    """The training text: the file at `source`, or 'stdlib' for the standard library's
    sources (first `max_chars` characters of the sorted files). Empty text is an error."""
    if source == "stdlib":
        root = sysconfig.get_paths()["stdlib"]
        parts, total = [], 0
        for path in sorted(glob.glob(os.path.join(root, "*.py"))):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
            total += len(parts[-1])
            if total >= max_chars:
                break
        text = "".join(parts)[:max_chars]
        where = f"the standard library at {root}"
    else:
        if not os.path.isfile(source):
            raise ValueError(f"text source {source!r}: no such file (pass a text file or 'stdlib')")
        with open(source, encoding="utf-8", errors="replace") as f:
            text = f.read()
        where = repr(source)
    if not text.strip():
        raise ValueError(f"text source {where} is empty: fine-tuning needs some text")
    return text


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 (for models saved without a tokenizer)."""

    def __init__(self, vocab_size: int):
        if vocab_size < 256:
            raise ValueError(f"no tokenizer saved with the model and its vocab_size {vocab_size} < 256: "
                             "byte tokens need 256 ids; save the tokenizer next to the model")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """UTF-8 text of the byte ids; an id that is no byte (a vocabulary above 256) shows
        as <id>, so every generated token appears in the text."""
        parts, run = [], bytearray()
        for i in map(int, ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            parts += [run.decode("utf-8", errors="replace"), f"<{i}>"]
            run = bytearray()
        return "".join([*parts, run.decode("utf-8", errors="replace")])


def load_tokenizer(model_dir: str, vocab_size: int):
    """The tokenizer saved in `model_dir` (tokenizer.json / tokenizer_config.json), else bytes."""
    if any(os.path.isfile(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        return _HFTokenizer(tok)
    return ByteTokenizer(vocab_size)


class _HFTokenizer:
    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def batch_at(tokens: np.ndarray, step: int, batch: int, seq_len: int, seed: int, stream: int = 0) -> np.ndarray:
    """[batch, seq_len + 1] int64 windows of `tokens` at offsets drawn from (seed, stream,
    step): stream 0 for training, 1 for the fixed batch the drift is measured on."""
    if len(tokens) < seq_len + 1:
        raise ValueError(f"the text gives {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    starts = np.random.default_rng([seed, stream, step]).integers(0, len(tokens) - seq_len, size=batch)
    return np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64)


def positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def non_negative(name: str, value: float) -> float:
    """A finite number >= 0 (nan and inf refused: they turn every weight they touch into nan)."""
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be >= 0 and finite, got {value}")
    return float(value)


def read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{model_dir!r} has no config.json: pass a save_pretrained directory")
    with open(path) as f:
        return json.load(f)


def converted_config(model_dir: str, hint: str = "pass --convert to convert a Hugging Face model first") -> dict:
    """config.json of a converted checkpoint; a clear error (ending in `hint`) when it is not one."""
    config = read_config(model_dir)
    if not config.get("mhc"):
        raise ValueError(f"{model_dir!r} is not a converted mHC checkpoint (config.json has no 'mhc' entry): {hint}")
    return config


def unsupported_family(model_dir: str, err: Exception) -> ValueError:
    """The error for a model `convert` cannot handle."""
    family = read_config(model_dir).get("model_type", "?")
    return ValueError(f"model family {family!r} ({model_dir}) is not supported by convert: it handles pre-LN "
                      f"decoders (Llama, Qwen2, Qwen3, Mistral, ...): {err}")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "generation_config.json")


def copy_tokenizer(source_dir: str, out_dir: str) -> None:
    """Copy the tokenizer files of `source_dir` (those it has) into `out_dir`."""
    for f in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source_dir, f)):
            shutil.copy(os.path.join(source_dir, f), os.path.join(out_dir, f))


def vocab_size(model_dir: str) -> int:
    config = read_config(model_dir)
    return int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"))
