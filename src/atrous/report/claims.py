"""The mission's claims, each with a fixed id, and the rules that turn measured numbers into verdicts.

A claim is judged only from its `evidence` (named numbers copied from the results, each with the
`source` path in results.json it came from) by its `rule`, which is data, not code:

    {"holds": [[expr, op, number], ...],          # all true -> "holds"
     "does_not_hold": [[expr, op, number], ...],  # otherwise, any true -> "does not hold"
     "text": "..."}                               # otherwise "inconclusive"

`expr` is an evidence name, or two names joined by " - " or " / "; `op` is one of >=, <=, >, <, ==. Evidence
that is missing (None: e.g. no object of that size in the validation set) makes the verdict
"inconclusive". The thresholds were fixed before any result was seen; `verdict()` is the only judge, and
the tests re-run it on the evidence stored in results.json.
"""

from __future__ import annotations

import math
from typing import Any

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}


def evaluate_expr(expr: str, evidence: dict[str, Any]) -> float | None:
    """Value of `name`, `a - b` or `a / b` over `evidence`; None when a value is missing or undefined."""
    for sep, fn in ((" - ", lambda a, b: a - b), (" / ", lambda a, b: a / b if b != 0 else None)):
        if sep in expr:
            left, right = (evaluate_expr(part, evidence) for part in expr.split(sep, 1))
            return None if left is None or right is None else fn(left, right)
    if expr not in evidence:
        raise KeyError(f"rule refers to {expr!r}, which is not in the evidence {sorted(evidence)}")
    value = evidence[expr]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _condition(cond: list, evidence: dict[str, Any]) -> bool | None:
    expr, op, threshold = cond
    value = evaluate_expr(expr, evidence)
    return None if value is None else _OPS[op](value, threshold)


def verdict(rule: dict, evidence: dict[str, Any]) -> str:
    """ "holds" if every `holds` condition is true; else "does not hold" if any `does_not_hold` condition is
    true; else (or when a needed number is missing) "inconclusive"."""
    holds = [_condition(c, evidence) for c in rule["holds"]]
    fails = [_condition(c, evidence) for c in rule["does_not_hold"]]
    if None in holds or None in fails:
        return INCONCLUSIVE
    if all(holds):
        return HOLDS
    if any(fails):
        return FAILS
    return INCONCLUSIVE


def _fmt_cond(cond: list) -> str:
    expr, op, threshold = cond
    return f"{expr} {op} {threshold:g}"


def rule_text(rule: dict) -> str:
    holds = " and ".join(_fmt_cond(c) for c in rule["holds"])
    fails = " or ".join(_fmt_cond(c) for c in rule["does_not_hold"])
    return f"holds if {holds}; does not hold if {fails}; otherwise inconclusive"


def _rule(holds: list, does_not_hold: list) -> dict:
    rule = {"holds": holds, "does_not_hold": does_not_hold}
    rule["text"] = rule_text(rule)
    return rule


