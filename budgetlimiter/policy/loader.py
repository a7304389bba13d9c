"""Loading policies from YAML or TOML, with errors that name file, line, path and field."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from ..errors import PolicyError
from .resolve import path_segment
from .root import Policy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]

__all__ = ["load_policy", "parse_policy", "policy_from_dict", "validation_error"]

Loc = Sequence[str | int]


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file (``.yaml``/``.yml`` or ``.toml``, by extension)."""
    name = os.fspath(path)
    suffix = Path(name).suffix.lower()
    fmt: Literal["yaml", "toml"]
    if suffix in (".yaml", ".yml"):
        fmt = "yaml"
    elif suffix == ".toml":
        fmt = "toml"
    else:
        raise PolicyError(
            f"{name}: unsupported policy file extension {suffix or '(none)'!r}; "
            "use .yaml, .yml or .toml",
            file=name,
        )
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{name}: cannot read policy file: {exc}", file=name) from None
    return parse_policy(text, source=name, fmt=fmt)


def parse_policy(
    text: str, *, source: str = "<string>", fmt: Literal["yaml", "toml"] = "yaml"
) -> Policy:
    """Parse and validate policy ``text``; every problem raises :class:`PolicyError`."""
    if fmt == "yaml":
        data, locate = _parse_yaml(text, source)
    elif fmt == "toml":
        data, locate = _parse_toml(text, source)
    else:
        raise PolicyError(f"{source}: unknown policy format {fmt!r} (use 'yaml' or 'toml')")
    if data is None or data == {}:
        raise PolicyError(f"{source}: the policy document is empty", file=source, line=1)
    if not isinstance(data, dict):
        raise PolicyError(
            f"{source}:1: the policy must be a mapping of settings, got {type(data).__name__}",
            file=source,
            line=1,
        )
    return _validate(data, source, locate)


def policy_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Policy:
    """Validate an already-parsed policy mapping; errors raise :class:`PolicyError`."""
    return _validate(data, source, lambda loc: None)


# --------------------------------------------------------------------------- errors


def format_loc(loc: Loc) -> tuple[str, str | None]:
    """Turn a pydantic ``loc`` into (``a.b[0].c``, field name)."""
    path = ""
    field: str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            path += path_segment(part) if path else (part if _plain(part) else path_segment(part))
            field = part
    return path, field


def _plain(key: str) -> bool:
    return path_segment(key).startswith(".")


def _shown(value: object) -> str | None:
    if isinstance(value, str):
        return repr(value[:80])
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return None


def _validate(data: dict[str, Any], source: str, locate: Any) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, locate) from None


def validation_error(exc: ValidationError, source: str, locate: Any) -> PolicyError:
    """The :class:`PolicyError` describing ``exc``: one line per problem, each naming the
    source (``file:line``; left out when ``source`` is empty), the path and the field. The
    runtime overrides use it too, so an override is refused with the loader's messages."""
    lines: list[str] = []
    first: dict[str, Any] | None = None
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path, field = format_loc(loc)
        line = locate(loc)
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not part of the policy format; check the spelling)"
        shown = None if err["type"] in ("missing", "extra_forbidden") else _shown(err["input"])
        where = f"{source}:{line}" if line is not None else source
        text = f"{where}: " if where else ""
        text += f"{path or '(top level)'}: {msg}"
        if shown is not None:
            text += f" (got {shown})"
        lines.append(text)
        if first is None:
            first = {"line": line, "path": path or None, "field": field}
    assert first is not None
    message = "\n".join(lines)
    if len(lines) > 1:
        message = f"{len(lines)} errors in policy {source or 'input'}:\n{message}"
    return PolicyError(message, file=source or None, **first)


# --------------------------------------------------------------------------- YAML


def _parse_yaml(text: str, source: str) -> tuple[Any, Any]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = None if mark is None else mark.line + 1
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}: {problem}" if context else str(problem)
        where = f"{source}:{line}" if line is not None else source
        raise PolicyError(f"{where}: YAML syntax error: {detail}", file=source, line=line) from None
    finally:
        loader.dispose()

    def locate(loc: Loc) -> int | None:
        return _yaml_line(node, loc)

    return data, locate


def _yaml_line(node: Any, loc: Loc) -> int | None:
    if node is None:
        return None
    line: int = node.start_mark.line + 1
    current = node
    for i, part in enumerate(loc):
        if part == "[key]":
            break
        if isinstance(current, yaml.MappingNode) and not isinstance(part, int):
            for key_node, value_node in current.value:
                if str(key_node.value) == part:
                    line = key_node.start_mark.line + 1
                    current = value_node
                    if i + 1 < len(loc) and loc[i + 1] == "[key]":
                        return line
                    break
            else:
                return line
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(current.value):
                return line
            current = current.value[part]
            line = current.start_mark.line + 1
        else:
            return line
    return line


# --------------------------------------------------------------------------- TOML

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY_PART = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*(?:\.|$)')


def _split_key(text: str) -> tuple[str, ...] | None:
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        m = _KEY_PART.match(text, pos)
        if m is None or m.end() == pos:
            return None
        raw = m.group(1)
        parts.append(raw[1:-1] if raw[0] in "\"'" else raw)
        pos = m.end()
    return tuple(parts)


def _parse_toml(text: str, source: str) -> tuple[Any, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        line = int(m.group(1)) if m else None
        if line is None and "end of document" in str(exc):
            line = max(1, len(text.splitlines()))
        where = f"{source}:{line}" if line is not None else source
        raise PolicyError(f"{where}: TOML syntax error: {exc}", file=source, line=line) from None
    lines = text.splitlines()
    headers: list[tuple[tuple[str | int, ...], int]] = []  # (path, 0-based line)
    counts: dict[tuple[str, ...], int] = {}
    for n, raw in enumerate(lines):
        m = _HEADER.match(raw)
        if not m:
            continue
        keys = _split_key(m.group(2))
        if keys is None:
            continue
        if m.group(1) == "[[":
            index = counts.get(keys, 0)
            counts[keys] = index + 1
            headers.append(((*keys, index), n))
        else:
            headers.append((keys, n))

    def locate(loc: Loc) -> int | None:
        return _toml_line(lines, headers, tuple(p for p in loc if p != "[key]"))

    return data, locate


def _toml_line(
    lines: list[str], headers: list[tuple[tuple[str | int, ...], int]], loc: tuple[str | int, ...]
) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, header line)
    for path, n in headers:
        if (
            len(path) <= len(loc)
            and loc[: len(path)] == path
            and (best is None or len(path) > best[0])
        ):
            best = (len(path), n)
    depth, start = (0, -1) if best is None else best
    end = next((n for _, n in headers if n > start), len(lines))
    found: int | None = None if start < 0 else start
    pos = start + 1
    for part in loc[depth:]:
        if isinstance(part, int):
            # inline array of tables: the part-th "{" line from here on (best effort)
            hits = [n for n in range(pos, end) if "{" in lines[n]]
            if part >= len(hits):
                break
            found = pos = hits[part]
            continue
        key = re.escape(part)
        pattern = re.compile(rf"(?:^|[{{,\s])(?:{key}|\"{key}\"|'{key}')\s*[=.]")
        hit = next((n for n in range(pos, end) if pattern.search(lines[n])), None)
        if hit is None:
            break
        found = pos = hit
    return None if found is None else found + 1
