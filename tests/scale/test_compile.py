"""torch.compile: MHC and the tiny LM compile with fullgraph=True on the reference path and
give the eager numbers, forward and gradients; also with block recompute inside the
compiled graph. Compiling is silent: no warning and no log record, even on the first
trace of a fresh process.

The aot_eager backend keeps this fast (inductor codegen takes minutes on a 2-core CPU);
`benchmarks/bench_recompute.py` measures inductor's speed. aot_eager still traces the
whole graph (fullgraph=True fails on any graph break) and runs AOTAutograd's joint
forward/backward, so equality here means the traced program is the eager one.
"""
from __future__ import annotations

import subprocess
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import mhc_core
import mhc_core_torch
from mhc_core.experiments.lm_config import LMConfig, init_lm_params
from mhc_core_torch.lm import TinyLM, masked_cross_entropy
from scale_helpers import PYTHON, REPO, assert_close, subprocess_env



@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_mhc_module_fullgraph(variant):
    n, c = 4, 16
    torch.manual_seed(0)
    m = mhc_core_torch.MHC(nn.Sequential(nn.Linear(c, 2 * c), nn.SiLU(), nn.Linear(2 * c, c)), n, c, variant=variant,
                      init=mhc_core.init_params(n, c, variant=variant, phi_std=0.2, alpha=1.0, seed=1), impl="reference")
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, n, c)
    outs, grads = [], []
    for fn in (m, compiled):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        g = torch.autograd.grad(out.square().sum(), [xi, *m.parameters()])
        outs.append(out.detach().numpy())
        grads.append([t.numpy() for t in g])
    assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6, case=f"compiled MHC {variant} forward")
    for i, (a, b) in enumerate(zip(grads[1], grads[0])):
        assert_close(a, b, rtol=1e-5, atol=1e-6, case=f"compiled MHC {variant} grad #{i}")


@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_mhc_module_dynamic_shapes(variant):
    """torch.compile(dynamic=True): the module's float settings are traced as symbolic
    floats, which the spec's argument checks must take; one graph serves every token count,
    with the eager numbers, forward and gradients."""
    n, c = 4, 16
    torch.manual_seed(0)
    m = mhc_core_torch.MHC(nn.Linear(c, c), n, c, variant=variant,
                           init=mhc_core.init_params(n, c, variant=variant, phi_std=0.2, alpha=1.0, seed=1),
                           impl="reference")
    compiled = torch.compile(m, fullgraph=True, dynamic=True, backend="aot_eager")
    for tokens in (3, 5, 8):
        x = torch.randn(tokens, n, c)
        res = []
        for fn in (m, compiled):
            xi = x.clone().requires_grad_(True)
            out = fn(xi)
            res.append([out.detach().numpy()] + [t.numpy() for t in torch.autograd.grad(out.square().sum(),
                                                                                          [xi, *m.parameters()])])
        for i, (a, b) in enumerate(zip(res[1], res[0])):
            assert_close(a, b, rtol=1e-5, atol=1e-6, case=f"dynamic MHC {variant} T={tokens} output #{i}")


@pytest.mark.parametrize("recompute", [0, 2])
def test_tiny_lm_fullgraph_forward_and_grads(recompute):
    cfg = LMConfig(vocab=16, dim=16, n_layers=2, n_heads=2, seq_len=8, variant="mhc", n=4, phi_std=0.05, seed=4)
    eager = TinyLM(cfg)
    model = TinyLM(cfg, init_lm_params(cfg))
    model.recompute = recompute
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    rng = np.random.default_rng(0)
    tokens = torch.as_tensor(rng.integers(0, 16, (3, 8)))
    targets = torch.as_tensor(rng.integers(0, 16, (3, 8)))
    mask = torch.ones(8)
    results = []
    for net, fn in ((eager, eager), (model, compiled)):
        logits = fn(tokens)
        loss = masked_cross_entropy(logits, targets, mask)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        results.append((logits.detach().numpy(), [g.numpy() for g in grads]))
    assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6, case=f"compiled TinyLM logits (recompute {recompute})")
    names = [k for k, _ in eager.named_parameters()]
    for name, a, b in zip(names, results[1][1], results[0][1]):
        assert_close(a, b, rtol=1e-5, atol=1e-7, case=f"compiled TinyLM grad {name} (recompute {recompute})")


