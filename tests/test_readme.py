"""Every ```python block of README.md runs as written (on the CPU), so an example that stops
working fails CI.

Rules, read from the README itself:
- A block that names mlx / torch / transformers is skipped where that is not installed.
- Each block runs in a fresh namespace, in a temporary working directory, with `path`
  already set to a tiny Qwen3 checkpoint saved there (what `from_pretrained(path)` in the
  conversion example loads; nothing is downloaded).
- `<!-- readme-test: skip (reason) -->` on the line(s) just before a block skips it; the
  reason must say why (a GPU, several processes, a model we cannot build here).
- `<!-- readme-test: continue -->` runs the block in the namespace of the last block that
  ran (for a fragment that goes on from the previous example; blocks marked skip are not
  counted, a block skipped for a missing framework skips its continuation too).
- A block that uses CUDA runs on the CPU with `impl="reference"` and small shapes: the
  substitutions in CPU_SWAPS, each of which must find its text (a README edit that breaks
  one fails here instead of silently running something else).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"^<!--\s*readme-test:\s*(skip|continue)\s*(?:\((.*)\))?\s*-->\s*$")

# (old, new) applied to blocks that mention CUDA: device -> CPU, reference path, small shapes.
CPU_SWAPS = [
    (".cuda()", ""),
    ('device="cuda"', 'device="cpu"'),
    ("MHC(mlp, n=n, dim=C)", 'MHC(mlp, n=n, dim=C, impl="reference")'),
    ("n, C = 4, 4096", "n, C = 4, 64"),
    ("torch.randn(8, 1024, C", "torch.randn(2, 16, C"),
]


NEEDS = [("mlx", "mlx.core"), ("torch", "torch"), ("transformers", "transformers")]


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    section: str
    code: str
    skip: str | None = None
    cont: bool = False

    @property
    def id(self) -> str:
        return f"L{self.line}-{re.sub(r'[^A-Za-z0-9]+', '-', self.section).strip('-')[:40]}"


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks of `text` with their markers; a marker not directly above a
    python block (blank lines allowed) is an error."""
    lines = text.splitlines()
    blocks, section, pending, i = [], "", [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        m = MARKER.match(line.strip())
        if m:
            if m.group(1) == "skip" and not (m.group(2) or "").strip():
                raise ValueError(f"README.md:{i + 1}: a skip marker needs a reason: skip (why)")
            pending.append((i + 1, m.group(1), (m.group(2) or "").strip()))
        elif line.strip().startswith("```"):
            fence = line.strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if fence == "```python":
                b = Block(i + 1, section, "\n".join(lines[i + 1:end]))
                for _, kind, reason in pending:
                    if kind == "skip":
                        b.skip = reason
                    else:
                        b.cont = True
                blocks.append(b)
            elif pending:
                raise ValueError(f"README.md:{pending[0][0]}: readme-test marker above a {fence} block, not a python one")
            pending, i = [], end
        elif line.strip() and pending:
            raise ValueError(f"README.md:{pending[0][0]}: readme-test marker not directly above a code block")
        i += 1
    return blocks


def for_cpu(code: str) -> str:
    if "cuda" not in code:
        return code
    for old, new in CPU_SWAPS:
        assert old in code, f"CPU swap {old!r} no longer matches the CUDA example; update CPU_SWAPS"
        code = code.replace(old, new)
    assert "cuda" not in code, "the CUDA example still mentions cuda after the CPU swaps"
    return code


BLOCKS = readme_blocks(README.read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A temporary cwd holding `tiny-qwen3/`, a 2-layer Qwen3 saved with save_pretrained."""
    d = tmp_path_factory.mktemp("readme")
    try:
        import torch
        import transformers
    except ImportError:
        return d, None
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(d / "tiny-qwen3")
    return d, str(d / "tiny-qwen3")


_namespaces: list[dict] = []


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block, workdir, monkeypatch):
    if block.skip:
        pytest.skip(f"README.md:{block.line} marked: {block.skip}")
    for needle, module in NEEDS:  # a framework that is not installed skips (MHC_REQUIRE_BACKENDS catches CI's)
        if needle in block.code:
            try:
                __import__(module)
            except ImportError:
                _namespaces.append(None)  # a block continuing this one cannot run either
                pytest.skip(f"README.md:{block.line} needs {module}, which is not installed")
    d, tiny = workdir
    monkeypatch.chdir(d)
    if block.cont:
        assert _namespaces, f"README.md:{block.line} continues a block, but none ran before it"
        if _namespaces[-1] is None:
            pytest.skip(f"README.md:{block.line} continues a block that could not run here")
        ns = _namespaces[-1]
    else:
        ns = {"__name__": "readme", "path": tiny}
    code = compile(for_cpu(block.code), f"README.md:{block.line}", "exec")
    exec(code, ns)  # noqa: S102 - the README's own example
    _namespaces.append(ns)


def test_every_block_runs_or_says_why():
    """All python blocks are accounted for: most run; each skip carries its reason."""
    assert BLOCKS, "README.md has no python blocks"
    skipped = [b for b in BLOCKS if b.skip]
    for b in skipped:
        assert len(b.skip) >= 15, f"README.md:{b.line}: skip reason too short to justify: {b.skip!r}"
    assert len(skipped) * 2 < len(BLOCKS), (
        f"{len(skipped)} of {len(BLOCKS)} README python blocks are skipped: " + "; ".join(
            f"L{b.line}: {b.skip}" for b in skipped))
    assert not BLOCKS[0].cont, "the first python block cannot continue another"


def test_markers_are_parsed_strictly():
    text = "# s\n<!-- readme-test: skip (needs a GPU) -->\n\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    a, b = readme_blocks(text)
    assert (a.skip, b.skip) == ("needs a GPU", None)
    with pytest.raises(ValueError, match="needs a reason"):
        readme_blocks("<!-- readme-test: skip -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="not directly above"):
        readme_blocks("<!-- readme-test: skip (needs a GPU) -->\ntext\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="above a ```bash block"):
        readme_blocks("<!-- readme-test: continue -->\n```bash\nls\n```\n")
    cpu = for_cpu("n, C = 4, 4096\nm = f().cuda()\nb = MHC(mlp, n=n, dim=C).cuda()\n"
                  'x = torch.randn(8, 1024, C, device="cuda")')
    assert "cuda" not in cpu and 'impl="reference"' in cpu and "(2, 16, C" in cpu


def _attribute_roots(code: str) -> list[tuple[str, str]]:
    """(module path, attribute) for every `alias.attr` in `code` whose alias is one of our
    packages (by name) or was bound by an import in `code` to one of them or a submodule."""
    import ast

    tree = ast.parse(code)  # a SyntaxError here fails the test
    ours = ("mhc_core", "mhc_core_torch", "mhc_core_mlx")
    aliases = {name: name for name in ours}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ours:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ours:
                    aliases[a.asname or a.name] = a.name
    return [(aliases[n.value.id], n.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases]


def _resolve(path: str):
    """The module or attribute at dotted `path` (a submodule is imported)."""
    import importlib

    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        parent, _, name = path.rpartition(".")
        return getattr(importlib.import_module(parent), name)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.skip], ids=[b.id for b in BLOCKS if b.skip])
def test_skipped_block_parses_and_names_what_exists(block):
    """A block the README marks skip still parses, and every `pkg.name` it uses from our
    packages exists, so a renamed function cannot hide in an example that never runs."""
    for needle, module in NEEDS:
        if needle in block.code:
            pytest.importorskip(module)
    pytest.importorskip("torch")
    roots = _attribute_roots(block.code)
    missing = [f"{path}.{attr}" for path, attr in roots if not hasattr(_resolve(path), attr)]
    assert roots, f"README.md:{block.line}: no names of ours found to check"
    assert not missing, f"README.md:{block.line} uses names that do not exist: {missing}"


def test_attribute_roots_follow_imports():
    code = "from mhc_core_torch.training import distributed as D\nimport mhc_core_mlx\nD.wrap_ddp(m)\nmhc_core_mlx.MHC\nx.y\n"
    assert sorted(_attribute_roots(code)) == [("mhc_core_mlx", "MHC"), ("mhc_core_torch.training.distributed", "wrap_ddp")]
