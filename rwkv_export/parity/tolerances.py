"""Parity tolerances per dtype, as data with a reason each (stated in `verify --help`, overridable).

A tensor passes when max |got - ref| <= atol + rtol * max |ref|, against the float64 oracle.
Normalising by the tensor's largest magnitude (not elementwise) keeps near-zero logits and state
channels from turning rounding noise into huge relative errors. State tensors are judged per layer
(each layer's own max |ref|), so a divergence is pinned to the layer where it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rwkv_export.errors import RwkvExportError


@dataclass(frozen=True)
class Tolerance:
    logits_rtol: float
    logits_atol: float
    state_rtol: float
    state_atol: float
    reason: str

    def allows(self, max_abs: float, scale: float, state: bool) -> bool:
        rtol, atol = (self.state_rtol, self.state_atol) if state else (self.logits_rtol, self.logits_atol)
        return max_abs <= atol + rtol * scale

    def describe(self) -> str:
        return f"logits rtol {self.logits_rtol:g} atol {self.logits_atol:g}; state rtol {self.state_rtol:g} atol {self.state_atol:g}"


# Weight-quantized exports (`export --quantize`, default policy; float32 activations), measured with
# `rwkv-export verify DIR --seq 64 --steps 32 --batch 2` on the tiny trained models: worst normalised
# logits error int8 3.8e-3 (4v0), 3.5e-3 (7v0), 3.1e-2 (5v2), 1.1e-1 (6v0); int4 6.9e-2, 5.0e-2, 3.9e-1,
# 5.3e-1; worst state int8 5.1e-2, int4 5.8e-1. The random-token scenario is the harshest input (flat
# distributions; v5/v6 tiny models normalise heads of 8 channels, which amplifies rounding). On real text
# the same exports stay within 1% of float32 perplexity (`rwkv-export eval`, README): these bounds catch
# wiring faults (a wrong scale or zero point moves logits by their whole range), eval measures the cost.
QUANTIZED_TOLERANCES = {
    "int8": Tolerance(
        3e-1,
        0.0,
        1.5e-1,
        1e-5,
        "int8 weight blocks of 32 (half a step = 1/510 of a block's range) through every matrix; measured worst "
        "on the tiny models with random tokens: logits 0.11, state 0.051 (RWKV-6, heads of 8); eval measures the "
        "accuracy cost on text",
    ),
    "int4": Tolerance(
        1.0,
        0.0,
        1.2,
        1e-4,
        "int4 weight blocks (1/30 of a block's range): measured worst logits 0.53, state 0.58 (tiny RWKV-6, random "
        "tokens), so verify only checks the wiring; eval measures the accuracy cost on text",
    ),
}

# Measured with `rwkv-export verify --seq 64 --steps 32` (ONNX Runtime CPU and torch, random 2x64 and
# tiny-rwkv-4v0-660K): the worst error used 4-6% of the float32 and 7-11% of the float16 tolerances,
# so the defaults sit 10-20x above rounding noise. A fault planted in one state tensor of one layer
# is caught from 1e-3 of that layer's scale in float32, and from ~2e-2 in float16 (below that it is
# indistinguishable from float16 rounding at these sizes).
DEFAULT_TOLERANCES = {
    "float64": Tolerance(1e-9, 0.0, 1e-9, 0.0, "same math in the same precision as the oracle: only summation order differs"),
    "float32": Tolerance(
        1e-5,
        0.0,
        1e-4,
        0.0,
        "float32 rounding (~6e-8) amplified by layer norms and matmul summation order; the WKV state "
        "accumulates it over the sequence, hence 10x looser",
    ),
    "float16": Tolerance(
        2e-2,
        0.0,
        2e-2,
        1e-5,
        "float16 weights and activations (11-bit mantissa, ~5e-4) through every layer; the state "
        "stays float32 but is fed float16 activations; state atol: values under float16's normal "
        "range (6e-5) are subnormals with absolute steps of 6e-8, so near-zero (dead) layers need a floor",
    ),
    "bfloat16": Tolerance(8e-2, 0.0, 8e-2, 0.0, "bfloat16 has an 8-bit mantissa (~4e-3 per rounding)"),
    **QUANTIZED_TOLERANCES,
}


def parse_overrides(values: tuple[str, ...], option: str) -> dict[str, float]:
    """('float16=3e-2', ...) -> {'float16': 0.03}; one-line errors for anything else."""
    out = {}
    for text in values:
        dtype, sep, number = text.partition("=")
        if not sep or dtype not in DEFAULT_TOLERANCES:
            raise RwkvExportError(f"{option} {text!r}: expected DTYPE=VALUE with DTYPE one of {', '.join(DEFAULT_TOLERANCES)}")
        try:
            value = float(number)
        except ValueError:
            raise RwkvExportError(f"{option} {text!r}: {number!r} is not a number") from None
        if not value >= 0:
            raise RwkvExportError(f"{option} {text!r}: a tolerance must be >= 0")
        out[dtype] = value
    return out


def tolerances_with(overrides: dict[str, dict[str, float]]) -> dict[str, Tolerance]:
    """Defaults with {field: {dtype: value}} applied (field: logits_rtol, logits_atol, state_rtol, state_atol)."""
    table = dict(DEFAULT_TOLERANCES)
    for field, per_dtype in overrides.items():
        for dtype, value in per_dtype.items():
            table[dtype] = replace(table[dtype], **{field: value}, reason=table[dtype].reason + f" ({field} overridden)")
    return table


def help_text() -> str:
    """The defaults, one line per dtype, for --help."""
    lines = [
        f"{dtype}: {tol.describe()} ({tol.reason})."
        for dtype, tol in DEFAULT_TOLERANCES.items()
        if dtype in ("float32", "float16", *QUANTIZED_TOLERANCES)
    ]
    return "\n\n".join(lines)
