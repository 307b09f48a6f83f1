"""Backend and algorithm selection: ordered, named rules, each with its reason.

Like PyTorch's ``select_conv_backend`` the choice is a pure function of facts (the problem,
where the data lives, which backends are available, the configuration) and never runs a
kernel, so it can be unit-tested anywhere. The result, :class:`Decision`, records every rule
considered; ``str(decision)`` is the trace ``convflow.explain()`` shows.

Backend rules, in order:

1. the ``backend=`` argument of the call;
2. ``CONVFLOW_BACKEND`` (one name, or a comma list in order of preference);
3. the device the data lives on (GPU data is computed where it lives);
4. the CPU fallback.

A forced backend (rules 1 and 2) that cannot run the problem is an error, never a silent
fallback. Within the chosen backend, its algorithm rules are tried in order and the first
that applies wins, unless ``algorithm=`` forces one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import backends as registry
from . import config
from .backends.base import Algorithm, Backend, BackendStatus, excluded_reason
from .errors import BackendUnavailableError, ConfigError, ParameterError, did_you_mean
from .params import ConvParams, ConvProblem, Direction
from .tensor import Device

logger = logging.getLogger("convflow")

@dataclass(frozen=True)
class RuleOutcome:
    """One rule's verdict: ``matched`` is True for the rule that decided."""

    rule: str
    matched: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    """Which backend and algorithm run a convolution pass, and why.

    Attributes
    ----------
    backend, algorithm : str
        The winners.
    reason : str
        Why the algorithm won (the deciding rule's explanation).
    source : str
        ``"heuristic"`` (chosen by rule), ``"forced"`` (``algorithm=`` or ``CONVFLOW_ALGO``),
        ``"autotune"`` (timed now, find mode) or ``"cache"`` (found in the perf-db).
    device : Device
        Where the computation runs.
    problem : ConvProblem
        The pass in canonical form (a transposed convolution is a backward-data pass).
    backend_rules, algorithm_rules : tuple of RuleOutcome
        Every rule considered, in order.
    backends : mapping of name to BackendStatus
        Every registered backend with its status.
    notes : tuple of str
        Data movement and preprocessing the call performs (copies, explicit padding).
    candidates : tuple of str
        The algorithms that could run it (what find mode times).
    timings : mapping of name to milliseconds (or the reason a candidate was skipped)
        With find mode: the measured time of each candidate.
    variant : str
        The code path the algorithm runs for this problem (its record's ``variant``; ``""``
        for an algorithm with one path): what the backend executes, named.
    timed_variants : mapping of name to str
        With find mode: the variant each timed candidate ran (a perf-db record's algorithm
        and key fix its variant, so the record names the code path too).
    """

    op: str
    backend: str
    algorithm: str
    reason: str
    source: str
    device: Device
    problem: ConvProblem
    params: ConvParams | None
    backend_rules: tuple[RuleOutcome, ...]
    algorithm_rules: tuple[RuleOutcome, ...]
    backends: Mapping[str, BackendStatus]
    notes: tuple[str, ...] = field(default=())
    candidates: tuple[str, ...] = field(default=())
    timings: Mapping[str, float | str] = field(default_factory=dict)
    variant: str = ""
    timed_variants: Mapping[str, str] = field(default_factory=dict)

    def with_notes(self, *notes: str) -> Decision:
        return dataclasses.replace(self, notes=self.notes + notes)

    def with_algorithm(self, backend: Backend, algorithm: str, **changes: Any) -> Decision:
        """This decision with *algorithm* instead (find mode, a run-time fallback): its
        variant follows from the algorithm's record."""
        variant = backend.algorithm(algorithm).variant(self.problem)
        return dataclasses.replace(self, algorithm=algorithm, variant=variant, **changes)

    @property
    def runs(self) -> str:
        """What runs, in words: ``"packed_direct (per-image strategy)"``."""
        return f"{self.algorithm} ({self.variant})" if self.variant else self.algorithm

    def __str__(self) -> str:
        p = self.problem
        lines = [f"convflow decision for {self.op} ({p.direction.value} pass)"]
        size = f"{p.dtype}, {p.flops / 1e9:.3g} GFLOP"
        if self.params is not None and self.params.transposed:
            # Named as the caller sees them: a transposed convolution's input is the y of the
            # convolution it transposes, and its output that convolution's x.
            lines.append(f"  problem: input{list(p.y_shape)} weight{list(p.w_shape)} "
                         f"output{list(p.x_shape)} {size}")
            lines.append(f"  computed as: the {p.direction.value} pass of the convolution it "
                         f"transposes, x{list(p.x_shape)} (this call's output) -> "
                         f"y{list(p.y_shape)} (this call's input)")
        else:
            lines.append(f"  problem: x{list(p.x_shape)} w{list(p.w_shape)} y{list(p.y_shape)} "
                         f"{size}")
        if self.params is not None:
            lines.append(f"  params:  {self.params.describe()}")
        lines.append(f"  canonical pass: stride={p.stride}, zero padding={p.padding}, "
                     f"dilation={p.dilation}, groups={p.groups}")
        lines.append("  backends:")
        for status in self.backends.values():
            state = "available  " if status.available else "unavailable"
            lines.append(f"    {status.name:<8} {state} {status.reason}")
        lines.append("  backend rules (first match wins):")
        lines.extend(_format_rules(self.backend_rules))
        heading = "forced" if self.source == "forced" else "first match wins"
        if self.candidates and self.source != "forced":
            heading += f"; candidates: {', '.join(self.candidates)}"
        lines.append(f"  algorithm rules of {self.backend} ({heading}):")
        lines.extend(_format_rules(self.algorithm_rules))
        if self.timings:
            lines.append("  find mode timings (median of the runs, ms):")
            for name, value in self.timings.items():
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                variant = self.timed_variants.get(name, "")
                label = f"{name} ({variant})" if variant else name
                lines.append(f"    {label:<14} {shown}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        lines.append(f"  runs: {self.runs}")
        lines.append(f"  => backend={self.backend} algorithm={self.algorithm} on {self.device} "
                     f"[{self.source}]: {self.reason}")
        return "\n".join(lines)


def _format_rules(outcomes: tuple[RuleOutcome, ...]) -> list[str]:
    width = max((len(o.rule) for o in outcomes), default=0)
    return [f"    {i}. {o.rule:<{width}}  {'-> ' if o.matched else '   '}{o.detail}"
            for i, o in enumerate(outcomes, 1)]


def _try_backend(name: str, problem: ConvProblem, data_device: Device) -> tuple[Backend | None, Device, str]:
    """The backend and device if it can run *problem*, else None and the reason."""
    status = registry.backend_status(name)
    if not status.available:
        return None, data_device, f"{name} is unavailable: {status.reason}"
    backend = registry.get_backend(name)
    device = data_device if data_device.type == backend.device_type else backend.default_device()
    why_not = backend.unsupported_reason(problem, device)
    if why_not is not None:
        return None, device, f"{name} cannot run this problem: {why_not}"
    return backend, device, ""


def select_backend(op: str, problem: ConvProblem, data_device: Device,
                   backend_arg: Any) -> tuple[Backend, Device, list[RuleOutcome]]:
    """Apply the backend rules in order."""
    outcomes: list[RuleOutcome] = []
    if backend_arg is not None:
        name = registry.validate_backend_name(backend_arg, op)
        given = f"backend={backend_arg!r}" + (f" (= {name!r})" if backend_arg != name else "")
        backend, device, why_not = _try_backend(name, problem, data_device)
        if backend is None:
            raise BackendUnavailableError(
                f"{op}: {given} was requested, but {why_not}; choose another backend "
                f"or drop the backend argument")
        outcomes.append(RuleOutcome("backend argument", True, f"{given} given"))
        return backend, device, outcomes
    outcomes.append(RuleOutcome("backend argument", False, "not given"))

    env_names = config.get("CONVFLOW_BACKEND")
    if env_names:
        source = f"environment variable CONVFLOW_BACKEND={','.join(env_names)!r}"
        names = [registry.validate_backend_name(n, source, ConfigError) for n in env_names]
        reasons: list[str] = []
        for name in names:
            backend, device, why_not = _try_backend(name, problem, data_device)
            if backend is not None:
                skipped = f" (skipped: {'; '.join(reasons)})" if reasons else ""
                outcomes.append(RuleOutcome("CONVFLOW_BACKEND", True,
                                            f"{name} is the first usable of {names}{skipped}"))
                return backend, device, outcomes
            reasons.append(why_not)
        raise BackendUnavailableError(
            f"{op}: {source} forces {names}, but none can run: {'; '.join(reasons)}; change or "
            f"unset CONVFLOW_BACKEND")
    outcomes.append(RuleOutcome("CONVFLOW_BACKEND", False, "not set"))

    if data_device.type != "cpu":
        owner = registry.DEVICE_BACKENDS.get(data_device.type)
        if owner is None:
            raise BackendUnavailableError(
                f"{op}: the data lives on {data_device}, but no backend for {data_device.type} "
                f"devices is registered; move the data to the CPU")
        backend, device, why_not = _try_backend(owner, problem, data_device)
        if backend is None:
            raise BackendUnavailableError(
                f"{op}: the data lives on {data_device}, but {why_not}; move the data with "
                f"convflow.tensor(x, device='cpu') or pass backend=")
        outcomes.append(RuleOutcome("data device", True,
                                    f"data lives on {data_device}, computed there by {owner}"))
        return backend, device, outcomes
    outcomes.append(RuleOutcome("data device", False, "data lives on the CPU"))

    cpu_reasons: list[str] = []
    for name in registry.cpu_fallbacks():
        backend, device, why_not = _try_backend(name, problem, data_device)
        if backend is not None:
            outcomes.append(RuleOutcome("cpu fallback", True, f"{name}, the CPU backend"))
            return backend, device, outcomes
        logger.debug("%s: CPU backend %s skipped: %s", op, name, why_not)
        cpu_reasons.append(why_not)
    raise BackendUnavailableError(f"{op}: no backend can run this call: {'; '.join(cpu_reasons)}")


@dataclass(frozen=True)
class AlgorithmChoice:
    """The algorithm rules' verdict: the chosen rule, why, how, and the runnable candidates
    (after disabling and deterministic filtering) that find mode may time instead."""

    rule: Algorithm
    reason: str
    source: str
    outcomes: tuple[RuleOutcome, ...]
    candidates: tuple[str, ...]


def known_algorithm_names() -> set[str]:
    """Every algorithm name of every backend whose module loads (for validating names)."""
    names: set[str] = set()
    for name in registry.BACKEND_NAMES:
        backend = registry.loaded_backend(name)
        if backend is not None:
            names.update(backend.algorithm_names())
    return names


def _check_disabled_names() -> None:
    disabled = frozenset(config.get("CONVFLOW_DISABLE_ALGOS"))
    unknown = disabled - known_algorithm_names() if disabled else frozenset()
    if unknown:
        known = sorted(known_algorithm_names())
        name = sorted(unknown)[0]
        raise ConfigError(
            f"environment variable CONVFLOW_DISABLE_ALGOS={','.join(sorted(disabled))!r}: "
            f"unknown algorithm {name!r}{did_you_mean(name, known)}; known algorithms: "
            f"{', '.join(known)}")


def _wrong_algorithm_hint(backend: Backend, forced: Any, candidates: tuple[str, ...]) -> str:
    """Why a forced name is not among this pass's algorithms: the passes it does run, when it
    is one of the backend's algorithms (so no look-alike is suggested in its place), else the
    closest valid name."""
    runs = [rule for rule in backend.algorithm_rules() if rule.name == forced]
    if runs:
        passes = [d.value for d in Direction if d in runs[0].directions]
        return f" ({forced} runs only the {' and '.join(passes)} pass{'es' if len(passes) > 1 else ''})"
    return did_you_mean(str(forced), candidates) or did_you_mean(
        str(forced), [rule.name for rule in backend.algorithm_rules()])


def select_algorithm(op: str, backend: Backend, problem: ConvProblem,
                     algorithm_arg: Any, device: Device | None = None) -> AlgorithmChoice:
    """Apply the backend's algorithm rules in order (or a forced algorithm), honouring
    CONVFLOW_ALGO, CONVFLOW_DISABLE_ALGOS and CONVFLOW_DETERMINISTIC; the rules are those of
    *device* (its limits decide what can run)."""
    rules = [r for r in backend.algorithm_rules(device) if problem.direction in r.directions]
    _check_disabled_names()
    excluded = excluded_reason

    runnable = [r for r in rules if r.can_run(problem)[0] and not excluded(r)]
    candidates = tuple(r.name for r in runnable)
    forced, source = algorithm_arg, "algorithm="
    if forced is None and config.get("CONVFLOW_ALGO"):
        forced, source = config.get("CONVFLOW_ALGO"), "CONVFLOW_ALGO="
    if forced is not None:
        # A bad CONVFLOW_ALGO is a configuration error; a bad algorithm= a parameter error.
        error = ConfigError if source == "CONVFLOW_ALGO=" else ParameterError
        by_name = {r.name: r for r in rules}
        valid = ", ".join(candidates) or "none"
        if not isinstance(forced, str) or forced not in by_name:
            raise error(
                f"{op}: {source}{forced!r} is not an algorithm of the {backend.name} backend for "
                f"the {problem.direction.value} pass{_wrong_algorithm_hint(backend, forced, candidates)}"
                f"; valid for this problem: {valid}")
        rule = by_name[forced]
        ok, why = rule.can_run(problem)
        if not ok:
            raise error(f"{op}: {source}{forced!r} cannot run this problem: {why}; valid "
                        f"for this problem: {valid}")
        if excluded(rule):
            raise error(f"{op}: {source}{forced!r} is {excluded(rule)}; valid for this "
                        f"problem: {valid}")
        reason = f"forced by {source}{rule.name!r}"
        return AlgorithmChoice(rule, reason, "forced", (RuleOutcome(rule.name, True, reason),),
                               (rule.name,))
    if not candidates:
        reasons = "; ".join(f"{r.name}: {excluded(r) or r.can_run(problem)[1]}" for r in rules)
        raise ParameterError(f"{op}: no algorithm of the {backend.name} backend is left for this "
                             f"problem ({reasons}); relax CONVFLOW_DISABLE_ALGOS or "
                             f"CONVFLOW_DETERMINISTIC")
    outcomes = []
    for rule in rules:
        why_excluded = excluded(rule)
        if why_excluded:
            outcomes.append(RuleOutcome(rule.name, False, why_excluded))
            continue
        matched, why = rule.applies(problem)
        outcomes.append(RuleOutcome(rule.name, matched, why))
        if matched:
            return AlgorithmChoice(rule, why, "heuristic", tuple(outcomes), candidates)
    # Every rule that would have matched is excluded: take the first runnable one left.
    rule = runnable[0]
    reason = (f"the rules' own choices are excluded; {rule.name} is the first runnable "
              f"algorithm left")
    outcomes.append(RuleOutcome(rule.name, True, reason))
    return AlgorithmChoice(rule, reason, "heuristic", tuple(outcomes), candidates)


def with_run_time_fallback(decision: Decision, backend: Backend) -> Decision:
    """The decision as it really runs: if its algorithm failed at run time for this problem
    on this device earlier in the process, the algorithm that ran instead, with a note; if
    its algorithm is not ready to run yet (numba kernels compiling in the background), the
    algorithm that runs meanwhile, with a note."""
    fallback = backend.run_time_fallback(decision.problem, decision.device, decision.algorithm)
    if fallback is not None:
        replacement, why = fallback
        note = (f"{decision.algorithm} failed at run time on {decision.device} ({why}); "
                f"{replacement} runs instead")
        decision = decision.with_algorithm(backend, replacement, notes=(*decision.notes, note),
                                           reason=f"{note} (chosen before: {decision.reason})")
    substitute = backend.first_use_substitute(decision)
    if substitute is None:
        return decision
    replacement, why = substitute
    note = f"{why}; until then this call runs {replacement}"
    return decision.with_algorithm(backend, replacement, notes=(*decision.notes, note),
                                   reason=f"{note} (chosen: {decision.runs}: {decision.reason})")


def select(op: str, problem: ConvProblem, data_device: Device, *, params: ConvParams | None = None,
           backend: Any = None, algorithm: Any = None) -> tuple[Decision, Backend]:
    """Choose the backend and algorithm for one pass; return the Decision and the backend."""
    chosen, device, backend_outcomes = select_backend(op, problem, data_device, backend)
    choice = select_algorithm(op, chosen, problem, algorithm, device)
    decision = Decision(
        op=op, backend=chosen.name, algorithm=choice.rule.name, reason=choice.reason,
        source=choice.source, device=device, problem=problem, params=params,
        backend_rules=tuple(backend_outcomes), algorithm_rules=choice.outcomes,
        backends=registry.BackendStatuses(), candidates=choice.candidates,
        variant=choice.rule.variant(problem),
    )
    return decision, chosen
