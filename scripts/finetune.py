"""Fine-tune a converted mHC model and log how its mixing drifts from the warm start.

    python scripts/finetune.py --convert HF_DIR --out runs/ft          # convert a local HF model first
    python scripts/finetune.py --model CONVERTED_DIR --out runs/ft --text corpus.txt
    python scripts/finetune.py ... --backend mlx                        # mlx-lm + mhc_core_mlx.convert

Trains next-token prediction with AdamW, one learning rate for the mixing parameters
(phi / bias / alpha, --mixing-lr, default 8.6e-4 as in the Qwen3 seed) and one for the
rest (--lr). Text: a file, or 'stdlib' (this Python's standard-library sources, offline).
Options: --bf16 (weights bf16, mixing float32), --grad-checkpointing, a progress bar.

The exact warm start is symmetric in the streams: they start as copies, and with the
mean reduction every stream gets the same gradient, so they stay copies (res cannot
learn; pre / post move together). --phi-std S adds N(0, S) noise to phi before the
first step, which makes pre / post differ slightly per stream and lets the streams
diverge (the logits then differ from the original's by about alpha * S at the start).
--pre-init 0.4,0.3,0.2,0.1 instead sets unequal pre weights summing to 1: the warm start
stays exact (h = sum_i pre_i x = x) and the streams get different gradients.

Writes into --out: metrics.jsonl (one line per step: loss; at step 0, every --log-every
steps and at the end also "drift": per mHC step alpha, identity_distance, pre_spread,
stream_similarity, on a fixed batch), checkpoints/ (every --checkpoint-every steps;
rerun the same command to resume, with a larger --steps to go on), model/ (the fine-tuned
checkpoint: scripts/analyze_model.py and scripts/compare_generation.py read it) and
summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_data import (  # noqa: E402
    MIXING_LR, batch_at, load_text, load_tokenizer, non_negative, positive, read_config, vocab_size)
from mhc_core.experiments.out_paths import folder_problem  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a converted checkpoint (save_pretrained after convert; config.json has 'mhc')")
    src.add_argument("--convert", metavar="HF_DIR", help="a local Hugging Face model to convert first")
    p.add_argument("--n", type=int, default=4, help="streams when converting (default 4)")
    p.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    p.add_argument("--text", default="stdlib", help="a text file, or 'stdlib' (default)")
    p.add_argument("--max-chars", type=int, default=2_000_000, help="characters of the stdlib corpus")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate of every non-mixing weight")
    p.add_argument("--mixing-lr", type=float, default=MIXING_LR, help="learning rate of phi / bias / alpha")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay of the non-mixing weights")
    p.add_argument("--bf16", action="store_true", help="bf16 weights and activations (mixing stays float32)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute each layer in backward")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10, help="steps between drift measurements")
    p.add_argument("--phi-std", type=float, default=0.0,
                   help="add N(0, std) to every phi before the first step (breaks the streams' symmetry; "
                        "0 keeps the exact warm start, whose streams stay identical copies)")
    p.add_argument("--pre-init", metavar="W1,W2,...",
                   help="n pre weights summing to 1 for every mHC step before the first step, e.g. "
                        "0.4,0.3,0.2,0.1: the warm start stays exact and the streams can diverge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    positive("--lr", args.lr)
    positive("--mixing-lr", args.mixing_lr)
    for name in ("steps", "batch", "seq_len", "checkpoint_every", "log_every", "n", "max_chars"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    non_negative("--phi-std", args.phi_std)
    if args.pre_init is not None:
        try:
            args.pre_init = [float(w) for w in args.pre_init.split(",")]
        except ValueError:
            raise ValueError(f"--pre-init takes comma-separated numbers, got {args.pre_init!r}") from None
    non_negative("--weight-decay", args.weight_decay)
    problem = folder_problem(args.out)
    if problem:  # else os.makedirs fails with a traceback, after the model has been loaded
        raise ValueError(f"--out expected a folder (existing, or one to create), got {args.out!r}, {problem}")
    return args


def backend(name: str):
    if name == "torch":
        import finetune_torch as b
    else:
        import finetune_mlx as b
    return b


def run_settings(args) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint."""
    keep = ("model", "convert", "n", "backend", "text", "max_chars", "batch", "seq_len", "lr", "mixing_lr",
            "weight_decay", "bf16", "phi_std", "pre_init", "seed")
    return {k: getattr(args, k) for k in keep}


