"""The documentation runs: every python block and import of README.md and docs/*.md executes, every
`atrous.x.y` name the text mentions resolves, and every `atrous <subcommand>` line shown parses with the
CLI's own argparse parser (without running the command).

Conventions for the pages:
- Python blocks (```python) of one page run in order in one namespace, in a scratch folder that holds
  `run/best.pt` (a tiny trained checkpoint), `photo.jpg`, a folder data set `data/cells` (train/val
  splits) and a copy of `recipes/`. Keep them cheap (tiny widths, small inputs).
- `<!-- no-run -->` on the line before a block skips it; use it only where running needs external data
  (a data set on disk that the tests cannot write, a GPU).
- Shell blocks (``` without a language, or bash/sh/console): each `atrous ...` line (also `python -m
  atrous ...`, `torchrun ... -m atrous ...`) is parsed. A line with `[`, `|` or `...` is a synopsis: its
  subcommand and `--flags` are checked, not its values. Inline code spans that start with `atrous ` are
  checked as synopses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_RUN = "<!-- no-run -->"
PY_LANGS = {"python", "py"}
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}

FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")  # a span may wrap onto the next line
DOTTED = re.compile(r"^atrous(?:\.[A-Za-z_]\w*)+$")
INLINE_IMPORT = re.compile(r"^(from atrous[\w.]* import [\w, ]+|import atrous[\w.]*)")


def _blocks(path: Path) -> list[tuple[str, str, int, bool]]:
    """(language, code, first line number, skipped) of every fenced block of one Markdown page."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        prev = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
        start, i = i + 1, i + 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        out.append((m.group(1).lower(), "\n".join(lines[start:i]), start + 1, prev == NO_RUN))
        i += 1
    return out


def _prose(path: Path) -> str:
    """The page without its fenced blocks, one line per paragraph (inline spans wrap)."""
    text, keep, inside = path.read_text().splitlines(), [], False
    for line in text:
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            keep.append(line)
    return re.sub(r"(?<=\S)\n(?=\S)", " ", "\n".join(keep))


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_pages_exist_and_readme_is_a_front_door():
    names = {p.name for p in PAGES}
    for page in (
        "models",
        "data",
        "training",
        "evaluation",
        "diagnostics",
        "performance",
        "guarantees",
        "demo",
    ):
        assert f"{page}.md" in names, f"docs/{page}.md is missing"
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "README.md should stay a front door of at most ~300 lines"
    for page in names - {"README.md"}:
        assert f"docs/{page}" in readme, f"README.md does not link docs/{page}"


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_images_and_links_exist(path):
    """Every relative link and image of a page points at a file of the repository."""
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _prose(path)):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{_page_id(path)} links {target}, which does not exist"


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_no_project_history(path):
    """The docs describe what is, not how it came to be."""
    text = path.read_text()
    for pattern in (r"\bissue \d+", r"\bsession\b(?! fixture)", r"\bengineer"):
        m = re.search(pattern, text, re.IGNORECASE)
        assert m is None, f"{_page_id(path)}: project history {m.group(0)!r}: say what is, not what happened"


@pytest.fixture
def sandbox(tmp_path, tiny_checkpoint, monkeypatch):
    """A scratch working folder with the files the pages' python blocks name."""
    (tmp_path / "run").mkdir()
    shutil.copy(tiny_checkpoint.parent / "best.pt", tmp_path / "run" / "best.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    for split, n in (("train", 4), ("val", 2)):
        for sub in ("images", "masks"):
            (tmp_path / "data" / "cells" / split / sub).mkdir(parents=True)
        for k in range(n):
            stem = tmp_path / "data" / "cells" / split
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                stem / "images" / f"{k}.png"
            )
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 4 + k : 16 + k] = 1
            Image.fromarray(mask).save(stem / "masks" / f"{k}.png")
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_python_blocks_run(path, sandbox):
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for lang, code, line, skipped in _blocks(path):
        if lang not in PY_LANGS or skipped:
            continue
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(compile(code, f"{_page_id(path)}:{line}", "exec"), namespace)
        except Exception as e:  # any failure: the page and line are the message
            raise AssertionError(f"{_page_id(path)}, block at line {line}: {type(e).__name__}: {e}") from e


