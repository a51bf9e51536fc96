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
the forward (Python's `ast`; `method="__call__"` for mlx-lm's blocks, whose adds read
`h = x + r`) and reports:

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


def _branch_call(node: ast.AST) -> bool:
    """Whether node is a call of the attention or the MLP (`x + self.mlp(...)` inline)."""
    return isinstance(node, ast.Call) and _self_attr(node.func) in ("self_attn", "mlp")


def _scaled_term(node: ast.AST) -> bool:
    """Whether node is `name * self.residual_multiplier` (either order)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)):
        return False
    pair = (node.left, node.right)
    return any(isinstance(a, ast.Name) for a in pair) and any(_self_attr(b) == SCALE_ATTR for b in pair)


@functools.lru_cache(maxsize=None)
def read_forward(cls: type, method: str = "forward") -> ForwardReading:
    """Compare `cls.<method>` (torch: forward; MLX: __call__) with the plain pre-LN decoder
    forward (module docstring). The arithmetic allowed is the two residual adds
    `a + b` of plain names or `a + self.mlp(...)` (Granite's `a + b * self.residual_multiplier` counts as scaled);
    any other arithmetic, any attribute of self but the four children (and the multiplier),
    and any norm or MLP call with more than the hidden state is a problem."""
    try:
        source = textwrap.dedent(inspect.getsource(getattr(cls, method)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, AttributeError):
        return ForwardReading(False, False, ())
    problems: list[str] = []
    terms: list[str] = []
    allowed: set[int] = set()  # the `b * self.residual_multiplier` inside a residual add

    def flag(node: ast.AST) -> None:
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        text = " ".join(text.split())
        if text not in problems:
            problems.append(text)

    function = tree.body[0]
    body = ast.Module(body=list(getattr(function, "body", [])), type_ignores=[])  # not the annotations
    for node in ast.walk(body):  # breadth first: an add is seen before the product inside it
        attr = _self_attr(node)
        if attr is not None and attr not in CHILDREN and attr != SCALE_ATTR:
            flag(node)
        if isinstance(node, ast.Call) and _self_attr(node.func) in ("input_layernorm", "post_attention_layernorm", "mlp"):
            if len(node.args) != 1 or node.keywords:  # the recipe calls these with h alone
                flag(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and "residual" in t.id for t in node.targets):
            if not isinstance(node.value, (ast.Name, ast.BinOp)):
                flag(node)
        if isinstance(node, ast.BinOp) and id(node) not in allowed:
            left, right = node.left, node.right
            if isinstance(node.op, ast.Add) and isinstance(left, ast.Name) and (
                    isinstance(right, ast.Name) or _branch_call(right)):
                terms.append("plain")
            elif isinstance(node.op, ast.Add) and isinstance(right, ast.Name) and _branch_call(left):
                terms.append("plain")
            elif isinstance(node.op, ast.Add) and isinstance(left, ast.Name) and _scaled_term(right):
                terms.append("scaled")
                allowed.add(id(right))
            elif isinstance(node.op, ast.Add) and isinstance(right, ast.Name) and _scaled_term(left):
                terms.append("scaled")
                allowed.add(id(left))
            else:
                flag(node)
    if len(set(terms)) > 1:
        problems.append("one residual add is scaled by self.residual_multiplier and another is not")
    if len(terms) != 2 and not problems:
        problems.append(f"{len(terms)} residual adds (the recipe has 2: attention, then MLP)")
    return ForwardReading(True, terms == ["scaled", "scaled"], tuple(problems))