def symmetry_breaking(engine, args) -> dict:
    """Additions to the mixing parameters before the first step: N(0, --phi-std) on every
    phi, and the bias that gives pre = --pre-init (mhc_core.init.pre_bias)."""
    from mhc_core.init import pre_bias

    state, deltas = engine.mixing_state(), {}
    if args.phi_std > 0:
        rng = np.random.default_rng([args.seed, 2])
        deltas.update({k: rng.normal(0.0, args.phi_std, state[k].shape) for k in sorted(state) if k.endswith(".phi")})
    if args.pre_init is not None:
        for name, n, cfg in engine.steps():
            if len(args.pre_init) != n:
                raise ValueError(f"--pre-init has {len(args.pre_init)} weights; the model's mHC steps have n = {n} streams")
            bias = state[f"{name}.bias"]
            target = pre_bias(args.pre_init, pre_eps=cfg["pre_eps"])
            deltas[f"{name}.bias"] = np.concatenate([target - bias[:n], np.zeros(bias.size - n)])
    return deltas


def layer_means(drift: list[dict]) -> dict:
    """Mean over mHC steps of each drift quantity (alpha: its three entries separately)."""
    alpha = np.mean([d["alpha"] for d in drift], axis=0)
    return {"alpha_pre": float(alpha[0]), "alpha_post": float(alpha[1]), "alpha_res": float(alpha[2]),
            **{k: float(np.mean([d[k] for d in drift])) for k in ("identity_distance", "pre_spread",
                                                                   "stream_similarity")}}


def main(argv=None) -> dict:
    args = parse(argv)
    from mhc_core.experiments.checkpoints import RunCheckpointer

    if args.convert is not None and read_config(args.convert).get("mhc"):
        # converting it again would load it as the plain model, drop its trained phi / bias /
        # alpha and start the mixing over from the warm start
        raise ValueError(f"{args.convert!r} is already a converted mHC checkpoint (config.json has an 'mhc' "
                         f"entry): pass it as --model to fine-tune it further")
    b = backend(args.backend)
    source = args.model or args.convert
    text = load_text(args.text, args.max_chars)
    tokenizer = load_tokenizer(source, vocab_size(source))
    tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
    probe = batch_at(tokens, 0, args.batch, args.seq_len, args.seed, stream=1)
    model = b.load_mhc(args.model, args.convert, n=args.n)
    engine = b.Engine(model, lr=args.lr, mixing_lr=args.mixing_lr, weight_decay=args.weight_decay,
                      bf16=args.bf16, grad_checkpointing=args.grad_checkpointing)

    settings = run_settings(args)
    os.makedirs(args.out, exist_ok=True)
    ckpt = RunCheckpointer(args.out, every=args.checkpoint_every)
    loaded = ckpt.resume()
    if loaded.found:
        if loaded.meta.get("run") != settings:
            raise ValueError(f"{args.out} holds a run with other settings {loaded.meta.get('run')}; "
                             f"this command has {settings}: use another --out")
        if loaded.step > args.steps:  # no step would run, and the longer run's model would be saved as this one
            raise ValueError(f"{args.out} holds a run with {loaded.step} steps done, more than --steps {args.steps}: "
                             f"a run cannot be cut back; pass --steps >= {loaded.step}, or another --out")
        engine.restore(loaded.tensors, loaded.meta)
        print(f"[finetune] resumed at step {loaded.step}", file=sys.stderr)
    else:
        deltas = symmetry_breaking(engine, args)
        if deltas:
            engine.add_to_mixing(deltas)
    from tqdm.auto import tqdm

    with ckpt.open_log() as log, tqdm(total=args.steps, initial=min(loaded.step, args.steps), unit="step",
                                      disable=args.quiet, desc=f"finetune ({args.backend})") as bar:
        if not loaded.found:
            log.write(json.dumps({"step": 0, "drift": engine.drift(probe)}) + "\n")
        for step in range(loaded.step, args.steps):
            loss = engine.step(batch_at(tokens, step, args.batch, args.seq_len, args.seed))
            rec = {"step": step + 1, "loss": loss}
            if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
                rec["drift"] = engine.drift(probe)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            ckpt.step_done(step + 1, lambda: engine.capture({"run": settings}), final=step + 1 == args.steps)
    return finish(args, engine, source)


def finish(args, engine, source: str) -> dict:
    """Save the model, write summary.json and print the drift from the start to the end."""
    with open(os.path.join(args.out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = [r["loss"] for r in records if "loss" in r]
    drifts = [r for r in records if "drift" in r]
    engine.save(os.path.join(args.out, "model"), source)
    start, end = layer_means(drifts[0]["drift"]), layer_means(drifts[-1]["drift"])
    summary = {"steps": records[-1]["step"], "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "drift_start": start, "drift_end": end,
               "model": os.path.join(args.out, "model"), "backend": args.backend}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} over {summary['steps']} steps"
          if losses else "no training steps")
    print(f"{'mixing drift (mean over mHC steps)':<36} {'step 0':>12} {'step ' + str(drifts[-1]['step']):>12}")
    for k in start:
        print(f"{k:<36} {start[k]:>12.6g} {end[k]:>12.6g}")
    print(f"wrote {os.path.join(args.out, 'model')} (analyse: python scripts/analyze_model.py "
          f"{os.path.join(args.out, 'model')})")
    return summary


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        raise SystemExit(f"finetune: {err}") from None
