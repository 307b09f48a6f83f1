"""Regenerate the generated sections of README.md: the table of CONVFLOW_* variables (from
convflow/config.py) and the benchmark summary (from the `convflow bench --json` results
committed in ci/bench/, with the command and date that made them; never typed-in numbers).

Usage: ``python ci/readme_tables.py`` rewrites README.md in place; ``--check`` exits 1 if
it is out of date. tests/test_config.py runs the same comparison.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's convflow, installed or not

from convflow import config  # noqa: E402

README = ROOT / "README.md"
BENCH_DIR = ROOT / "ci" / "bench"
KINDS = ("1x1", "3x3", "depthwise", "grouped", "other")


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def bench_table() -> str:
    """One row per (results file, contender pair, batch): geometric-mean time ratios."""
    lines = []
    for path in sorted(BENCH_DIR.glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        meta = result["meta"]
        contenders = list(meta["contenders"])
        first = contenders[0]
        lines.append(f"`{meta['command']}` ({meta['date'][:10]}, {meta['host']}, {meta['threads']} "
                     f"threads, numpy sgemm peak {meta['sgemm_gflops']:.0f} GFLOP/s; results in "
                     f"`ci/bench/{path.name}`):")
        lines.append("")
        header = "| time ratio | batch | layers | all | " + " | ".join(KINDS) + " |"
        lines.append(header)
        lines.append("|" + " --- |" * (header.count("|") - 1))
        for other in contenders[1:]:
            for batch in sorted({row["batch"] for row in result["rows"]}):
                rows = [r for r in result["rows"] if r["batch"] == batch]

                ratios = [r["results"][first]["median_ms"] / r["results"][other]["median_ms"]
                          for r in rows]
                cells = [f"{_geomean(ratios):.2f}"]
                for kind in KINDS:
                    subset = [q for q, r in zip(ratios, rows) if r["kind"] == kind]
                    cells.append(f"{_geomean(subset):.2f}" if subset else "-")
                lines.append(f"| {first} / {other} | {batch} | {len(rows)} | " + " | ".join(cells)
                             + " |")
        lines.append("")
    if not lines:
        return "No benchmark results are committed yet (see `ci/bench/`)."
    return "\n".join(lines).rstrip()


SECTIONS: dict[str, Callable[[], str]] = {
    "config table": config.markdown_table,
    "benchmark table": bench_table,
}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        start = f"<!-- generated: {name} (make readme) -->"
        end = f"<!-- end of generated {name} -->"
        head, _, rest = text.partition(start)
        if not rest:
            raise SystemExit(f"README.md lacks the marker {start!r}")
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{make()}\n{end}{tail}"
    return text


def main() -> int:
    text = README.read_text(encoding="utf-8")
    updated = render(text)
    if "--check" in sys.argv:
        return 0 if updated == text else 1
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
