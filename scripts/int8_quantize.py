"""Dynamic INT8 quantization of a converted (mHC) model's Linear layers on CPU: size and logit error.

    python scripts/int8_quantize.py [--out benchmarks/results/int8_cpu] [--steps 120]

A Llama-shaped decoder (built locally, nothing downloaded) is converted with
`mhc_core_torch.convert(n=4)`, trained briefly on a synthetic next-token task (so the mHC
coefficients have moved off the warm start and the logits are peaked), then quantized:

- `torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`: still in
  torch 2.13 but deprecated there (torch points to torchao's `quantize_`); every nn.Linear
  becomes a DynamicQuantizedLinear (int8 weights, activations quantized per batch).
- torchao `quantize_(model, Int8DynamicActivationInt8WeightConfig())`, the replacement,
  when torchao is installed.

The mHC parameters (phi, bias, alpha) are plain float32 Parameters, not Linear layers:
they stay float32, and so does the Sinkhorn / coefficient math. Size = bytes of the
serialized state_dict. Writes OUT.md and OUT.json.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import time
import warnings

import torch
from torch import nn


def state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def task_batch(g: torch.Generator, batch: int, seq: int, vocab: int) -> torch.Tensor:
    """Sequences that count up by one (mod vocab) from a random start: learnable in a few steps."""
    start = torch.randint(0, vocab, (batch, 1), generator=g)
    return (start + torch.arange(seq)) % vocab


def build(args) -> nn.Module:
    import transformers

    import mhc_core_torch

    torch.manual_seed(args.seed)
    config = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                                      tie_word_embeddings=False)
    model = mhc_core_torch.convert(transformers.LlamaForCausalLM(config), n=4)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    for _ in range(args.steps):
        ids = task_batch(g, 8, 32, args.vocab)
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.final_loss = float(loss.detach())
    return model


@torch.no_grad()
def measure(name: str, model: nn.Module, reference: torch.Tensor, ids: torch.Tensor, base_bytes: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(3):
        logits = model(ids).logits
    latency = (time.perf_counter() - t0) / 3
    err = (logits - reference).abs()
    targets = ids[:, 1:]
    size = state_bytes(model)
    return {
        "name": name, "state_dict_MiB": size / 2**20, "compression": base_bytes / size,
        "max_abs_logit_err": float(err.max()), "mean_abs_logit_err": float(err.mean()),
        "logit_std": float(reference.std()),
        "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
        "task_accuracy": float((logits[:, :-1].argmax(-1) == targets).float().mean()),
        "cpu_forward_s": latency,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/int8_cpu")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    model = build(args)
    ids = task_batch(torch.Generator().manual_seed(args.seed + 1), 4, 32, args.vocab)
    with torch.no_grad():
        reference = model(ids).logits
    base = state_bytes(model)
    mhc_params = sum(p.numel() for n, p in model.named_parameters() if "_mhc." in n)
    rows = [measure("float32 (converted, n=4)", model, reference, ids, base)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecation notices of torch.ao
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    assert q.model.layers[0].attn_mhc.phi.dtype == torch.float32
    rows.append(measure("int8 torch.ao quantize_dynamic", q, reference, ids, base))
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        t = copy.deepcopy(model)
        quantize_(t, Int8DynamicActivationInt8WeightConfig())
        rows.append(measure("int8 torchao quantize_ (dyn. act. + weight)", t, reference, ids, base))
    except Exception as err:  # not installed, or no CPU kernel for this build
        rows.append({"name": "int8 torchao quantize_", "skipped": f"{type(err).__name__}: {err}"[:200]})

    result = {"model": {"arch": "LlamaForCausalLM + mhc_core_torch.convert(n=4)", "hidden": args.hidden,
                        "layers": args.layers, "vocab": args.vocab, "params": sum(p.numel() for p in model.parameters()),
                        "mhc_params_float32": mhc_params, "train_steps": args.steps,
                        "final_train_loss": model.final_loss},
              "batch": list(ids.shape), "torch": torch.__version__, "platform": platform.platform(),
              "quantized_engine": torch.backends.quantized.engine, "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "# Dynamic INT8 quantization of a converted (mHC) model, CPU",
        "",
        f"Written by `python scripts/int8_quantize.py` (torch {torch.__version__}, engine "
        f"{torch.backends.quantized.engine}, {platform.machine()}). Model: {result['model']['arch']}, hidden "
        f"{args.hidden}, {args.layers} layers, vocab {args.vocab}, {result['model']['params'] / 1e6:.2f} M parameters "
        f"({mhc_params} of them mHC phi/bias/alpha, kept float32), trained {args.steps} steps on a synthetic "
        f"counting task (final loss {model.final_loss:.3f}). Logits compared with the float32 model on a "
        f"batch {list(ids.shape)} drawn with another seed (not held out: the counting task has only {args.vocab} "
        f"distinct sequences, most of them seen in training); size = serialized state_dict, MiB = 2^20 bytes.",
        "",
        "| model | state_dict MiB | compression | max abs logit err | mean abs logit err | top-1 agreement | task acc. | CPU fwd s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['name']} | skipped: {r['skipped']} |||||||")
            continue
        lines.append(f"| {r['name']} | {r['state_dict_MiB']:.2f} | {r['compression']:.2f}x | {r['max_abs_logit_err']:.3g} | "
                     f"{r['mean_abs_logit_err']:.3g} | {100 * r['top1_agreement']:.1f}% | {100 * r['task_accuracy']:.1f}% | "
                     f"{r['cpu_forward_s']:.3f} |")
    lines += ["", f"Logit std of the float32 model: {rows[0]['logit_std']:.3g}. Timings: one thread on a shared "
              "machine, 3 forwards; indicative only. `torch.ao.quantization.quantize_dynamic` is deprecated in "
              "torch 2.13 in favour of torchao's `quantize_`."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
