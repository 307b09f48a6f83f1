"""Parametrized problem grids shared by the forward, transposed and backward tests.

Each grid covers, for 1-, 2- and 3-D: every padding form (int, per-dim ints, asymmetric
pairs, 'valid', 'same', 'same_lower'), stride, dilation, groups, depthwise with and without
a channel multiplier, 1x1 kernels, every padding mode, odd kernel shapes and kernels as large
as the input. A seeded random sweep adds combinations nobody wrote down.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

SPATIAL = {1: (11,), 2: (7, 9), 3: (5, 6, 7)}


@dataclass(frozen=True)
class Case:
    nd: int
    batch: int = 2
    in_channels: int = 4
    out_channels: int = 6
    spatial: tuple[int, ...] = ()
    kernel: tuple[int, ...] = ()
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    padding_mode: str = "zeros"
    output_padding: Any = 0
    tags: tuple[str, ...] = field(default=(), compare=False)

    def per_dim(self, value: Any) -> tuple[int, ...]:
        return (value,) * self.nd if isinstance(value, int) else tuple(value)

    def padding_pairs(self) -> tuple[tuple[int, int], ...]:
        """Resolve the padding from its definition (ONNX auto_pad), independently of convflow."""
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return ((0, 0),) * self.nd
            pairs = []
            for size, k, s, d in zip(self.spatial, self.kernel, self.per_dim(self.stride),
                                     self.per_dim(self.dilation)):
                out = math.ceil(size / s)
                total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
                small, large = total // 2, total - total // 2
                pairs.append((large, small) if self.padding == "same_lower" else (small, large))
            return tuple(pairs)
        if isinstance(self.padding, int):
            return ((self.padding, self.padding),) * self.nd
        return tuple((p, p) if isinstance(p, int) else tuple(p) for p in self.padding)

    def weight_shape(self, transposed: bool = False) -> tuple[int, ...]:
        if transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    @property
    def id(self) -> str:
        parts = [f"{self.nd}d", f"n{self.batch}c{self.in_channels}o{self.out_channels}",
                 "x".join(map(str, self.spatial)), "k" + "x".join(map(str, self.kernel))]
        for name in ("stride", "padding", "dilation", "groups", "output_padding"):
            value = getattr(self, name)
            if value not in (0, 1) or (name == "padding" and value == 1):
                parts.append(f"{name[0:3]}{value!r}".replace(" ", ""))
        if self.padding_mode != "zeros":
            parts.append(self.padding_mode)
        return "-".join(parts)


def forward_cases() -> list[Case]:
    cases = []
    for nd in (1, 2, 3):
        base = Case(nd, spatial=SPATIAL[nd], kernel=(3,) * nd)
        ones = (1,) * nd
        asym = tuple((i % 3, (i + 1) % 2 + 1) for i in range(nd))
        variants = [
            {},
            {"padding": 1},
            {"padding": tuple(range(1, nd + 1))},
            {"padding": asym},
            {"padding": "valid"},
            {"padding": "same"},
            {"padding": "same_lower"},
            {"padding": "same", "stride": 2},
            {"padding": "same_lower", "stride": 3},
            {"padding": "same", "dilation": 2},
            {"stride": 2},
            {"stride": tuple(range(1, nd + 1))},
            {"stride": 2, "padding": asym},
            {"dilation": 2},
            {"dilation": 2, "padding": 2, "stride": 2},
            {"groups": 2},
            {"groups": 2, "stride": 2, "padding": 1},
            {"in_channels": 4, "out_channels": 4, "groups": 4, "padding": 1},
            {"in_channels": 4, "out_channels": 8, "groups": 4, "stride": 2},
            {"in_channels": 3, "out_channels": 6, "groups": 3, "dilation": 2, "padding": asym},
            {"kernel": ones},
            {"kernel": ones, "stride": 2},
            {"kernel": ones, "groups": 2},
            {"kernel": ones, "padding": 1},
            {"kernel": tuple(range(1, nd + 1)), "padding": asym},
            {"kernel": SPATIAL[nd]},
            {"in_channels": 32, "out_channels": 16, "padding": 1},
            {"in_channels": 16, "out_channels": 32, "groups": 4, "padding": "same"},
            {"batch": 1, "in_channels": 1, "out_channels": 1},
            {"padding": 2, "padding_mode": "reflect"},
            {"padding": asym, "padding_mode": "reflect", "stride": 2},
            {"padding": 2, "padding_mode": "replicate"},
            {"padding": asym, "padding_mode": "replicate", "dilation": 2},
            {"padding": 2, "padding_mode": "circular"},
            {"padding": "same", "padding_mode": "circular", "groups": 2},
            {"padding": "same", "padding_mode": "reflect", "in_channels": 4, "out_channels": 4,
             "groups": 4},
        ]
        cases.extend(replace(base, **variant) for variant in variants)
    return cases


def transposed_cases() -> list[Case]:
    cases = []
    for nd in (1, 2, 3):
        base = Case(nd, spatial=SPATIAL[nd], kernel=(3,) * nd)
        ones = (1,) * nd
        asym = tuple((i % 3, (i + 1) % 2) for i in range(nd))
        variants = [
            {},
            {"padding": 1},
            {"padding": asym},
            {"stride": 2},
            {"stride": 2, "output_padding": 1},
            {"stride": tuple(range(1, nd + 1)), "output_padding": tuple(range(nd))},
            {"stride": 3, "padding": 1, "output_padding": 2},
            {"dilation": 2},
            {"dilation": 2, "output_padding": 1},
            {"dilation": 2, "stride": 2, "padding": asym, "output_padding": 1},
            {"groups": 2},
            {"groups": 2, "stride": 2, "padding": 1, "output_padding": 1},
            {"in_channels": 4, "out_channels": 4, "groups": 4, "padding": 1},
            {"in_channels": 4, "out_channels": 8, "groups": 4, "stride": 2},
            {"kernel": ones},
            {"kernel": ones, "stride": 2, "output_padding": 1},
            {"kernel": ones, "groups": 2},
            {"kernel": tuple(range(1, nd + 1)), "stride": 2},
            {"in_channels": 32, "out_channels": 16, "padding": 1, "stride": 2},
        ]
        cases.extend(replace(base, **variant) for variant in variants)
    return cases


def random_cases(seed: int, count: int, transposed: bool = False) -> list[Case]:
    """Seeded random problems; invalid combinations are redrawn."""
    rng = random.Random(seed)
    cases: list[Case] = []
    while len(cases) < count:
        nd = rng.choice((1, 2, 3))
        groups = rng.choice((1, 1, 2, 3))
        in_channels = groups * rng.choice((1, 2, 3, 5))
        out_channels = groups * rng.choice((1, 2, 4))
        if rng.random() < 0.2:
            groups = in_channels = rng.choice((2, 3, 4))
            out_channels = in_channels * rng.choice((1, 2))
        kernel = (1,) * nd if rng.random() < 0.25 else tuple(rng.choice((1, 2, 3)) for _ in range(nd))
        stride = tuple(rng.choice((1, 1, 2, 3)) for _ in range(nd))
        dilation = tuple(rng.choice((1, 1, 2)) for _ in range(nd))
        spatial = tuple(rng.randint(4, 9) if nd < 3 else rng.randint(3, 6) for _ in range(nd))
        padding = tuple((rng.randint(0, 2), rng.randint(0, 2)) for _ in range(nd))
        if rng.random() < 0.3:
            padding = ((0, 0),) * nd
        case = Case(nd, rng.choice((1, 2, 3)), in_channels, out_channels, spatial, kernel, stride,
                    padding, dilation, groups)
        if transposed:
            output_padding = tuple(rng.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation))
            case = replace(case, output_padding=output_padding)
            full = [(i - 1) * s + d * (k - 1) + 1 + op for i, s, d, k, op in
                    zip(spatial, stride, dilation, kernel, output_padding)]
            if any(f - lo - hi <= 0 for f, (lo, hi) in zip(full, padding)):
                continue
        else:
            if any(i + lo + hi < d * (k - 1) + 1
                   for i, (lo, hi), d, k in zip(spatial, padding, dilation, kernel)):
                continue
            case = replace(case, padding_mode=rng.choice(("zeros", "zeros", "reflect", "replicate",
                                                          "circular")))
            if case.padding_mode == "reflect" and any(max(p) >= i for p, i in zip(padding, spatial)):
                case = replace(case, padding_mode="zeros")
            if case.padding_mode == "circular" and any(max(p) > i for p, i in zip(padding, spatial)):
                case = replace(case, padding_mode="zeros")
        cases.append(case)
    return cases
