"""Mutant generation for the rules (``lua/*.lua``) and the argument planning (Python).

A :class:`Mutant` is one small textual change of one file: a span of the original source and
its replacement. Generation is deterministic (same source, same mutants, same order); nothing
here runs anything or writes files.

Operators applied (the rules' typical mistakes):

- comparison: ``<`` to ``<=`` and to ``>=``, ``<=`` to ``<`` and ``>``, and so on (the boundary
  and the negation); ``==`` to ``~=`` / ``!=`` and back; in Python also ``is``/``is not``,
  ``in``/``not in``;
- numbers: every integer literal ±1 (this covers ``+ 1``/``- 1`` boundaries and 0 to 1);
- flags: the string literals ``'0'``, ``'1'``, ``'-1'`` (``'-1'`` to ``'0'``, ``'0'`` to
  ``'1'`` and ``'-1'``, ``'1'`` to ``'0'``);
- dropped terms: ``a + b`` to ``a`` and to ``b``, ``a - b`` to ``a``;
- ``and`` to ``or`` and back.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

#: comparison operator -> its mutants (boundary first, then negation)
LUA_COMPARISONS = {
    "<": ("<=", ">="), "<=": ("<", ">"), ">": (">=", "<="), ">=": (">", "<"),
    "==": ("~=",), "~=": ("==",),
}
PY_COMPARISONS = {
    "<": ("<=", ">="), "<=": ("<", ">"), ">": (">=", "<="), ">=": (">", "<"),
    "==": ("!=",), "!=": ("==",), "is": ("is not",), "is not": ("is",),
    "in": ("not in",), "not in": ("in",),
}
#: flag-like string constants and their mutants
FLAGS = {"0": ("1", "-1"), "1": ("0",), "-1": ("0",)}


@dataclass(frozen=True)
class Mutant:
    """One change of ``path`` (relative to the tree): ``source[start:end]`` becomes
    ``replacement``. ``line``/``col`` (1-based) locate the change for people."""

    path: str
    line: int
    col: int
    start: int
    end: int
    original: str
    replacement: str
    operator: str  # comparison | number | flag | drop | logic

    @property
    def mutation(self) -> str:
        """What changes, e.g. ``'<' -> '<='`` (the key of an equivalence entry)."""
        return f"{_short(self.original)!r} -> {_short(self.replacement)!r}"

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    def apply(self, source: str) -> str:
        assert source[self.start:self.end] == self.original, (self.id, self.original)
        return source[:self.start] + self.replacement + source[self.end:]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:28] + " ... " + text[-27:]


def _line_col(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


# ------------------------------------------------------------------------------- Lua

@dataclass(frozen=True)
class _Tok:
    kind: str  # name | number | string | op
    text: str
    start: int
    end: int


_LUA_OPS = ("...", "..", "==", "~=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "^", "#",
            "(", ")", "[", "]", "{", "}", ",", ";", ":", ".", "=")
_LONG_BRACKET = re.compile(r"\[(=*)\[")


def lua_tokens(source: str) -> list[_Tok]:
    """Tokens of a Lua 5.1 source, comments left out."""
    toks: list[_Tok] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c.isspace():
            i += 1
        elif source.startswith("--", i):
            long = _LONG_BRACKET.match(source, i + 2)
            if long:
                close = "]" + long.group(1) + "]"
                i = source.index(close, long.end()) + len(close)
            else:
                nl = source.find("\n", i)
                i = n if nl < 0 else nl
        elif c in "'\"":
            j = i + 1
            while source[j] != c:
                j += 2 if source[j] == "\\" else 1
            toks.append(_Tok("string", source[i:j + 1], i, j + 1))
            i = j + 1
        elif c == "[" and _LONG_BRACKET.match(source, i):
            long = _LONG_BRACKET.match(source, i)
            assert long is not None
            close = "]" + long.group(1) + "]"
            j = source.index(close, long.end()) + len(close)
            toks.append(_Tok("string", source[i:j], i, j))
            i = j
        elif c.isdigit() or (c == "." and i + 1 < n and source[i + 1].isdigit()):
            m = re.compile(r"0[xX][0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?").match(source, i)
            assert m is not None
            toks.append(_Tok("number", m.group(), i, m.end()))
            i = m.end()
        elif c.isalpha() or c == "_":
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(source, i)
            assert m is not None
            toks.append(_Tok("name", m.group(), i, m.end()))
            i = m.end()
        else:
            op = next((o for o in _LUA_OPS if source.startswith(o, i)), None)
            if op is None:
                raise ValueError(f"cannot tokenize Lua at offset {i}: {source[i:i + 20]!r}")
            toks.append(_Tok("op", op, i, i + len(op)))
            i += len(op)
    return toks


_KEYWORDS = frozenset({
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"})
_VALUE_END_KEYWORDS = frozenset({"nil", "true", "false", "end"})


def _ends_value(tok: _Tok) -> bool:
    """Whether a binary operator may follow ``tok`` (else a ``-`` is unary)."""
    if tok.kind in ("number", "string"):
        return True
    if tok.kind == "name":
        return tok.text not in _KEYWORDS or tok.text in _VALUE_END_KEYWORDS - {"end"}
    return tok.text in (")", "]", "}", "...")


_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}


def _match_forward(toks: list[_Tok], i: int) -> int:
    """Index just past the bracket closing ``toks[i]``."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].kind == "op" and toks[j].text in _OPEN:
            depth += 1
        elif toks[j].kind == "op" and toks[j].text in _CLOSE:
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError("unbalanced brackets")