# Run in a fresh process: the first trace of the first compiled model is the one that met
# array_api_compat's lru_cache-wrapped namespace lookup (and dynamo's warnings about it).
_FIRST_COMPILE = textwrap.dedent("""
    import logging, warnings
    warnings.simplefilter("always")
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage()[:300])
    logging.getLogger().addHandler(Keep(level=logging.WARNING))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch
        import mhc_core, mhc_core_torch
        torch.manual_seed(0)
        n, c = 4, 8
        m, x = MODEL
        compiled = torch.compile(m, backend="eager", fullgraph=True)
        out = compiled(x)
    err = float((out - m(x)).abs().max())
    print("WARNINGS", [str(w.message)[:300] for w in caught])
    print("LOGS", records)
    print("MAXDIFF", err)
""")


MODELS = {
    "mhc": """(mhc_core_torch.MHC(torch.nn.Linear(c, c), n, c, impl="reference",
                                   init=mhc_core.init_params(n, c, phi_std=0.2, alpha=1.0, seed=1)),
              torch.randn(2, 3, n, c))""",
    # the permutation tables and the torch constants they become must not meet an lru_cache
    "mhc-lite": """(mhc_core_torch.MHC(torch.nn.Linear(c, c), 3, c, variant="mhc-lite", impl="reference",
                                        init=mhc_core.init_params(3, c, variant="mhc-lite", phi_std=0.2,
                                                                  alpha=1.0, seed=1)),
                   torch.randn(2, 3, 3, c))""",
    "history-identity-matrix": """(mhc_core_torch.HistorySequential([torch.nn.Linear(c, c) for _ in range(3)],
                                      history=2, constraint="identity", mixing="matrix"), torch.randn(2, 3, c))""",
    "history-simplex": """(mhc_core_torch.HistorySequential([torch.nn.Linear(c, c) for _ in range(3)], history=2,
                                                         constraint="simplex"), torch.randn(2, 3, c))""",
}


@pytest.mark.parametrize("model", list(MODELS))
def test_first_compile_in_a_fresh_process_is_silent(model):
    """torch.compile of each module kind in a new process: no warning, no WARNING log
    record, and the compiled forward equals eager (fullgraph: no graph break either)."""
    script = _FIRST_COMPILE.replace("MODEL", textwrap.dedent(MODELS[model]).strip())
    run = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0] in
                 ("WARNINGS", "LOGS", "MAXDIFF"))
    assert lines["WARNINGS"] == "[]", lines["WARNINGS"]
    assert lines["LOGS"] == "[]", lines["LOGS"]
    assert float(lines["MAXDIFF"]) <= 1e-6, lines["MAXDIFF"]


def test_stochastic_history_compiles_with_the_global_rng_and_names_the_generator_problem():
    """Gumbel noise from torch's global RNG traces (fullgraph) and matches eager under the same
    seed; with an explicit torch.Generator, which dynamo cannot trace, the error says what to do."""
    layers = [nn.Linear(8, 8) for _ in range(3)]
    model = mhc_core_torch.HistorySequential(layers, history=2, stochastic=True).train()
    x = torch.randn(2, 8)
    torch.manual_seed(3)
    want = model(x)
    torch.manual_seed(3)
    got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert_close(got.detach().numpy(), want.detach().numpy(), rtol=1e-6, atol=0.0, case="stochastic-history-compiled")

    torch._dynamo.reset()
    seeded = mhc_core_torch.HistorySequential(layers, history=2, stochastic=True,
                                              generator=torch.Generator().manual_seed(0)).train()
    with pytest.raises(Exception, match="torch.compile cannot trace a torch.Generator; compile with generator=None"):
        torch.compile(seeded, fullgraph=True, backend="aot_eager")(x)
    assert seeded(x).shape == x.shape  # uncompiled, the generator works
