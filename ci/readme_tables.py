"""Regenerate the generated sections of README.md (the table of CONVFLOW_* variables).

Usage: ``python ci/readme_tables.py`` rewrites README.md in place; ``--check`` exits 1 if
it is out of date. tests/test_config.py runs the same comparison.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's convflow, installed or not

from convflow import config  # noqa: E402

README = ROOT / "README.md"
START = "<!-- generated: config table (make readme) -->"
END = "<!-- end of generated config table -->"


def render(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"README.md lacks the marker {START!r}")
    return f"{head}{START}\n{config.markdown_table()}\n{END}{tail}"


def main() -> int:
    text = README.read_text(encoding="utf-8")
    updated = render(text)
    if "--check" in sys.argv:
        return 0 if updated == text else 1
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