def _match_backward(toks: list[_Tok], i: int) -> int:
    """Index of the bracket opening the one closed at ``toks[i]``."""
    depth = 0
    for j in range(i, -1, -1):
        if toks[j].kind == "op" and toks[j].text in _CLOSE:
            depth += 1
        elif toks[j].kind == "op" and toks[j].text in _OPEN:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced brackets")


def _factor_end(toks: list[_Tok], i: int) -> int | None:
    """End (exclusive index) of the unary/primary/suffix expression starting at ``i``."""
    while i < len(toks) and (toks[i].text in ("-", "#", "not") and toks[i].kind != "string"):
        i += 1
    if i >= len(toks):
        return None
    t = toks[i]
    if (t.kind in ("number", "string") or t.text in ("nil", "true", "false")
            or (t.kind == "name" and t.text not in _KEYWORDS)):
        j = i + 1
    elif t.text in ("(", "{"):
        j = _match_forward(toks, i)
    else:
        return None
    while j < len(toks):  # suffixes: .name [exp] (args) :name(args) 'str'
        u = toks[j]
        if u.text in (".", ":") and u.kind == "op":  # .name, :name (the call follows)
            j += 2
        elif u.text in ("[", "(") and u.kind == "op":
            j = _match_forward(toks, j)
        elif u.kind == "string" and toks[j - 1].kind != "string":
            j += 1
        else:
            break
    if j < len(toks) and toks[j].text == "^" and toks[j].kind == "op":
        return _factor_end(toks, j + 1)
    return j


def _term_end(toks: list[_Tok], i: int) -> int | None:
    """End of the multiplicative term (factors joined by * / %) starting at ``i``."""
    j = _factor_end(toks, i)
    while j is not None and j < len(toks) and toks[j].kind == "op" and toks[j].text in "*/%":
        j = _factor_end(toks, j + 1)
    return j


def _term_start(toks: list[_Tok], i: int) -> int | None:
    """Start of the multiplicative term ending at ``toks[i]`` (inclusive), or None when the
    term is not simple enough to find backwards."""
    j = i
    while True:
        t = toks[j]
        if t.kind == "op" and t.text in (")", "]"):
            j = _match_backward(toks, j)
            # a call or index: continue into what is called/indexed
            if j > 0 and (_ends_value(toks[j - 1]) and toks[j - 1].kind != "number"):
                j -= 1
                continue
            if t.text == "]":
                return None  # a table constructor's field, not an expression
        elif t.kind in ("number", "string") or (t.kind == "name" and (
                t.text not in _KEYWORDS or t.text in ("nil", "true", "false"))):
            if j > 1 and toks[j - 1].text in (".", ":") and toks[j - 1].kind == "op":
                j -= 2
                continue
        else:
            return None
        break
    while j > 0 and toks[j - 1].kind == "op" and toks[j - 1].text in ("-", "#") and (
            j < 2 or not _ends_value(toks[j - 2])):
        j -= 1  # unary operators
    if j > 0 and toks[j - 1].kind == "op" and toks[j - 1].text in "*/%^" and j >= 2:
        return _term_start(toks, j - 2)
    return j


def lua_mutants(path: str, source: str) -> list[Mutant]:
    """Every mutant of one Lua file, in source order."""
    toks = lua_tokens(source)
    out: list[Mutant] = []

    def add(start: int, end: int, replacement: str, operator: str) -> None:
        line, col = _line_col(source, start)
        out.append(Mutant(path, line, col, start, end, source[start:end], replacement,
                          operator))

    for k, t in enumerate(toks):
        prev = toks[k - 1] if k else None
        if t.kind == "op" and t.text in LUA_COMPARISONS:
            for r in LUA_COMPARISONS[t.text]:
                add(t.start, t.end, r, "comparison")
        elif t.kind == "number" and t.text.isdigit():
            n = int(t.text)
            for v in (n + 1, n - 1):
                # parenthesised when negative: "x - -1" is fine, "x --1" is a comment
                add(t.start, t.end, str(v) if v >= 0 else f"({v})", "number")
        elif t.kind == "string" and t.text[1:-1] in FLAGS and t.text[0] in "'\"":
            for flag in FLAGS[t.text[1:-1]]:
                add(t.start, t.end, t.text[0] + flag + t.text[0], "flag")
        elif t.kind == "name" and t.text in ("and", "or"):
            add(t.start, t.end, "or" if t.text == "and" else "and", "logic")
        elif (t.kind == "op" and t.text in ("+", "-") and prev is not None
              and _ends_value(prev)):
            end = _term_end(toks, k + 1)
            if end is not None:  # drop the right term: a + b -> a
                add(prev.end, toks[end - 1].end, "", "drop")
            start = _term_start(toks, k - 1)
            first = start is not None and (start == 0 or not (
                toks[start - 1].kind == "op" and toks[start - 1].text in ("+", "-")
                and start >= 2 and _ends_value(toks[start - 2])))
            if t.text == "+" and start is not None and first and end is not None:
                # drop the left term: a + b -> b
                add(toks[start].start, toks[k + 1].start, "", "drop")
    return _unique(out, source)


