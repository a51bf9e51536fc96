"""Read a pre-LN decoder layer's forward before converting it: the same four children do
not mean the same forward.

Llama's layer computes

    residual = hidden_states; h = self_attn(input_layernorm(hidden_states)); hidden_states = residual + h
    residual = hidden_states; h = mlp(post_attention_layernorm(hidden_states)); hidden_states = residual + h

Other transformers layers with exactly these children scale a branch before the add
(Granite: `residual + h * self.residual_multiplier`), scale the residual (MiniMax:
`residual * alpha + h * beta`), switch norms on a config flag (Molmo2: `if self.norm_after`)
or pass the MLP extra inputs (Moshi). The mHC recipe calls the children itself, so such a
layer would convert without error and give different logits. `read_forward(cls)` parses
the forward (Python's `ast`) and reports:

- scaled: the residual adds are `residual + h * self.residual_multiplier` (Granite's form),
  which mHC reproduces exactly by scaling the branch output f(h) (see recipes.py),
- problems: each statement of the forward the recipe does not reproduce (source text).

A forward whose source cannot be read (built at run time, C extension) gives
`readable=False`; the caller then only warns.
"""
from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from dataclasses import dataclass

CHILDREN = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
SCALE_ATTR = "residual_multiplier"


@dataclass(frozen=True)
class ForwardReading:
    readable: bool
    scaled: bool
    problems: tuple[str, ...]


def _self_attr(node: ast.AST) -> str | None:
    """'x' for the expression `self.x`, else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _branch_term(node: ast.AST) -> str | None:
    """How the non-residual operand of a residual add is formed: 'plain' (a name),
    'scaled' (name * self.residual_multiplier), or None (anything else)."""
    if isinstance(node, ast.Name):
        return "plain"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        pair = (node.left, node.right)
        if any(isinstance(a, ast.Name) for a in pair) and any(_self_attr(b) == SCALE_ATTR for b in pair):
            return "scaled"
    return None


@functools.lru_cache(maxsize=None)
def read_forward(cls: type) -> ForwardReading:
    """Compare `cls.forward` with the plain pre-LN decoder forward (module docstring)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls.forward))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return ForwardReading(False, False, ())
    problems: list[str] = []
    terms: list[str] = []

    def flag(node: ast.AST) -> None:
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        text = " ".join(text.split())
        if text not in problems:
            problems.append(text)

    for node in ast.walk(tree):
        attr = _self_attr(node)
        if attr is not None and attr not in CHILDREN and attr != SCALE_ATTR:
            flag(node)
        if isinstance(node, ast.Call) and _self_attr(node.func) in ("input_layernorm", "post_attention_layernorm", "mlp"):
            if len(node.args) != 1 or node.keywords:  # the recipe calls these with h alone
                flag(node)
        if isinstance(node, ast.Assign) and any("residual" in _names(t) for t in node.targets):
            if not isinstance(node.value, (ast.Name, ast.BinOp)):
                flag(node)
        if isinstance(node, ast.BinOp) and "residual" in _names(node):
            sides = (node.left, node.right)
            plain = [s for s in sides if isinstance(s, ast.Name) and s.id == "residual"]
            if isinstance(node.op, ast.Add) and plain:
                term = _branch_term(sides[1] if sides[0] is plain[0] else sides[0])
                if term is None:
                    flag(node)
                else:
                    terms.append(term)
            elif not (isinstance(node.op, ast.Mult) and _self_attr(node.right) == SCALE_ATTR):
                flag(node)
    if len(set(terms)) > 1:
        problems.append("one residual add is scaled by self.residual_multiplier and another is not")
    if len(terms) != 2 and not problems:
        problems.append(f"{len(terms)} residual adds (the recipe has 2: attention, then MLP)")
    return ForwardReading(True, terms == ["scaled", "scaled"], tuple(problems))
