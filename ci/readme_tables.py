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


def _threads(meta: dict) -> str:
    """The thread settings each contender's process reported (format 2), or the one count
    the old in-process runs recorded."""
    if "workers" not in meta:
        return f"{meta['threads']} threads"
    parts = []
    for name, worker in meta["workers"].items():
        own = worker["settings"].get(name, {})
        if "threads" in own:
            layer = own.get("threading_layer")
            parts.append(f"{name} {own['threads']} threads" + (f" ({layer})" if layer else ""))
        elif "torch.get_num_threads()" in own:
            parts.append(f"{name} {own['torch.get_num_threads()']} threads")
    return ", ".join(parts)


def _mode(meta: dict) -> str:
    """How the contenders ran; the runs before the format-2 JSON ran all in one process."""
    if "mode" not in meta:
        return "in-process (all contenders in one process, interleaved)"
    mode = meta["mode"]
    text = ("isolated (each contender in its own process)" if mode["processes"] == "isolated"
            else "in-process (all contenders in one process, interleaved)")
    if mode["torch_first"]:
        text += ", torch imported first in convflow's process"
    if mode["busy_core"]:
        text += ", one core busy with an unrelated process"
    return text


def _ratio_table(rows: list[dict], contenders: list[str]) -> list[str]:
    first = contenders[0]
    header = "| time ratio | batch | layers | all | " + " | ".join(KINDS) + " |"
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for other in contenders[1:]:
        for batch in sorted({row["batch"] for row in rows}):
            mine = [r for r in rows if r["batch"] == batch and first in r["results"]
                    and other in r["results"]]
            if not mine:
                continue
            ratios = [r["results"][first]["median_ms"] / r["results"][other]["median_ms"]
                      for r in mine]
            cells = [f"{_geomean(ratios):.2f}"]
            for kind in KINDS:
                subset = [q for q, r in zip(ratios, mine) if r["kind"] == kind]
                cells.append(f"{_geomean(subset):.2f}" if subset else "-")
            lines.append(f"| {first} / {other} | {batch} | {len(mine)} | " + " | ".join(cells)
                         + " |")
    return lines


def _sequence_table(sequences: list[dict], contenders: list[str]) -> list[str]:
    """Each network's layers back to back (--sequence): the totals and their ratio."""
    first = contenders[0]
    lines = ["| back to back: network | batch | convs | " + " | ".join(f"{c} ms" for c in contenders)
             + " | " + " | ".join(f"{first} / {c}" for c in contenders[1:]) + " |"]
    lines.append("|" + " --- |" * (lines[0].count("|") - 1))
    for seq in sequences:
        results = seq["results"]
        times = [f"{results[c]['median_ms']:.2f}" if c in results else "n/a" for c in contenders]
        ratios = [f"{results[first]['median_ms'] / results[c]['median_ms']:.2f}"
                  if first in results and c in results else "-" for c in contenders[1:]]
        lines.append(f"| {seq['network']} | {seq['batch']} | {seq['convs']} | "
                     + " | ".join(times + ratios) + " |")
    return lines


def bench_table() -> str:
    """Per results file: its command, date, host, mode and threads, then per pass a table of
    geometric-mean time ratios per contender pair and batch (and the back-to-back totals)."""
    lines = []
    for path in sorted(BENCH_DIR.glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        meta = result["meta"]
        contenders = list(meta["contenders"])
        lines.append(f"`{meta['command']}` ({meta['date'][:10]}, {meta['host']}, {_threads(meta)}, "
                     f"numpy sgemm peak {meta['sgemm_gflops']:.0f} GFLOP/s; results in "
                     f"`ci/bench/{path.name}`):")
        lines.append("")
        for kind in meta.get("passes", ["forward"]):
            rows = [r for r in result["rows"] if r.get("pass", "forward") == kind]
            lines.append(f"Pass: {kind}; mode: {_mode(meta)}.")
            lines.append("")
            lines.extend(_ratio_table(rows, contenders))
            lines.append("")
            sequences = [s for s in result.get("sequences", []) if s["pass"] == kind]
            if sequences:
                lines.extend(_sequence_table(sequences, contenders))
                lines.append("")
            three = result.get("summary", {}).get(kind, {}).get("three_by_three", {})
            if isinstance(three, dict) and three and "median_gflops" in next(iter(three.values())):
                lines.append("3x3 layers: " + "; ".join(
                    f"{name} {v['median_gflops']:.0f} GFLOP/s median, {v['best_gflops']:.0f} best "
                    f"({v['best_percent_of_sgemm']:.0f}% of the sgemm peak)"
                    for name, v in three.items()) + ".")
                lines.append("")
        first_call = meta.get("first_call")
        for backend, latency in (first_call or {}).items():
            lines.append(f"First call of {backend} in a new process, from its imports to the "
                         f"result (`--first-call`): " + "; ".join(
                             f"{label} {seconds:.2f} s" for label, seconds in
                             latency.items()) + ".")
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
