"""Compile every Triton kernel for real GPUs without one: registers, spills, shared memory,
occupancy and 64-bit offsets, per kernel, stream count n, input dtype and architecture.

    python benchmarks/compile_report.py                    # full report -> benchmarks/results/
    python benchmarks/compile_report.py --n 4 8 16 --dtype bfloat16 --json /tmp/r.json

Each kernel is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`
(cc 80 = A100, sm_80; cc 90 = H100/H200, sm_90a) using the block sizes and warp counts the
launchers use (the launchers' own helpers are called), then:
- registers and spill bytes: `ptxas -v` on the PTX, with the ptxas inside the triton wheel
  that Triton itself picks for that architecture;
- shared memory: Triton's dynamic allocation (metadata.shared), against the per-block
  opt-in limit (sm_80: 163 KB, sm_90: 227 KB): over it, the kernel cannot launch;
- CTAs per SM: the minimum of the register, shared memory, thread and block limits;
- 64-bit offsets: a taint analysis of the TTIR. Token indices (the token-axis program id,
  the T / tokens_per_split arguments, and everything computed from them) must never be
  multiplied or added in 32 bits (`arith.muli/addi/subi/shli` on i32): such a product wraps
  once T * n * C >= 2^31. Offsets that never involve a token index (phi, bias, a C block)
  may stay 32-bit; their bounds do not grow with T.

Runs without a GPU and without TRITON_INTERPRET (the kernels must be decorated for the
compiler, so this script clears the variable before importing them). Exit status 0 with the
report written (the CI test, tests/triton/test_compile_report.py, applies the pass/fail rules
to the JSON); 1 with nothing written when the wheel has no ptxas for an asked architecture.
A subset (--n / --dtype / --arch / --kernel) needs its own --json: the default path holds the
committed full report.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":  # decorate the kernels for the compiler, not the interpreter
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns unless this is set

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, ROOT / "backends"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(HERE))
from cli_args import out_file  # noqa: E402

ARCHS = {80: "sm_80", 90: "sm_90a"}
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # per-block opt-in maximum, bytes
SM_LIMITS = dict(regs=65536, threads=2048, blocks=32)  # per SM, both architectures
SMEM_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
ALL_N = (1, 2, 3, 4, 8, 16)
DTYPES = {"float32": ("fp32", torch.float32), "bfloat16": ("bf16", torch.bfloat16)}
DEFAULT_JSON = HERE / "results" / "compile_report.json"
C_REPORT = 4096  # C used where a block size depends on C (pre / post kernels): the large-C blocks


def ptxas_path(cc: int = 80) -> Path | None:
    """The ptxas Triton itself uses for compute capability `cc` (shipped inside the triton
    wheel: `ptxas`, or `ptxas-blackwell` for cc >= 90 since Triton 3.5), or None if absent."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        p = Path(get_ptxas(cc).path)
    except Exception:  # older Triton, or no NVIDIA backend in this wheel
        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return p if p.is_file() and os.access(p, os.X_OK) else None


# ----------------------------------------------------------------------------------------
# Kernel specs: (arguments in order: name -> type), constexprs and warps, as the launchers use
# ----------------------------------------------------------------------------------------
@dataclass
class Spec:
    name: str
    fn: object
    args: dict          # name -> triton type ("*bf16", "*fp32", "i32", "fp32")
    constexprs: dict
    num_warps: int
    token_axes: tuple   # program-id axes that index tokens
    token_args: tuple = ("T", "tokens_per_split")
    div16: tuple = ()   # int arguments passed as multiples of 16 at C = C_REPORT (Triton specialises)
    num_stages: int = 3  # software-pipelining depth the launcher asks for (Triton's default: 3)


