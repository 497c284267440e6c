"""The config explained: ``convzoo config`` (resolved YAML with each key's comment) and the key
list of ``convzoo train --help``.

The comments are read once from config.py's own source, where each key is declared with its
comment, so there is one source of truth: a key's comment is the line beside it (and any comment
lines directly above it). The valid ranges come from the declarations themselves (``In``).
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import json
import textwrap
import tokenize
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import yaml

from convzoo import config as C

COMMENT_COLUMN = 44  # values shorter than this get their comment aligned here


@dataclass(frozen=True)
class KeyDoc:
    above: tuple[str, ...]  # comment lines written above the key
    beside: str  # the comment on the key's own line(s)

    @property
    def text(self) -> str:
        """Everything said about the key, as one line."""
        return " ".join([*self.above, self.beside]).strip()


@functools.cache
def key_docs() -> dict[str, KeyDoc]:
    """``{"optim.lr": KeyDoc(...), "optim": KeyDoc(...), ...}`` from config.py's comments.

    Empty when the source is not available (e.g. an install without .py files).
    """
    try:
        source = inspect.getsource(C)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}

    def own_line(n: int) -> bool:
        return lines[n - 1].lstrip().startswith("#")

    by_class: dict[str, dict[str, KeyDoc]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, KeyDoc] = {}
        prev_end = node.lineno
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                above: list[str] = []
                n = stmt.lineno - 1
                while n > prev_end and n in comments and own_line(n):
                    above.insert(0, comments[n])
                    n -= 1
                end = stmt.end_lineno or stmt.lineno
                beside = " ".join(comments[n] for n in range(stmt.lineno, end + 1)
                                  if n in comments and not own_line(n))
                docs[stmt.target.id] = KeyDoc(tuple(above), beside)
            prev_end = stmt.end_lineno or stmt.lineno
        by_class[node.name] = docs

    out: dict[str, KeyDoc] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in C.hints(cls).items():
            doc = by_class.get(cls.__name__, {}).get(name)
            if doc is not None:
                out[prefix + name] = doc
            if is_dataclass(tp):
                walk(tp, f"{prefix}{name}.")

    walk(C.Config, "")
    return out


def valid_note(tp: Any, comment: str = "") -> str:
    """``"valid: [0, 1)"`` (``"each in (0, 1]"`` for a list) from a key's ``In`` rule, or the
    choices of a ``Literal`` key that ``comment`` does not already list."""
    base, rules = C.unwrap(tp)
    if typing.get_origin(base) is typing.Literal:
        choices = [str(c) for c in typing.get_args(base)]
        return "" if all(c in comment for c in choices) else f"one of: {' | '.join(choices)}"
    for rule in rules:
        if isinstance(rule, C.In):
            is_list = typing.get_origin(base) is list or list in [
                typing.get_origin(a) for a in typing.get_args(base)]
            return f"each in {rule.text}" if is_list else f"valid: {rule.text}"
    return ""


def _is_tristate(tp: Any) -> bool:
    base, _ = C.unwrap(tp)
    return set(typing.get_args(base)) == {bool, type(None)}


def _flow(value: Any) -> str:
    """One-line YAML for a value (flow style for lists and mappings)."""
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True)
    text = text.rstrip("\n")
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text


def commented_yaml(cfg: C.Config, header: list[str] | None = None,
                   origins: dict[str, str] | None = None) -> str:
    """``cfg`` as YAML, each key followed by its comment and valid range; a valid recipe file.
    ``origins``: dotted key -> where its value was set, shown as ``[from ...]`` first in the
    key's comment (a key not in it is convzoo's default)."""
    docs = key_docs()
    out = [f"# {line}" for line in header or []]

    def emit(obj: Any, cls: type, prefix: str, indent: str) -> None:
        rows: list[tuple[list[str], str, str]] = []  # (lines above, key: value, comment)
        for f in fields(cls):
            tp = C.hints(cls)[f.name]
            value = getattr(obj, f.name)
            doc = docs.get(prefix + f.name, KeyDoc((), ""))
            above = [f"{indent}# {c}" for c in doc.above]
            if is_dataclass(tp):
                flush(rows)
                rows = []
                out.extend(above)
                out.append(f"{indent}{f.name}:" + (f"  # {doc.beside}" if doc.beside else ""))
                emit(value, tp, f"{prefix}{f.name}.", indent + "  ")
                continue
            origin = (origins or {}).get(prefix + f.name)
            note = "; ".join(x for x in (f"[from {origin}]" if origin else "", doc.beside,
                                          valid_note(tp, doc.text)) if x)
            if f.name == "stages" and value:
                flush(rows)
                rows = []
                out.extend(above)
                out.append(f"{indent}{f.name}:" + (f"  # {note}" if note else ""))
                out.extend(f"{indent}- {_flow(C.to_dict(s))}" for s in value)
                continue
            text = "auto" if value is None and _is_tristate(tp) else _flow(C.to_dict(value))
            rows.append((above, f"{indent}{f.name}: {text}", note))
        flush(rows)

    def flush(rows: list[tuple[list[str], str, str]]) -> None:
        width = max([len(r[1]) for r in rows if len(r[1]) < COMMENT_COLUMN] or [0])
        for above, line, note in rows:
            out.extend(above)
            out.append(f"{line.ljust(width)}  # {note}" if note else line)

    emit(cfg, C.Config, "", "")
    return "\n".join(out) + "\n"


def sections_help(width: int = 100) -> str:
    """The sections of the config and their keys, wrapped, for ``convzoo train --help``."""
    top = [name for name, tp in C.hints(C.Config).items() if not is_dataclass(tp)]
    rows = [("top level", top)] + [(name, [f.name for f in fields(tp)])
                                   for name, tp in C.hints(C.Config).items() if is_dataclass(tp)]
    return "\n".join(textwrap.fill(" ".join(keys), width=width, initial_indent=f"  {name}: ",
                                   subsequent_indent=" " * (len(name) + 4)) for name, keys in rows)
