"""`benchmarks/code_lines.py`: what counts as a code line (the issue-12 size measure)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("code_lines", ROOT / "benchmarks" / "code_lines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''"""Module docstring
over two lines."""

import os  # a comment after code counts once

# a comment line


def f(
    x: int,
) -> int:
    """Docstring."""
    text = """a string that is
not a docstring"""
    return x + len(text)
'''


def test_code_lines_skip_blanks_comments_and_docstrings():
    # code lines: import, def f(, x: int, ) -> int:, text = ..., not a docstring""", return
    assert _script().code_lines(SOURCE) == 7


def test_count_reads_a_revision_of_the_repository():
    files = _script().count("HEAD")
    assert "src/neco/evaluation/runner.py" in files
    assert all(path.endswith(".py") for path in files)
    assert files["src/neco/evaluation/runner.py"] > 50


def test_the_modules_of_other_issues_exist():
    # a renamed module would silently drop out of the issue-24 "before the other features" figure
    files = _script().count("HEAD", ("src/neco",))
    missing = [p for p in _script().OTHER_ISSUES_MODULES if p not in files]
    assert not missing