def specs(n: int, dtype: torch.dtype, cc: int) -> list[Spec]:
    from mhc_core_torch.kernels import coefficients as co, coefficients_fwd as cf, post_residual as po, \
        pre_aggregate as pa, sinkhorn as sk
    from mhc_core_torch.kernels._common import next_pow2, stream_pad

    X = DTYPES[[k for k, v in DTYPES.items() if v[1] == dtype][0]][0]
    px, pf = "*" + X, "*fp32"
    consts, prec = co._consts(torch.empty(0, dtype=dtype), n)
    warps = consts.pop("num_warps")
    cpu = torch.device("cpu")
    # the launches the forward makes on a 132-SM device of this architecture: one launch at
    # many tokens, split-K (+ merge) at few
    fc = cf.fwd_config(1 << 20, n, n * C_REPORT, dtype, cpu, cc=cc, sms=132)
    fs = cf.fwd_config(256, n, n * C_REPORT, dtype, cpu, cc=cc, sms=132)
    fk = cf._kernel_consts(torch.empty(0, dtype=dtype), n)
    np_, f32 = next_pow2(n), tl.float32
    pb = po.bwd_config(n, C_REPORT)
    parts = cf.uses_phi_parts(dtype, n)
    fwd_sig = dict(x_ptr=px, phi_ptr=pf, parts_ptr="*bf16" if parts else pf, bias_ptr=pf, alpha_ptr=pf, pre_ptr=pf,
                   post_ptr=pf, res_ptr=pf, z_ptr=pf, rs_ptr=pf, part_ptr=pf, T="i32", n="i32", K="i32", W="i32",
                   k_per_split="i32", iters="i32", rms_eps="fp32", pre_eps="fp32", sk_eps="fp32", post_scale="fp32",
                   m_lo="fp32", m_hi="fp32", s_lo="fp32", s_eps="fp32", f_max="fp32")
    fwd_consts = dict(HC=False, LOG=False, FAST=True, PARTS=parts, BF16X3=dtype == torch.bfloat16, **fk)
    out = [
        Spec("coefficients_fwd", cf._coeff_fwd_kernel, fwd_sig,
             dict(SPLIT=False, BT=fc.block_t, BK=fc.block_k, **fwd_consts),
             fc.num_warps, (0,), div16=("K",), num_stages=fc.num_stages),
        Spec("coefficients_fwd_split", cf._coeff_fwd_kernel, fwd_sig,
             dict(SPLIT=True, BT=fs.block_t, BK=fs.block_k, **fwd_consts),
             fs.num_warps, (0,),
             div16=("K", "k_per_split"), num_stages=fs.num_stages),
        Spec("coefficients_fwd_merge", cf._coeff_merge_kernel,
             dict(part_ptr=pf, bias_ptr=pf, alpha_ptr=pf, pre_ptr=pf, post_ptr=pf, res_ptr=pf, z_ptr=pf, rs_ptr=pf,
                  T="i32", n="i32", K="i32", W="i32", S="i32", iters="i32", rms_eps="fp32", pre_eps="fp32",
                  sk_eps="fp32", post_scale="fp32"),
             dict(HC=False, LOG=False, BT=cf.MERGE_BT, **cf.merge_consts(fk)), cf.merge_warps(n), (0,), div16=("K",)),
        Spec("coefficients_gate_bwd", co._gate_bwd_kernel,
             dict(z_ptr=pf, rs_ptr=pf, bias_ptr=pf, alpha_ptr=pf, dpre_ptr=pf, dpost_ptr=pf, dres_ptr=pf, u_ptr=pf,
                  c_ptr=pf, dbias_part_ptr=pf, dalpha_part_ptr=pf, T="i32", n="i32", K="i32", W="i32", iters="i32",
                  sk_eps="fp32", post_scale="fp32"),
             dict(HC=False, LOG=False, BT=co._BT, **consts), warps, (0,), div16=("K",)),
        Spec("coefficients_x_bwd", co._x_bwd_kernel,
             dict(x_ptr=px, phi_ptr=pf, rs_ptr=pf, u_ptr=pf, c_ptr=pf, dx_ptr=px, dphi_part_ptr=pf, dx_in_ptr=px,
                  pre_ptr=pf, dh_ptr=px, T="i32", n="i32", C="i32", K="i32", W="i32", tokens_per_split="i32"),
             dict(ADD_DX_IN=True, ADD_PRE=True, PREC=prec, BT=co._BT, BK=co._x_bwd_config(n, cc)[0],
                  STAGES=co._x_bwd_config(n, cc)[2], RES_CHUNKS=co._x_bwd_config(n, cc)[3], **consts),
             co._x_bwd_config(n, cc)[1], (1,), div16=("C", "K", "tokens_per_split")),
        Spec("pre_aggregate_fwd", pa._pre_fwd_kernel,
             dict(x_ptr=px, pre_ptr=pf, h_ptr=px, n="i32", C="i32"),
             dict(ACC=f32, NP=np_, BC=pa._block_c(n, C_REPORT)), 4, (0,), div16=("C",)),
        Spec("pre_aggregate_bwd", pa._pre_bwd_kernel,
             dict(x_ptr=px, pre_ptr=pf, dh_ptr=px, dx_ptr=px, dpre_ptr=pf, n="i32", C="i32"),
             dict(WRITE_DX=True, ACC=f32, NP=np_, BC=pa._block_c(n, C_REPORT)), 4, (0,), div16=("C",)),
        Spec("pre_aggregate_dpre", pa._pre_bwd_kernel,
             dict(x_ptr=px, pre_ptr=px, dh_ptr=px, dx_ptr=px, dpre_ptr=pf, n="i32", C="i32"),
             dict(WRITE_DX=False, ACC=f32, NP=np_, BC=pa._block_c(n, C_REPORT)), 4, (0,), div16=("C",)),
        Spec("post_residual_fwd", po._post_fwd_kernel,
             dict(x_ptr=px, y_ptr=px, post_ptr=pf, res_ptr=pf, out_ptr=px, n="i32", C="i32"),
             dict(ACC=f32, NP=np_, BC=po._block_c_fwd(n, C_REPORT)), 4, (0,), div16=("C",)),
        Spec("post_residual_bwd", po._post_bwd_kernel,
             dict(x_ptr=px, y_ptr=px, post_ptr=pf, res_ptr=pf, dout_ptr=px, dx_ptr=px, dy_ptr=px, dpost_ptr=pf,
                  dres_ptr=pf, T="i32", n="i32", C="i32"),
             dict(DOT=pb.dot, ACC=f32, NP=max(16, np_) if pb.dot else np_, BC=pb.block_c, TOKENS=pb.tokens,
                  STEPS=pb.steps, STAGES=pb.stages),
             pb.num_warps, (0,), div16=("C",)),
    ]
    if parts:
        out.append(Spec("coefficients_phi_parts", cf._phi_parts_kernel,
                        dict(phi_ptr=pf, parts_ptr="*bf16", K="i32", n="i32", W="i32"),
                        dict(R=stream_pad(n), GP=fk["GP"], BK=cf.PARTS_BK), 4, (), token_args=()))
    R = stream_pad(n)
    sk_bt = max(1, min(16, 256 // (R * R)))
    for name, fn, args in (("sinkhorn_fwd", sk._sinkhorn_fwd_kernel, dict(L_ptr=pf, M_ptr=pf)),
                           ("sinkhorn_bwd", sk._sinkhorn_bwd_kernel, dict(L_ptr=pf, G_ptr=pf, dL_ptr=pf))):
        out.append(Spec(name, fn, dict(**args, T="i32", n="i32", iters="i32", eps="fp32"),
                        dict(LOG=False, ACC=f32, BT=sk_bt, R=R), 4, (0,)))
    return out


# ----------------------------------------------------------------------------------------
# TTIR: 32-bit arithmetic on token indices
# ----------------------------------------------------------------------------------------
_DEF = re.compile(r"^\s*(%[\w.$#-]+(?:\s*,\s*%[\w.$#-]+)*|%[\w.$#-]+:\d+)\s*=\s*([\w.]+)\s*(.*)$")
_FOR = re.compile(r"scf\.for\s+(%[\w.$#-]+)\s*=\s*(%[\w.$#-]+)\s+to\s+(%[\w.$#-]+)\s+step\s+(%[\w.$#-]+)"
                  r"(?:\s+iter_args\((.*?)\))?")
_ARITH32 = {"arith.muli", "arith.addi", "arith.subi", "arith.shli"}


def _result_type(rest: str) -> str:
    rest = rest.split(" loc(")[0]
    return rest.rsplit(":", 1)[-1].strip() if ":" in rest else ""


def token_i32_arithmetic(ttir: str, token_axes, token_args) -> list[str]:
    """TTIR lines doing i32 add/mul/sub/shift on a value derived from a token index."""
    tainted = set()
    m = re.search(r"tt\.func public @\w+\((.*?)\)\s*attributes", ttir, re.S)
    if m:
        for name in re.findall(r"%(\w+):", m.group(1)):
            if name in token_args:
                tainted.add("%" + name)
    axes = {"x": 0, "y": 1, "z": 2}
    bad = []
    for line in ttir.splitlines():
        code = line.split(" loc(")[0]
        f = _FOR.search(code)
        if f:
            iv, lb, ub, step, iters = f.groups()
            if {lb, ub, step} & tainted:
                tainted.add(iv)
            for name, init in re.findall(r"(%[\w.$#-]+)\s*=\s*(%[\w.$#-]+)", iters or ""):
                if init in tainted:
                    tainted.add(name)
        d = _DEF.match(code)
        if not d or d.group(2) == "scf.for":
            continue
        results, op, rest = d.groups()
        names = re.findall(r"%[\w.$#-]+", results)
        if op == "tt.get_program_id":
            if axes[rest.split()[0]] in token_axes:
                tainted.update(names)
            continue
        if set(re.findall(r"%[\w.$#-]+", rest)) & tainted:
            tainted.update(names)
            ty = _result_type(rest)
            if op in _ARITH32 and (ty == "i32" or ty.endswith("xi32>")):
                bad.append(line.strip()[:160])
    return bad


# ----------------------------------------------------------------------------------------
# Compile + ptxas
# ----------------------------------------------------------------------------------------
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class Row:
    kernel: str
    n: int
    dtype: str
    arch: str
    num_warps: int
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared_bytes: int = -1
    smem_limit: int = 0
    ctas_per_sm: int = 0
    offsets_64bit: bool = False
    i32_token_math: list = field(default_factory=list)
    compile_s: float = 0.0
    error: str = ""


def ctas_per_sm(regs: int, warps: int, smem: int, cc: int) -> int:
    threads = 32 * warps
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256       # allocated per warp in units of 256
    by_regs = (SM_LIMITS["regs"] // regs_per_warp) // warps
    by_threads = SM_LIMITS["threads"] // threads
    by_smem = SMEM_PER_SM[cc] // (smem + 1024) if smem else SM_LIMITS["blocks"]  # 1 KB reserved per CTA
    return max(0, min(by_regs, by_threads, by_smem, SM_LIMITS["blocks"]))


def compile_one(spec: Spec, n: int, dtype_name: str, cc: int, tmp: Path) -> Row:
    row = Row(spec.name, n, dtype_name, ARCHS[cc], spec.num_warps, smem_limit=SMEM_LIMIT[cc])
    names = list(spec.args) + [k for k in spec.constexprs]
    signature = {**spec.args, **{k: "constexpr" for k in spec.constexprs}}
    signature = {k: signature[k] for k in spec.fn.arg_names}
    attrs = {(spec.fn.arg_names.index(a),): [["tt.divisibility", 16]]
             for a in spec.fn.arg_names if spec.args.get(a, "").startswith("*") or a in spec.div16}
    assert set(names) == set(spec.fn.arg_names), (spec.name, set(names) ^ set(spec.fn.arg_names))
    t0 = time.perf_counter()
    try:
        k = triton.compile(ASTSource(spec.fn, signature, spec.constexprs, attrs),
                           target=GPUTarget("cuda", cc, 32),
                           options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as e:  # a kernel that does not compile is a finding, reported as such
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return row
    row.compile_s = round(time.perf_counter() - t0, 2)
    row.shared_bytes = int(k.metadata.shared)
    ptx = tmp / f"{spec.name}_{n}_{dtype_name}_{cc}.ptx"
    ptx.write_text(k.asm["ptx"])
    r = subprocess.run([str(ptxas_path(cc)), f"--gpu-name={ARCHS[cc]}", "-v", str(ptx), "-o", str(ptx.with_suffix(".cubin"))],
                       capture_output=True, text=True)
    info = r.stdout + r.stderr
    if r.returncode:
        row.error = "ptxas: " + info.strip()[:300]
        return row
    row.registers = max(int(v) for v in _PTXAS_USED.findall(info))
    spills = _PTXAS_SPILL.findall(info)
    row.spill_stores = max(int(a) for a, _ in spills)
    row.spill_loads = max(int(b) for _, b in spills)
    row.ctas_per_sm = ctas_per_sm(row.registers, spec.num_warps, row.shared_bytes, cc)
    row.i32_token_math = token_i32_arithmetic(k.asm["ttir"], spec.token_axes, spec.token_args)
    row.offsets_64bit = not row.i32_token_math
    return row


def _git(*args) -> str:
    """git's output in the repository, or "" where git or .git is missing."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def run(ns, dtypes, archs, kernels=None, log=print) -> dict:
    from mhc_core_torch.kernels import _common

    if _common.INTERPRETED:
        raise RuntimeError("the kernels were decorated for the interpreter (TRITON_INTERPRET=1 at import): "
                           "run this report in a fresh process without TRITON_INTERPRET")
    for cc in archs:
        if ptxas_path(cc) is None:
            raise FileNotFoundError(f"no ptxas for cc {cc} in the triton wheel "
                                    f"({Path(triton.__file__).parent}/backends/nvidia/bin)")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"mhc_compile_report_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in ns:
        for dname in dtypes:
            for cc in archs:
                for spec in specs(n, DTYPES[dname][1], cc):
                    if kernels and spec.name not in kernels:
                        continue
                    row = compile_one(spec, n, dname, cc, tmp)
                    rows.append(row)
                    log(f"{row.kernel:24s} n={n:<2d} {dname:8s} {row.arch:6s} regs={row.registers:3d} "
                        f"spill={row.spill_stores}/{row.spill_loads} smem={row.shared_bytes} "
                        f"ctas/SM={row.ctas_per_sm} 64bit={row.offsets_64bit} {row.error}")
    versions = [subprocess.run([str(ptxas_path(cc)), "--version"], capture_output=True, text=True).stdout.strip()
                for cc in archs]
    commit, dirty = _git("rev-parse", "--short", "HEAD") or "unknown (no git here)", \
        _git("status", "--porcelain", "--", "backends/mhc_core_torch/kernels")
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commit=commit + ("+uncommitted kernel changes" if dirty else ""), triton=triton.__version__, torch=torch.__version__,
        ptxas={ARCHS[cc]: v.splitlines()[-1] if v else "" for cc, v in zip(archs, versions)},
        c_for_block_sizes=C_REPORT,
        rows=[asdict(r) for r in rows])


# No-spill rule: every kernel at every n <= 16, except those named here (kernel -> largest n
# that must be spill-free): the coefficient forward still spills 12-20 B at n = 16 (bf16).
def failures(report: dict, spill_free_n: int = 16, smem_cc: int = 80) -> list[str]:
    """The rules the CI test enforces: no spill at n <= 16, shared memory within sm_80's
    limit at every n, no 32-bit token offset, every kernel compiles."""
    out = []
    for r in report["rows"]:
        cid = f"{r['kernel']} n={r['n']} {r['dtype']} {r['arch']}"
        if r["error"]:
            out.append(f"{cid}: {r['error']}")
            continue
        if r["n"] <= spill_free_n and (r["spill_stores"] or r["spill_loads"]):
            out.append(f"{cid}: spills {r['spill_stores']} B stores / {r['spill_loads']} B loads")
        if r["shared_bytes"] > SMEM_LIMIT[smem_cc]:
            out.append(f"{cid}: {r['shared_bytes']} B shared memory > sm_{smem_cc} limit {SMEM_LIMIT[smem_cc]} B")
        if not r["offsets_64bit"]:
            out.append(f"{cid}: 32-bit token offset math: {r['i32_token_math'][:2]}")
    return out


def markdown(report: dict) -> str:
    lines = [f"# Compile report ({report['date']}, commit {report['commit']})", "",
             f"triton {report['triton']}, torch {report['torch']}, ptxas {report['ptxas']}; no GPU: compiled with "
             f"`triton.compile(..., GPUTarget('cuda', cc, 32))` + the wheel's `ptxas -v`. "
             f"Block sizes that depend on C are those of C = {report['c_for_block_sizes']}. "
             "Regenerate: `python benchmarks/compile_report.py`.", "",
             "Rules (tests/triton/test_compile_report.py): no spill at n <= 16; shared memory <= 163 KB "
             "(sm_80 opt-in limit) at every n; no 32-bit arithmetic on a token index (`64-bit` column).", "",
             "| kernel | n | dtype | arch | warps | regs | spill st/ld (B) | smem (B) | CTAs/SM | 64-bit | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['kernel']} | {r['n']} | {r['dtype']} | {r['arch']} | {r['num_warps']} | {r['registers']} "
                     f"| {r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes']} | {r['ctas_per_sm']} "
                     f"| {'yes' if r['offsets_64bit'] else 'NO'} | {r['error']} |")
    fails = failures(report)
    lines += ["", f"Rule violations: {len(fails)}"] + [f"- {f}" for f in fails]
    return "\n".join(lines) + "\n"


def kernel_names() -> list[str]:
    """Every kernel name the report can hold (some appear only at some n / dtype)."""
    names = {}
    for n in ALL_N:
        for _, dtype in DTYPES.values():
            for cc in ARCHS:
                names.update(dict.fromkeys(s.name for s in specs(n, dtype, cc)))
    return list(names)


def _stream_count(text: str) -> int:
    """--n: an integer in 1..MAX_STREAMS (the kernels' stream limit)."""
    from mhc_core_torch.triton_gate import MAX_STREAMS

    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or not 1 <= n <= MAX_STREAMS:
        raise argparse.ArgumentTypeError(f"expected a stream count n in 1..{MAX_STREAMS} (the kernels' limit), "
                                         f"got {text!r}")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=_stream_count, nargs="+", default=list(ALL_N))
    ap.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--kernel", nargs="*", help="only these kernels (names as in the report)")
    ap.add_argument("--json", type=out_file, default=None,
                    help="report path (default benchmarks/results/compile_report.json, the committed full "
                         "report: a run of a subset must name its own)")
    ap.add_argument("--md", type=out_file, help="markdown table (default: the --json path with .md)")
    args = ap.parse_args(argv)
    if args.kernel is not None:
        known = kernel_names()
        unknown = [k for k in args.kernel if k not in known]
        if unknown or not args.kernel:
            ap.error(f"--kernel expected one or more of {' '.join(known)}, got {unknown or 'none'}")
    subset = (set(args.n) != set(ALL_N) or set(args.dtype) != set(DTYPES) or set(args.arch) != set(ARCHS)
              or args.kernel is not None)
    if args.json is None:
        if subset:
            ap.error("--n / --dtype / --arch / --kernel choose a subset: give --json PATH for its report "
                     "(the default benchmarks/results/compile_report.json holds the full one)")
        args.json = DEFAULT_JSON
    missing = [ARCHS[cc] for cc in args.arch if ptxas_path(cc) is None]
    if missing:
        print(f"compile_report: skipped, nothing written: no ptxas for {', '.join(missing)} in the triton wheel "
              f"({Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin'}); install a triton wheel "
              "with its NVIDIA backend", file=sys.stderr)
        return 1
    report = run(args.n, args.dtype, args.arch, args.kernel)
    report["violations"] = failures(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    (args.md or args.json.with_suffix(".md")).write_text(markdown(report))
    fails = report["violations"]
    print(f"{len(report['rows'])} compiles, {len(fails)} rule violations -> {args.json}")
    for f in fails:
        print("  " + f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