# id -> (sentence, rule). Recall "small" = objects with sqrt(area) < 8 px (buckets [0,4) and [4,8)),
# weighted by object count; accuracies and mIoU are on the validation split.
CLAIMS: dict[str, tuple[str, dict]] = {
    "pooling_loses_small_objects": (
        "Pooling with learned upsampling (FCN-32s, output stride 32) loses objects much smaller than its "
        "output stride: its recall of objects under 8 px is far below that of a pooling-free dilated network "
        "(HDC rates).",
        _rule(
            [["hdc_small_recall - fcn32s_small_recall", ">=", 0.2]],
            [["hdc_small_recall - fcn32s_small_recall", "<=", 0.05]],
        ),
    ),
    "skips_recover_small_objects": (
        "Skip connections from finer pooling stages (FCN-8s, output stride 8) recover part of the small "
        "objects FCN-32s loses.",
        _rule(
            [["fcn8s_small_recall - fcn32s_small_recall", ">=", 0.1]],
            [["fcn8s_small_recall - fcn32s_small_recall", "<=", 0.02]],
        ),
    ),
    "dilation_keeps_small_objects": (
        "A pooling-free dilated network keeps small objects: its recall of objects under 8 px is at least "
        "0.5 and above that of the best pooling model (FCN-8s).",
        _rule(
            [["hdc_small_recall", ">=", 0.5], ["hdc_small_recall - fcn8s_small_recall", ">=", 0.05]],
            [["hdc_small_recall - fcn8s_small_recall", "<=", -0.05]],
        ),
    ),
    "dilation_grows_rf_for_free": (
        "Dilation enlarges the receptive field without adding parameters or lowering resolution: the HDC "
        "stack has the parameters and output stride of a rate-1 stack of the same depth and width, and a "
        "larger theoretical receptive field.",
        _rule(
            [
                ["hdc_rf / rate1_rf", ">=", 1.5],
                ["hdc_params - rate1_params", "==", 0],
                ["hdc_output_stride", "==", 1],
            ],
            [["hdc_rf / rate1_rf", "<=", 1.0], ["hdc_params / rate1_params", ">", 1.0]],
        ),
    ),
    "gridding_leaves_holes": (
        "Stacked rates with a common factor (gridded) leave holes in the receptive field; the HDC rates of "
        "the same receptive-field size cover it without holes.",
        _rule(
            [["gridded_gridding_ratio", ">=", 0.5], ["hdc_holes", "==", 0], ["gridded_rf - hdc_rf", "==", 0]],
            [["gridded_holes", "==", 0], ["hdc_holes", ">", 0]],
        ),
    ),
    "gridding_fails_texture": (
        "A gridded network cannot solve a texture whose classes differ only between neighbouring pixels of "
        "opposite parity: its pixel accuracy stays near chance (the majority-class rate).",
        _rule(
            [["gridded_texture_acc - chance_acc", "<=", 0.1]],
            [["gridded_texture_acc - chance_acc", ">=", 0.2]],
        ),
    ),
    "hdc_fixes_gridding": (
        "HDC rates of the same depth, width and receptive field solve that texture task: their pixel "
        "accuracy is far above the gridded network's.",
        _rule(
            [["hdc_texture_acc - gridded_texture_acc", ">=", 0.2], ["hdc_texture_acc", ">=", 0.8]],
            [["hdc_texture_acc - gridded_texture_acc", "<=", 0.05]],
        ),
    ),
    "gridding_artifact": (
        "A gridded network's output shows the gridding artifact: inside uniform regions its prediction "
        "changes between neighbouring pixels (checkerboard) far more often than the HDC network's.",
        _rule(
            [["gridded_artifact", ">=", 0.05], ["gridded_artifact - hdc_artifact", ">=", 0.05]],
            [["gridded_artifact - hdc_artifact", "<=", 0.0]],
        ),
    ),
    "large_rates_lose_small_objects": (
        "Large rates alone lose small objects: a dilated network with only large rates recalls fewer objects "
        "under 8 px than the HDC network, which mixes small and large rates.",
        _rule(
            [["hdc_small_recall - large_small_recall", ">=", 0.1]],
            [["hdc_small_recall - large_small_recall", "<=", 0.02]],
        ),
    ),
    "aspp_beats_large_rates": (
        "For long-range context, ASPP (parallel 1x1, dilated 3x3 and image-pooling branches, DeepLab v3) "
        "reaches a higher mIoU than a network with large rates only.",
        _rule(
            [["aspp_miou - large_miou", ">=", 0.03]],
            [["aspp_miou - large_miou", "<=", 0.0]],
        ),
    ),
    "hdc_beats_large_rates": (
        "HDC rates reach a higher mIoU than large rates only.",
        _rule(
            [["hdc_miou - large_miou", ">=", 0.03]],
            [["hdc_miou - large_miou", "<=", 0.0]],
        ),
    ),
    "erf_smaller_than_rf": (
        "The effective receptive field is much smaller than the theoretical one (Luo et al. 2016): for the "
        "trained HDC network the square holding 95 % of the gradient mass is at most half the theoretical "
        "receptive field's side.",
        _rule(
            [["hdc_erf95_side / hdc_rf", "<=", 0.5]],
            [["hdc_erf95_side / hdc_rf", ">=", 0.8]],
        ),
    ),
}


def judge(claim_id: str, evidence: dict[str, Any], sources: dict[str, str]) -> dict:
    """The results.json entry of one claim: {"id", "claim", "verdict", "evidence", "sources", "rule"}."""
    sentence, rule = CLAIMS[claim_id]
    return {
        "id": claim_id,
        "claim": sentence,
        "verdict": verdict(rule, evidence),
        "evidence": evidence,
        "sources": sources,
        "rule": rule,
    }