def _resolve(name: str):
    """Import the longest module prefix of a dotted name, then walk the attributes."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_inline_names_and_imports_resolve(path):
    """`atrous.x.y` names and `from atrous... import ...` statements written in the prose exist."""
    for span in INLINE.findall(_prose(path)):
        span = span.strip()
        name = re.sub(r"\(.*$", "", span)
        if DOTTED.match(name):
            try:
                _resolve(name)
            except (ImportError, AttributeError) as e:
                raise AssertionError(f"{_page_id(path)} names `{name}`, which does not exist ({e})") from e
        for statement in INLINE_IMPORT.findall(span):
            try:
                exec(statement, {})
            except ImportError as e:
                raise AssertionError(f"{_page_id(path)}: `{statement}` fails: {e}") from e


TEST_REF = re.compile(r"^(?:tests/(test_\w+\.py))?(?:::(test_\w+))?$")


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_named_tests_exist(path):
    """`tests/test_x.py` and `tests/test_x.py::test_name` exist; `::test_name` alone names a test of the
    last file the page named (guarantees.md lists each promise with its test)."""
    last = None
    for span in INLINE.findall(_prose(path)):
        m = TEST_REF.match(span.strip())
        if not m or not any(m.groups()):
            continue
        file, name = m.groups()
        if file:
            last = ROOT / "tests" / file
            assert last.is_file(), f"{_page_id(path)} names tests/{file}, which does not exist"
        assert last is not None, f"{_page_id(path)}: `{span}` follows no tests/FILE.py"
        if name:
            source = last.read_text()
            assert re.search(rf"^(?:async )?def {name}\(", source, re.M), (
                f"{_page_id(path)} names {last.name}::{name}, which is not a test there"
            )


# --- the command lines -------------------------------------------------------------------------------


class _ParseError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    from atrous.cli import build_parser

    parser = build_parser()

    def fail(message):  # argparse calls this instead of printing usage and exiting
        raise _ParseError(message)

    stack = [parser]
    while stack:
        p = stack.pop()
        p.error = fail
        p.allow_abbrev = False  # a page must spell a flag in full
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return parser


def _subparser(
    parser: argparse.ArgumentParser, words: list[str]
) -> tuple[argparse.ArgumentParser, list, list]:
    """The (sub-)subparser the leading words name, and the words after them."""
    p, path = parser, []
    while words:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or words[0] not in subs[0].choices:
            break
        p, path = subs[0].choices[words[0]], [*path, words[0]]
        words = words[1:]
    return p, path, words


def _atrous_commands(text: str) -> list[str]:
    """The `atrous ...` command lines of a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        for k, w in enumerate(words):
            if w == "atrous" and (k == 0 or words[k - 1] == "-m"):
                out.append(" ".join(words[k + 1 :]))
                break
    return out


def _check_command(parser, command: str, where: str, *, synopsis: bool = False) -> None:
    synopsis = synopsis or any(c in command for c in "[|") or "..." in command or "<" in command
    words = command.split() if synopsis else shlex.split(command)
    sub, path, rest = _subparser(parser, words)
    assert path, f"{where}: `atrous {command}` names no subcommand of atrous"
    if synopsis:
        known = {s for a in sub._actions for s in a.option_strings}
        for w in rest:
            flag = re.sub(r"^[\[(]+", "", w).split("=")[0].rstrip("])")
            if flag.startswith("--") and len(flag) > 2:
                assert flag in known, f"{where}: `atrous {' '.join(path)}` has no flag {flag}"
        return
    try:
        parser.parse_args(words)
    except _ParseError as e:
        raise AssertionError(f"{where}: `atrous {command}` does not parse: {e}") from e


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_shell_commands_parse(path):
    parser = _parser()
    checked = 0
    for lang, code, line, _ in _blocks(path):
        if lang not in SHELL_LANGS:
            continue
        for command in _atrous_commands(code):
            _check_command(parser, command, f"{_page_id(path)}, block at line {line}")
            checked += 1
    for span in INLINE.findall(_prose(path)):
        if span.startswith("atrous ") and not span.startswith("atrous ."):
            # a mention in prose names a subcommand and flags, not a whole command line
            _check_command(
                parser, span[len("atrous ") :], f"{_page_id(path)}, inline `{span}`", synopsis=True
            )
            checked += 1
    if path.name in ("README.md", "training.md", "evaluation.md", "diagnostics.md"):
        assert checked > 0, f"{_page_id(path)} shows no atrous command line"


def test_command_check_catches_mistakes():
    """The checker itself: a wrong subcommand, a wrong flag and a missing value are caught."""
    parser = _parser()
    for bad in ("trian --epochs 2", "train --epoch 2", "eval --checkpoint", "rf [--no-such-flag X]"):
        with pytest.raises(AssertionError):
            _check_command(parser, bad, "test")
    _check_command(parser, "hdc check 1,2,5 --kernel 3", "test")
    _check_command(parser, "rf MODEL [--size H W] [--json F]", "test")
    assert _atrous_commands("atrous eval \\\n  --checkpoint a.pt  # c\ntorchrun -m atrous train x.yaml") == [
        "eval --checkpoint a.pt",
        "train x.yaml",
    ]
