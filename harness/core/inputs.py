"""Reading files a user hands qae (genomes, device lists): bounded, decoded, parsed, in one line.

Every file that crosses into qae from outside goes through ``read_text`` (a size cap for its kind,
UTF-8 or a clean error) and, when structured, ``load_structured`` (YAML or JSON with a nesting
limit). Both fail with a one-line ``InputError`` that names the file, what is wrong and the fix, and
both are fast on hostile input: a 50 MB file is refused by its size before it is read, and a file
nested 100,000 deep is refused by a scan of its brackets and indentation before the YAML parser
(which recurses, and would end in a RecursionError) ever sees it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import InputError

#: Characters that open a nesting level in YAML flow style / JSON, and those that close one.
_OPEN = frozenset("[{")
_CLOSE = frozenset("]}")


def _size_text(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.0f} kB"
    return f"{n} bytes"


def read_text(path: str | Path, kind: str, max_bytes: int) -> str:
    """The UTF-8 text of ``path`` (a ``kind`` file, e.g. "genome"), at most ``max_bytes`` long.

    Raises a one-line ``InputError`` for a missing or unreadable file, a file over the cap (checked
    before reading: a huge file costs no memory) and bytes that are not UTF-8.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{kind} file {path} cannot be read ({exc.strerror}): check the path") from None
    if path.is_dir():
        raise InputError(f"{kind} file {path} is a folder: give a file")
    if size > max_bytes:
        raise InputError(
            f"{kind} file {path} is {_size_text(size)}, over the {_size_text(max_bytes)} a {kind} file may have: "
            f"give the right file (a {kind} file is far smaller)"
        )
    try:
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)  # the file may have grown since stat: never read past the cap
    except OSError as exc:
        raise InputError(f"{kind} file {path} cannot be read ({exc.strerror}): check the path") from None
    if len(raw) > max_bytes:
        raise InputError(
            f"{kind} file {path} is over the {_size_text(max_bytes)} a {kind} file may have: give the right file"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{kind} file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}): "
            f"save it as UTF-8 YAML or JSON"
        ) from None


_BLOCK = re.compile(r"^( *)((?:- +)*)")


def _depth(text: str, limit: int) -> int:
    """A fast upper bound of the nesting of ``text``: block indentation levels plus flow brackets.

    Brackets inside quoted strings are counted too, which only makes the limit stricter for text no
    real genome or device list holds; the scan stops as soon as ``limit`` is passed.
    """
    deepest = 0
    flow = 0
    indents: list[int] = []  # indentation widths of the open block levels
    for line in text.splitlines():
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        match = _BLOCK.match(line)
        assert match is not None  # the pattern matches every string
        if flow == 0:
            indent = len(match.group(1))
            while indents and indents[-1] > indent:
                indents.pop()
            if not indents or indents[-1] < indent:
                indents.append(indent)
        level = len(indents) + match.group(2).count("-")
        for ch in body:
            if ch in _OPEN:
                flow += 1
                deepest = max(deepest, level + flow)
                if deepest > limit:
                    return deepest
            elif ch in _CLOSE and flow:
                flow -= 1
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
    return deepest


def load_structured(text: str, source: str, max_depth: int = 32) -> Any:
    """Parse YAML or JSON (YAML is a superset of JSON) with ``yaml.safe_load``.

    Refuses nesting deeper than ``max_depth`` (checked before parsing, so a hostile file costs a
    linear scan, not a RecursionError) and any parse error, each with one line naming ``source``.
    """
    if _depth(text, max_depth) > max_depth:
        raise InputError(
            f"{source} is nested more than {max_depth} levels deep: this is not a file qae writes, give the right file"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{source} is not valid YAML or JSON{at}: fix the syntax") from None
    except RecursionError:  # anchors/aliases can still nest deeply past the scan: same one line
        raise InputError(
            f"{source} is nested more than {max_depth} levels deep: this is not a file qae writes, give the right file"
        ) from None
    if _nested_deeper(data, max_depth):
        raise InputError(
            f"{source} is nested more than {max_depth} levels deep: this is not a file qae writes, give the right file"
        )
    return data


def _nested_deeper(data: Any, limit: int) -> bool:
    """True when the parsed value nests deeper than ``limit`` (iterative: no recursion to exhaust).

    The text scan bounds depth before parsing; this checks the result, which aliases can make
    deeper (or cyclic) than the text shows. A value seen before is not walked again."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth + 1 > limit:
                return True
            if id(node) in seen:
                continue
            seen.add(id(node))
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False


def warn(message: str) -> None:
    """One line on stderr for something qae worked around (a damaged cache, dubious data)."""
    import sys

    print(f"qae: warning: {message}", file=sys.stderr, flush=True)


def non_finite_at(value: Any) -> str | None:
    """The path (``a.b.0``) of the first NaN or infinite float in a parsed JSON value, else None."""
    import math

    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return where or "(top level)"
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(node))
    return None