def _unique(mutants: list[Mutant], source: str) -> list[Mutant]:
    """Drop mutants whose mutated text equals an earlier one's."""
    seen: set[str] = set()
    out = []
    for m in mutants:
        text = m.apply(source)
        if text not in seen:
            seen.add(text)
            out.append(m)
    return out


# ---------------------------------------------------------------------------- Python

def _offsets(source: str) -> list[int]:
    """Character offset of the start of each line (index 0 = line 1)."""
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def py_mutants(path: str, source: str, functions: set[str] | None = None) -> list[Mutant]:
    """Mutants of the functions named ``functions`` of a Python file (all of it: None)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = _offsets(source)

    def off(lineno: int, col_bytes: int) -> int:
        # ast columns count UTF-8 bytes
        text = lines[lineno - 1].encode("utf-8")[:col_bytes].decode("utf-8")
        return starts[lineno - 1] + len(text)

    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type in (tokenize.OP, tokenize.NAME)]
    tok_at = [(starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1], t.string)
              for t in toks]

    def between(a: int, b: int) -> list[tuple[int, int, str]]:
        return [t for t in tok_at if a <= t[0] and t[1] <= b]

    roots: list[ast.AST] = []
    if functions is None:
        roots = [tree]
    else:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    node.name in functions):
                roots.append(node)
        missing = functions - {getattr(r, "name", "") for r in roots}
        if missing:
            raise ValueError(f"{path}: no function named {sorted(missing)}")

    out: list[Mutant] = []

    def add(start: int, end: int, replacement: str, operator: str) -> None:
        line, col = _line_col(source, start)
        out.append(Mutant(path, line, col, start, end, source[start:end], replacement,
                          operator))

    def span(node: ast.expr) -> tuple[int, int]:
        assert node.end_lineno is not None and node.end_col_offset is not None
        return off(node.lineno, node.col_offset), off(node.end_lineno, node.end_col_offset)

    in_fstring: set[int] = set()
    for root in roots:
        for node in ast.walk(root):
            if isinstance(node, ast.JoinedStr):
                in_fstring.update(id(n) for n in ast.walk(node))
    nodes = sorted({id(n): n for root in roots for n in ast.walk(root)
                    if isinstance(n, ast.expr) and id(n) not in in_fstring}.values(),
                   key=lambda n: (n.lineno, n.col_offset))
    for node in nodes:
        if isinstance(node, ast.Compare):
            left = node.left
            for op_node, right in zip(node.ops, node.comparators, strict=True):
                a, b = span(left)[1], span(right)[0]
                words = [t for t in between(a, b) if t[2] not in ("(", ")")]
                text = " ".join(t[2] for t in words)
                for r in PY_COMPARISONS.get(text, ()):
                    add(words[0][0], words[-1][1], r, "comparison")
                left = right
                del op_node
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            # the operator token, then each operand with its own parentheses
            start, end = span(node)
            op = next(t for t in between(span(node.left)[1], span(node.right)[0])
                      if t[2] in ("+", "-"))
            add(start, end, source[start:op[0]].rstrip(), "drop")  # a + b -> a ; a - b -> a
            if isinstance(node.op, ast.Add):
                add(start, end, source[op[1]:end].strip(), "drop")  # a + b -> b
        elif isinstance(node, ast.BoolOp):
            a, b = span(node)
            for t in between(a, b):
                if t[2] in ("and", "or"):
                    add(t[0], t[1], "or" if t[2] == "and" else "and", "logic")
        elif isinstance(node, ast.Constant):
            a, b = span(node)
            if isinstance(node.value, int) and not isinstance(node.value, bool):
                for v in (node.value + 1, node.value - 1):
                    add(a, b, str(v) if v >= 0 else f"({v})", "number")
            elif isinstance(node.value, str) and node.value in FLAGS:
                quote = source[a]
                for flag in FLAGS[node.value]:
                    add(a, b, quote + flag + quote, "flag")
    # a BoolOp chain contains its inner ones: keep each token once, in source order
    return _unique(sorted(out, key=lambda m: (m.start, m.end, m.replacement)), source)
