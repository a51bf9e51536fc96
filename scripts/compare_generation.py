"""Greedy continuations of the original model and of its mHC version, side by side, with
their logit distance.

    python scripts/compare_generation.py --original HF_DIR --mhc runs/ft/model
    python scripts/compare_generation.py --original HF_DIR --mhc CONVERTED_DIR --backend mlx \\
        --prompt "def main(" --prompt "import os" --max-new-tokens 20

For each prompt both models continue greedily (argmax, full recompute each token). The
logit distance is measured on the same tokens for both (the prompt followed by the
original's continuation): max |logits_mhc - logits_original| / max |logits_original|.
A converted model that was not trained gives the same text (and a distance at float32
rounding); after fine-tuning the two drift apart. --json writes the rows to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_data import converted_config, load_tokenizer, vocab_size  # noqa: E402

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n    def __init__(self):"]


def greedy(logits_fn, prompt: list[int], steps: int) -> list[int]:
    """`steps` argmax tokens after `prompt` (ids), recomputing the whole sequence each time."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(logits_fn(np.asarray([ids]))[0, -1])))
    return ids[len(prompt):]


def compare(original, mhc, logits_fn, tokenizer, prompts: list[str], steps: int) -> list[dict]:
    rows = []
    for text in prompts:
        prompt = tokenizer.encode(text)
        if not prompt:
            raise ValueError(f"prompt {text!r} gives no tokens")
        a = greedy(lambda ids: logits_fn(original, ids), prompt, steps)
        b = greedy(lambda ids: logits_fn(mhc, ids), prompt, steps)
        seq = np.asarray([prompt + a[:-1]]) if steps > 1 else np.asarray([prompt])
        la, lb = logits_fn(original, seq), logits_fn(mhc, seq)
        rows.append({"prompt": text, "original": tokenizer.decode(a), "mhc": tokenizer.decode(b),
                     "same_tokens": a == b, "logit_distance": float(np.abs(lb - la).max() / np.abs(la).max()),
                     "original_ids": a, "mhc_ids": b})
    return rows


def show(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        lines += [f"prompt:   {r['prompt']!r}",
                  f"original: {r['original']!r}",
                  f"mHC:      {r['mhc']!r}",
                  f"same text: {'yes' if r['same_tokens'] else 'no'}; logit distance "
                  f"(max |mhc - original| / max |original|): {r['logit_distance']:.3e}", ""]
    same = sum(r["same_tokens"] for r in rows)
    lines.append(f"{same} of {len(rows)} continuations identical; largest logit distance "
                 f"{max(r['logit_distance'] for r in rows):.3e}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", required=True, help="the Hugging Face model before conversion")
    p.add_argument("--mhc", required=True, help="the converted (and fine-tuned) checkpoint")
    p.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: three code prompts)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    prompts = list(args.prompt or [])
    if args.prompts_file:
        with open(args.prompts_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    prompts = prompts or PROMPTS
    converted_config(args.mhc, "--mhc takes what scripts/finetune.py wrote (OUT/model) or a model saved after "
                               "mhc_core_torch.convert")
    if vocab_size(args.original) != vocab_size(args.mhc):
        raise ValueError(f"--original has a vocabulary of {vocab_size(args.original)} tokens and --mhc of "
                         f"{vocab_size(args.mhc)}: --original must be the model --mhc was converted from")
    if args.backend == "torch":
        import finetune_torch as b
    else:
        import finetune_mlx as b
    original = b.load_original(args.original)
    mhc = b.load_mhc(args.mhc)
    tokenizer = load_tokenizer(args.mhc, vocab_size(args.mhc))
    rows = compare(original, mhc, b.logits, tokenizer, prompts, args.max_new_tokens)
    print(show(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        raise SystemExit(f"compare_generation: {err}") from None
