"""The mission's claims, each with a fixed id, and the rules that turn measured numbers into verdicts.

A claim is judged only from its `evidence` (named numbers copied from results.json, each with the `source`
path it came from) by its `rule`, which is data, not code:

    {"holds": [cond, ...],          # all true -> "holds"
     "does_not_hold": [cond, ...],  # otherwise, any true -> "does not hold"
     "separable": {"names": [...], "ceiling": 0.98, "floor": 0.05},   # optional
     "text": "..."}                 # otherwise "inconclusive"

An evidence value is a number, None (missing: e.g. no object of that size), or a measurement over seeds
`{"mean": m, "std": s, "n": n}` (sample standard deviation, n training seeds); its standard error is
s / sqrt(n), a plain number's is 0. A condition is `[expr, op, threshold]` or `[expr, op, threshold, mode]`:
`expr` is an evidence name or two names joined by " - " or " / " (standard errors combine as for
independent measurements: sqrt(se_a^2 + se_b^2) for a difference, the first-order (delta) rule for a ratio);
`op` is one of >=, <=, >, <, ==. Modes:

- "sig": the value passes the threshold AND lies more than two standard errors from 0 on the side of `op`
  (a difference of means that the seed-to-seed spread could not produce alone);
- "bound": the two-standard-error bound on the side of `op` passes the threshold (value + 2 SE for < and
  <=, value - 2 SE for > and >=): the number is confidently below (above) the threshold.

Claims of the form "A beats B by at least t" hold when A - B >= t with "sig" and do not hold when A - B < t
with "bound" (confidently smaller than claimed); anything between is inconclusive. `separable` makes the
verdict inconclusive, with a note, when every named number (mean) is at or above the ceiling, or at or
below the floor: the task could not separate the models. A missing number or a measurement of one seed
where a mode needs its spread also makes it inconclusive. The rules were fixed before any result was seen;
`verdict()` is the only judge, and the tests re-run an independent judge on the evidence in results.json.
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
MODES = ("sig", "bound")


def _leaf(name: str, evidence: dict[str, Any]) -> tuple[float, float | None] | None:
    """(value, standard error) of one evidence name; None when missing. The error is None for a
    measurement of fewer than two seeds (no spread to compare with)."""
    if name not in evidence:
        raise KeyError(f"rule refers to {name!r}, which is not in the evidence {sorted(evidence)}")
    value = evidence[name]
    if isinstance(value, dict):
        mean, std, n = value["mean"], value["std"], value["n"]
        if mean is None or (isinstance(mean, float) and math.isnan(mean)):
            return None
        se = std / math.sqrt(n) if n >= 2 and std is not None and math.isfinite(std) else None
        return float(mean), se
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value), 0.0


def evaluate_expr(expr: str, evidence: dict[str, Any]) -> tuple[float, float | None] | None:
    """(value, standard error) of `name`, `a - b` or `a / b` over `evidence`; None when a value is missing
    or undefined (a ratio over 0)."""
    for sep in (" - ", " / "):
        if sep in expr:
            left, right = (_leaf(part, evidence) for part in expr.split(sep, 1))
            if left is None or right is None:
                return None
            (a, sa), (b, sb) = left, right
            both = None if sa is None or sb is None else (sa, sb)
            if sep == " - ":
                return a - b, None if both is None else math.hypot(sa, sb)
            if b == 0:
                return None
            q = a / b
            if both is None:
                return q, None
            # first-order error of a ratio: |q| * sqrt((sa/a)^2 + (sb/b)^2), written to allow a = 0
            return q, math.hypot(sa / b, a * sb / (b * b))
    return _leaf(expr, evidence)


def _condition(cond: list, evidence: dict[str, Any]) -> bool | None:
    expr, op, threshold, *mode = cond
    found = evaluate_expr(expr, evidence)
    if found is None:
        return None
    value, se = found
    if not mode:
        return _OPS[op](value, threshold)
    if se is None:
        return None
    upward = op in (">", ">=")
    if mode[0] == "sig":
        return _OPS[op](value, threshold) and (value > 2 * se if upward else value < -2 * se)
    return _OPS[op](value - 2 * se if upward else value + 2 * se, threshold)


def _mean(value) -> float | None:
    value = value["mean"] if isinstance(value, dict) else value
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def separability(rule: dict, evidence: dict[str, Any]) -> str | None:
    """A note when the task could not separate the compared models (all at the ceiling or the floor)."""
    sep = rule.get("separable")
    if not sep:
        return None
    means = [_mean(evidence[name]) for name in sep["names"]]
    if None in means:
        return None
    if all(m >= sep["ceiling"] for m in means):
        return f"the task could not separate them: every compared number is >= {sep['ceiling']:g} (ceiling)"
    if all(m <= sep["floor"] for m in means):
        return f"the task could not separate them: every compared number is <= {sep['floor']:g} (floor)"
    return None


def judge_rule(rule: dict, evidence: dict[str, Any]) -> tuple[str, str]:
    """(verdict, note): the note says why a verdict is inconclusive ("" otherwise)."""
    blocked = separability(rule, evidence)
    if blocked:
        return INCONCLUSIVE, blocked
    holds = [_condition(c, evidence) for c in rule["holds"]]
    fails = [_condition(c, evidence) for c in rule["does_not_hold"]]
    if None in holds or None in fails:
        return INCONCLUSIVE, "a number the rule needs is missing (or has no spread over seeds)"
    if all(holds):
        return HOLDS, ""
    if any(fails):
        return FAILS, ""
    return INCONCLUSIVE, "the numbers fall between the rule's two thresholds"


def verdict(rule: dict, evidence: dict[str, Any]) -> str:
    """ "holds" if every `holds` condition is true; else "does not hold" if any `does_not_hold` condition is
    true; else, or when the task cannot separate the models or a needed number is missing, "inconclusive"."""
    return judge_rule(rule, evidence)[0]


def _fmt_cond(cond: list) -> str:
    expr, op, threshold, *mode = cond
    if not mode:
        return f"{expr} {op} {threshold:g}"
    if mode[0] == "sig":
        side = "> 2 SE" if op in (">", ">=") else "< -2 SE"
        return f"{expr} {op} {threshold:g} and {side}"
    sign = "-" if op in (">", ">=") else "+"
    return f"{expr} {sign} 2 SE {op} {threshold:g}"


def rule_text(rule: dict) -> str:
    holds = " and ".join(_fmt_cond(c) for c in rule["holds"])
    fails = " or ".join(_fmt_cond(c) for c in rule["does_not_hold"])
    text = f"holds if {holds}; does not hold if {fails}; otherwise inconclusive"
    sep = rule.get("separable")
    if sep:
        text += (
            f"; inconclusive (task cannot separate) if every one of {', '.join(sep['names'])} is "
            f">= {sep['ceiling']:g} or <= {sep['floor']:g}"
        )
    return text + " (SE: standard error over training seeds)"


def _rule(holds: list, does_not_hold: list, separable: dict | None = None) -> dict:
    rule: dict = {"holds": holds, "does_not_hold": does_not_hold}
    if separable is not None:
        rule["separable"] = separable
    rule["text"] = rule_text(rule)
    return rule


def _beats(a: str, b: str, t: float, *, ceiling: float = 0.98, floor: float = 0.05) -> dict:
    """ "a exceeds b by at least t": holds if a - b >= t (sig), does not hold if a - b < t (bound)."""
    return _rule(
        [[f"{a} - {b}", ">=", t, "sig"]],
        [[f"{a} - {b}", "<", t, "bound"]],
        {"names": [a, b], "ceiling": ceiling, "floor": floor},
    )


# Recall "small" = objects with sqrt(area) < 8 px (octave buckets [1,2), [2,4), [4,8)), weighted by object
# count; "r_a_b" = recall of the octave bucket [a, b); accuracies, mIoU and boundary IoU are on the
# validation split, with the final weights of each run; every model is trained with 3 seeds.
CLAIMS: dict[str, tuple[str, dict]] = {
    "fixed_upsampling_loses_detail": (
        "Fixed upsampling loses detail a learned one recovers: at the same output stride (8) and backbone, "
        "dense upsampling convolution (DUC, learned) reaches a higher boundary IoU than fixed bilinear "
        "upsampling (FCN found little gain from learning the final upsampling, DUC a gain).",
        _beats("duc_boundary_iou", "bilinear_boundary_iou", 0.02),
    ),
    "pooling_limit_2k": (
        "With k poolings (output stride 2^k), objects much smaller than 2^k px cannot be reconstructed: for "
        "k = 3 and 4, objects of a quarter to half the stride lose at least 0.3 of the recall of the same "
        "network without pooling, while objects of two to four times the stride lose at most 0.1.",
        _rule(
            [
                ["pool0_r_2_4 - pool3_r_2_4", ">=", 0.3, "sig"],
                ["pool0_r_4_8 - pool4_r_4_8", ">=", 0.3, "sig"],
                ["pool0_r_16_32 - pool3_r_16_32", "<=", 0.1, "bound"],
                ["pool0_r_32_64 - pool4_r_32_64", "<=", 0.1, "bound"],
            ],
            [
                ["pool0_r_2_4 - pool3_r_2_4", "<", 0.3, "bound"],
                ["pool0_r_4_8 - pool4_r_4_8", "<", 0.3, "bound"],
            ],
            {"names": ["pool0_r_2_4", "pool3_r_2_4"], "ceiling": 0.98, "floor": 0.05},
        ),
    ),
    "pooling_loses_boundaries": (
        "Pooling loses boundaries: boundary IoU falls as the output stride grows (pooling network at output "
        "stride 1, 8 and 32, the same convolutions, bilinear upsampling).",
        _rule(
            [
                ["pool0_boundary_iou - pool3_boundary_iou", ">=", 0.05, "sig"],
                ["pool3_boundary_iou - pool5_boundary_iou", ">=", 0.05, "sig"],
            ],
            [["pool0_boundary_iou - pool5_boundary_iou", "<", 0.05, "bound"]],
            {"names": ["pool0_boundary_iou", "pool5_boundary_iou"], "ceiling": 0.98, "floor": 0.05},
        ),
    ),
    "pooling_loses_small_objects": (
        "Pooling loses objects much smaller than the output stride: a pooling network at output stride 32 "
        "recalls far fewer objects under 8 px than a pooling-free dilated network (HDC rates) of exactly the "
        "same parameters.",
        _beats("hdc_small_recall", "pool5_small_recall", 0.2),
    ),
    "skips_recover_small_objects": (
        "Skip connections from finer pooling stages (FCN-8s, output stride 8) recover part of the small "
        "objects FCN-32s loses.",
        _beats("fcn8s_small_recall", "fcn32s_small_recall", 0.1),
    ),
    "dilation_keeps_small_objects": (
        "A pooling-free dilated network keeps small objects: its recall of objects under 8 px is at least "
        "0.5 and above that of the best pooling model (FCN-8s).",
        _rule(
            [["hdc_small_recall", ">=", 0.5], ["hdc_small_recall - fcn8s_small_recall", ">=", 0.05, "sig"]],
            [["hdc_small_recall - fcn8s_small_recall", "<", 0.05, "bound"]],
            {"names": ["hdc_small_recall", "fcn8s_small_recall"], "ceiling": 0.98, "floor": 0.05},
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
            [["gridded_texture_acc - chance_acc", "<=", 0.1, "bound"]],
            [["gridded_texture_acc - chance_acc", ">=", 0.2, "sig"]],
        ),
    ),
    "hdc_fixes_gridding": (
        "HDC rates of the same depth, width and receptive field solve that texture task: their pixel "
        "accuracy is at least 0.8 and far above the gridded network's.",
        _rule(
            [["hdc_texture_acc", ">=", 0.8], ["hdc_texture_acc - gridded_texture_acc", ">=", 0.2, "sig"]],
            [["hdc_texture_acc - gridded_texture_acc", "<", 0.2, "bound"]],
        ),
    ),
    "gridding_artifact": (
        "A gridded network's output shows the gridding artifact: inside uniform regions its prediction "
        "changes between neighbouring pixels (checkerboard) far more often than the HDC network's.",
        _rule(
            [["gridded_artifact", ">=", 0.05], ["gridded_artifact - hdc_artifact", ">=", 0.05, "sig"]],
            [["gridded_artifact - hdc_artifact", "<", 0.05, "bound"]],
        ),
    ),
    "large_rates_lose_small_objects": (
        "Large rates alone lose small objects whose class is readable only from their own neighbourhood: a "
        "dilated network with only large rates (5, 7, 9) recalls fewer objects under 8 px than the HDC "
        "network (1, 2, 3) of the same depth and width.",
        _beats("hdc_small_recall", "large_small_recall", 0.1),
    ),
    "hdc_beats_large_rates": (
        "HDC rates reach a higher mIoU than large rates only, on a task whose small objects need their own "
        "neighbourhood and whose large objects need context.",
        _beats("hdc_miou", "large_miou", 0.03),
    ),
    "aspp_beats_large_rates": (
        "For long-range context, ASPP (parallel 1x1, dilated 3x3 and image-pooling branches, DeepLab v3) "
        "reaches a higher mIoU than a context stack of large rates only, on the same output-stride-8 "
        "backbone at about the same parameters.",
        _beats("aspp_miou", "large_miou", 0.03),
    ),
    "erf_smaller_than_rf": (
        "The effective receptive field fills a smaller share of the theoretical one as depth grows (Luo et "
        "al. 2016): for rate-1 stacks of 3 and 12 layers, the ERF's share of the theoretical field is at "
        "least 0.1 smaller at 12 layers, at initialisation and after training.",
        _rule(
            [
                ["d3_init_share - d12_init_share", ">=", 0.1, "sig"],
                ["d3_trained_share - d12_trained_share", ">=", 0.1, "sig"],
            ],
            [
                ["d3_init_share - d12_init_share", "<", 0.1, "bound"],
                ["d3_trained_share - d12_trained_share", "<", 0.1, "bound"],
            ],
        ),
    ),
    "reparam_vs_hdc": (
        "A dilated re-parameterised stack (UniRepLKNet: a large depthwise kernel beside dilated small kernels, "
        "merged into one kernel for inference) reaches a higher mIoU than the HDC stack at about the same "
        "parameters, on the task whose small objects need their own neighbourhood.",
        _beats("reparam_miou", "hdc_miou", 0.03),
    ),
    "dense_aspp_vs_aspp": (
        "DenseASPP (densely connected atrous layers, Yang et al. 2018) reaches a higher mIoU than ASPP on the "
        "same output-stride-8 backbone.",
        _beats("denseaspp_miou", "aspp_miou", 0.02),
    ),
    "nuclei_pooling_loses_nuclei": (
        "On real nuclei (mostly 15-25 px), a pooling network at output stride 16 recalls fewer nuclei than a "
        "pooling-free dilated network of exactly the same parameters.",
        _beats("dilated_recall", "pool4_recall", 0.05),
    ),
}


def judge(claim_id: str, evidence: dict[str, Any], sources: dict[str, str]) -> dict:
    """The results.json entry of one claim: {"id", "claim", "verdict", "note", "evidence", "sources",
    "rule"}."""
    sentence, rule = CLAIMS[claim_id]
    found, note = judge_rule(rule, evidence)
    return {
        "id": claim_id,
        "claim": sentence,
        "verdict": found,
        "note": note,
        "evidence": evidence,
        "sources": sources,
        "rule": rule,
    }
