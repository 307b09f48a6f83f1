"""The README's Python examples, run as written, each in a fresh interpreter.

A block may be preceded by a marker comment: ``<!-- readme-test: skip (why) -->`` for blocks
that need hardware CI does not have (a CUDA GPU), ``<!-- readme-test: needs opencl -->`` for
blocks that need a backend (skipped with its reason where it is unavailable, failed where
``CONVFLOW_TEST_REQUIRE`` lists it), ``<!-- readme-test: needs dask -->`` for blocks that
need an optional package (skipped where it is not installed).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from convflow.backends import BACKEND_NAMES

from conftest import require_backend

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```python\n(?P<code>.*?)```",
                    re.DOTALL)


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    marker: str

    @property
    def heading(self) -> str:
        """The section the block stands in, to name the test."""
        above = README.read_text("utf-8").splitlines()[: self.line]
        titles = [line.lstrip("#").strip() for line in above if line.startswith("#")]
        return titles[-1] if titles else "top"


def python_blocks() -> list[Block]:
    text = README.read_text("utf-8")
    return [Block(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("marker") or "")
            for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks()


def test_the_readme_has_python_examples_and_every_marker_is_known():
    assert len(BLOCKS) >= 4
    for block in BLOCKS:
        assert block.marker == "" or re.fullmatch(r"skip \(.+\)|needs (numba|opencl|cupy|dask)",
                                                  block.marker), block.marker


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}-{b.heading}" for b in BLOCKS])
def test_readme_block_runs(block, tmp_path):
    if block.marker.startswith("skip"):
        pytest.skip(f"README block at line {block.line}: {block.marker[len('skip '):].strip('()')}")
    needs = block.marker.split()[1] if block.marker.startswith("needs ") else ""
    if needs in BACKEND_NAMES:
        require_backend(needs)
    elif needs:
        pytest.importorskip(needs, reason=f"the README block at line {block.line} needs {needs}")
    script = tmp_path / f"readme_line{block.line}.py"
    script.write_text(block.code, "utf-8")
    # As a reader runs it: `python example.py`, from an empty directory, a private cache.
    env = {**os.environ, "CONVFLOW_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, (f"README block at line {block.line} failed:\n"
                                    f"{block.code}\n{result.stdout}\n{result.stderr}")


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_section_resolves():
    text = README.read_text("utf-8")
    anchors = {_github_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert "set-up" in links and "command-line" in links  # the table of contents
    assert sorted(set(links) - anchors) == []
    sections = {_github_anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")}
    assert sorted(sections - set(links)) == []  # the table of contents lists every section
