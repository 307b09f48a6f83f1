"""Find mode: refine the rules' choice of algorithm by measurement, through the perf-db.

With ``CONVFLOW_FIND_MODE=autotune``, the first time a problem is seen every candidate
algorithm (the runnable ones left after ``CONVFLOW_DISABLE_ALGOS`` and
``CONVFLOW_DETERMINISTIC``) is timed on operands of the problem's real shapes: a warm-up call
(first-call compiles are not timed), then runs until its share of
``CONVFLOW_TUNE_BUDGET_MS`` is spent (at least one, at most nine), summarized by the median.
Candidates that fail or run out of memory are skipped, not fatal; candidates not reached
within the budget are skipped, the rules' own choice being timed first. The fastest is
recorded in the perf-db, where later calls, in any process, find it without timing anything.
The selector itself stays pure: this step runs after it, while a call is planned.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import statistics
import time
from typing import Any

import numpy as np

from . import config, perfdb
from .backends.base import Backend, run_pass
from .params import Direction
from .selector import Decision
from .tensor import Tensor

logger = logging.getLogger("convflow")

_MAX_RUNS = 9
_MIN_RUNS = 3


# The policy variables that change which candidate is fastest (how a candidate may compute,
# and how much scratch it may tile with); the rest of the configuration only changes which
# candidates exist, and the candidates are part of the key.
_POLICY = ("CONVFLOW_DETERMINISTIC", "CONVFLOW_ALLOW_TF32", "CONVFLOW_WORKSPACE_MB")


def _plain(value: Any) -> Any:
    """A problem field as JSON: enums by value, tuples as lists."""
    if isinstance(value, Direction):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def problem_fields(decision: Decision, backend: Backend) -> dict[str, Any]:
    """Everything that changes which algorithm is fastest for a decision's problem: every
    field of the problem (so a new field joins the key by itself: shapes, dtype, layout,
    activation, every parameter), the policy, the device and the candidates."""
    from . import __version__

    fields = {f.name: _plain(getattr(decision.problem, f.name))
              for f in dataclasses.fields(decision.problem)}
    fields.update({name: config.get(name) for name in _POLICY})
    fields.update({
        "backend": decision.backend, "device": backend.device_identity(decision.device),
        "convflow": __version__, "candidates": sorted(decision.candidates),
    })
    return fields


def refine(decision: Decision, backend: Backend) -> Decision:
    """The decision, with its algorithm found by the perf-db or by timing in autotune mode."""
    if (config.get("CONVFLOW_FIND_MODE") != "autotune" or decision.source == "forced"
            or len(decision.candidates) < 2):
        return decision
    db = perfdb.current()
    key = perfdb.problem_key(problem_fields(decision, backend))
    entry = db.lookup(key)
    if entry is not None:
        entry = _without_run_time_failure(db, key, entry, decision, backend)
    if entry is not None and entry.algorithm in decision.candidates:
        when = datetime.datetime.fromtimestamp(entry.created).isoformat(timespec="seconds")
        return decision.with_algorithm(
            backend, entry.algorithm, source="cache", timings=dict(entry.timings),
            timed_variants=_variants(backend, decision, entry.timings),
            reason=f"the perf-db ({db.path}) records {entry.algorithm} as the fastest of "
                   f"{len(decision.candidates)} candidates, timed {when}")
    order = [decision.algorithm] + [c for c in decision.candidates if c != decision.algorithm]
    timings = time_candidates(backend, decision, order)
    measured = {name: value for name, value in timings.items() if isinstance(value, float)}
    if not measured:
        logger.warning("convflow: autotune could time no candidate for %s (%s); keeping %s",
                       decision.problem.describe(), timings, decision.algorithm)
        return dataclasses.replace(decision, timings=timings)
    best = min(measured, key=lambda name: measured[name])
    db.store(key, perfdb.Entry(best, timings, time.time()))
    return decision.with_algorithm(
        backend, best, source="autotune", timings=timings,
        timed_variants=_variants(backend, decision, timings),
        reason=f"the fastest of {len(measured)} candidates timed now ({measured[best]:.3f} ms); "
               f"recorded in the perf-db {db.path}")


def _variants(backend: Backend, decision: Decision, names: Any) -> dict[str, str]:
    """The variant each named candidate runs for the decision's problem."""
    known = {record.name: record for record in backend.algorithm_rules(decision.device)}
    return {name: known[name].variant(decision.problem) for name in names if name in known}


def _without_run_time_failure(db: perfdb.PerfDB, key: str, entry: perfdb.Entry,
                              decision: Decision, backend: Backend) -> perfdb.Entry:
    """*entry*, or, when its algorithm has since failed at run time here, the record of the
    algorithm that ran instead (stored, so the perf-db names what runs)."""
    fallback = backend.run_time_fallback(decision.problem, decision.device, entry.algorithm)
    if fallback is None:
        return entry
    replacement, why = fallback
    corrected = perfdb.Entry(replacement, {**entry.timings,
                                           entry.algorithm: f"failed at run time: {why}"},
                             time.time())
    db.store(key, corrected)
    return corrected


def _operands(backend: Backend, decision: Decision) -> tuple[Tensor, Tensor]:
    """Random operands of the pass's shapes on its device (values do not change times)."""
    p = decision.problem
    rng = np.random.default_rng(0)
    dtype = np.dtype(p.dtype)

    def make(shape: tuple[int, ...], activation: bool = True) -> Tensor:
        """An operand in the problem's own memory layout: channels-last activations are
        channels-last in memory, viewed channels-first as the passes take them."""
        if not (activation and p.channels_last):
            return backend.upload(rng.standard_normal(shape).astype(dtype), decision.device)
        last = (shape[0], *shape[2:], shape[1])
        data = backend.upload(rng.standard_normal(last).astype(dtype), decision.device)
        return data.permute((0, len(shape) - 1, *range(1, len(shape) - 1)))

    if p.direction == Direction.FORWARD:
        return make(p.x_shape), make(p.w_shape, activation=False)
    if p.direction == Direction.BACKWARD_DATA:
        return make(p.y_shape), make(p.w_shape, activation=False)
    return make(p.x_shape), make(p.y_shape)


def time_candidates(backend: Backend, decision: Decision,
                    order: list[str]) -> dict[str, float | str]:
    """Median milliseconds per candidate, or why it was skipped."""
    budget = config.get("CONVFLOW_TUNE_BUDGET_MS") / 1e3
    share = budget / len(order)
    start = time.perf_counter()
    results: dict[str, float | str] = {}
    try:
        a, b = _operands(backend, decision)
    except (MemoryError, RuntimeError, ValueError) as exc:
        return {name: f"skipped: operands could not be made ({exc})" for name in order}
    for name in order:
        if results and time.perf_counter() - start > budget:
            results[name] = "skipped: tuning budget spent"
            continue
        try:
            run_pass(backend, decision.problem, name, a, b)  # warm-up: compiles are not timed
            backend.synchronize(decision.device)
            times: list[float] = []
            began = time.perf_counter()
            while len(times) < _MAX_RUNS:
                t0 = time.perf_counter()
                run_pass(backend, decision.problem, name, a, b)
                backend.synchronize(decision.device)
                times.append(time.perf_counter() - t0)
                spent = time.perf_counter() - began
                if len(times) >= _MIN_RUNS and spent > share:
                    break
                if time.perf_counter() - start > budget:
                    break
            results[name] = statistics.median(times) * 1e3
        except Exception as exc:  # a failing candidate is skipped, not fatal
            results[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
    return results
