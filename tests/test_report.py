"""The demo report's results.json: structure, internal consistency, and every verdict recomputed from its
evidence by an evaluator written here independently of atrous.report.claims."""

import json
import math

import pytest

from atrous.report import claims
from atrous.report.experiment import (
    EVIDENCE,
    REPLICATED,
    SMALL_PX,
    artifact_rate,
    mean_metrics,
    small_recall,
)

CLAIM_IDS = [
    "pooling_loses_small_objects",
    "skips_recover_small_objects",
    "dilation_keeps_small_objects",
    "dilation_grows_rf_for_free",
    "gridding_leaves_holes",
    "gridding_fails_texture",
    "hdc_fixes_gridding",
    "gridding_artifact",
    "large_rates_lose_small_objects",
    "aspp_beats_large_rates",
    "hdc_beats_large_rates",
    "erf_smaller_than_rf",
]


def _value(expr, evidence):
    """Independent evaluator of the documented rule expressions: name, 'a - b', 'a / b'."""
    if " - " in expr:
        a, b = expr.split(" - ")
        va, vb = evidence[a], evidence[b]
        return None if va is None or vb is None else va - vb
    if " / " in expr:
        a, b = expr.split(" / ")
        va, vb = evidence[a], evidence[b]
        return None if va is None or vb is None or vb == 0 else va / vb
    return evidence[expr]


def _check(cond, evidence):
    expr, op, t = cond
    v = _value(expr, evidence)
    if v is None:
        return None
    return {">=": v >= t, "<=": v <= t, ">": v > t, "<": v < t, "==": v == t}[op]


def _recompute(rule, evidence):
    h = [_check(c, evidence) for c in rule["holds"]]
    f = [_check(c, evidence) for c in rule["does_not_hold"]]
    if None in h + f:
        return "inconclusive"
    if all(h):
        return "holds"
    return "does not hold" if any(f) else "inconclusive"


def _walk(results, path):
    node = results
    for part in path.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------------------------------------
# the rule engine on hand-made evidence
# ----------------------------------------------------------------------------------------------------------
def test_verdict_rules_by_hand():
    rule = {"holds": [["a - b", ">=", 0.2]], "does_not_hold": [["a - b", "<=", 0.05]]}
    assert claims.verdict(rule, {"a": 0.9, "b": 0.1}) == "holds"
    assert claims.verdict(rule, {"a": 0.3, "b": 0.28}) == "does not hold"
    assert claims.verdict(rule, {"a": 0.3, "b": 0.2}) == "inconclusive"
    assert claims.verdict(rule, {"a": None, "b": 0.2}) == "inconclusive"
    assert claims.verdict(rule, {"a": math.nan, "b": 0.2}) == "inconclusive"
    ratio = {"holds": [["x / y", "<=", 0.5], ["z", "==", 0]], "does_not_hold": [["x / y", ">=", 0.8]]}
    assert claims.verdict(ratio, {"x": 5, "y": 25, "z": 0}) == "holds"
    assert claims.verdict(ratio, {"x": 5, "y": 25, "z": 1}) == "inconclusive"
    assert claims.verdict(ratio, {"x": 24, "y": 25, "z": 1}) == "does not hold"
    assert claims.verdict(ratio, {"x": 5, "y": 0, "z": 0}) == "inconclusive"  # undefined ratio
    with pytest.raises(KeyError, match="not in the evidence"):
        claims.verdict(rule, {"a": 1.0})
    assert (
        claims.rule_text(rule)
        == "holds if a - b >= 0.2; does not hold if a - b <= 0.05; otherwise inconclusive"
    )


def test_claim_table_is_fixed_and_rules_are_exclusive():
    assert list(claims.CLAIMS) == CLAIM_IDS == list(EVIDENCE)
    for claim_id, (sentence, rule) in claims.CLAIMS.items():
        assert sentence.endswith(".") and rule["text"] == claims.rule_text(rule)
        names = set(EVIDENCE[claim_id])
        for cond in rule["holds"] + rule["does_not_hold"]:
            assert set(cond[0].replace(" - ", " ").replace(" / ", " ").split()) <= names, (claim_id, cond)


def test_small_recall_and_artifact_by_hand():
    import torch

    buckets = [
        {"min": 0, "max": 4, "objects": 3, "recall": 0.0},
        {"min": 4, "max": 8, "objects": 1, "recall": 1.0},
        {"min": 8, "max": 16, "objects": 5, "recall": 0.5},
        {"min": 32, "max": None, "objects": 2, "recall": 1.0},
    ]
    assert SMALL_PX == 8 and small_recall(buckets) == pytest.approx(0.25)  # (3*0 + 1*1) / 4
    assert small_recall([{"min": 0, "max": 4, "objects": 0, "recall": None}]) is None
    target = torch.zeros(1, 2, 4, dtype=torch.long)
    target[0, :, 2:] = 1
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0]]])
    # same-label pairs: horizontal (0,1),(2,3) per row = 4, vertical 4 -> 8; differing among them:
    # row 0 (0,1); row 1 (2,3); vertical col 1 and col 3 -> 4
    assert artifact_rate(pred, target) == pytest.approx(4 / 8)


def test_mean_metrics_by_hand():
    runs = [
        {
            "miou": 0.2,
            "per_class": [0.0, 1.0],
            "buckets": [{"max": 4, "objects": 3, "recall": 0.5}, {"max": None}],
        },
        {
            "miou": 0.6,
            "per_class": [1.0, 1.0],
            "buckets": [{"max": 4, "objects": 3, "recall": None}, {"max": None}],
        },
    ]
    mean = mean_metrics(runs)
    assert mean["miou"] == pytest.approx(0.4) and mean["per_class"] == [0.5, 1.0]
    # counts shared by the runs stay integers; a value missing in one run is missing in the mean
    assert mean["buckets"] == [{"max": 4, "objects": 3, "recall": None}, {"max": None}]
    assert mean_metrics(runs[:1]) == runs[0]


# ----------------------------------------------------------------------------------------------------------
# the quick demo's results.json
# ----------------------------------------------------------------------------------------------------------
def test_results_json_structure(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    assert results["quick"] is True and isinstance(results["seed"], int)
    expected_models = {"fcn32s", "fcn8s", "gridded", "hdc", "large", "aspp"}
    assert set(results["models"]) == expected_models
    counts = None
    for key, m in results["models"].items():
        for field in (
            "params",
            "output_stride",
            "rf",
            "erf_radius95",
            "flops",
            "latency_ms",
            "peak_memory_mib",
            "small_object_limit",
        ):
            assert isinstance(m[field], (int, float)) and m[field] > 0, (key, field)
        assert 0 <= m["miou"] <= 1 and 0 <= m["pixel_acc"] <= 1
        buckets = m["object_recall_by_size"]
        assert [(b["min"], b["max"]) for b in buckets] == [(0, 4), (4, 8), (8, 16), (16, 32), (32, None)]
        # the same validation objects for every model
        this = [b["objects"] for b in buckets]
        assert counts is None or this == counts
        counts = this
        assert m["small_recall"] == pytest.approx(small_recall(buckets))
        assert m["erf95_side"] == 2 * m["erf_radius95"] + 1
    for key in REPLICATED:  # trained more than once: accuracy is the mean over the runs
        runs = results["models"][key]["replicates"]
        assert len(runs) == results["budget"]["replicates"] >= 2
        assert len({r["seed"] for r in runs}) == len(runs)
        for field in ("miou", "small_recall"):
            assert results["models"][key][field] == pytest.approx(sum(r[field] for r in runs) / len(runs))
    assert (
        results["models"]["fcn32s"]["output_stride"] == 32
        and results["models"]["fcn8s"]["output_stride"] == 8
    )
    assert results["models"]["gridded"]["params"] == results["models"]["hdc"]["params"]
    assert results["models"]["gridded"]["rf"] == results["models"]["hdc"]["rf"] == 25
    assert set(results["texture"]) == {"gridded", "hdc"}
    assert 0.5 <= results["texture_chance_acc"] <= 1
    for name in results["figures"].values():
        assert (quick_demo / name).stat().st_size > 1000
    assert (quick_demo / "index.html").stat().st_size > 1000


def test_results_json_verdicts_follow_from_the_numbers(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    assert [c["id"] for c in results["claims"]] == CLAIM_IDS
    for c in results["claims"]:
        assert set(c) >= {"id", "claim", "verdict", "evidence", "rule"}
        assert c["verdict"] in ("holds", "does not hold", "inconclusive")
        # the evidence is the results' own numbers
        assert set(c["evidence"]) == set(c["sources"])
        for name, path in c["sources"].items():
            assert c["evidence"][name] == _walk(results, path), (c["id"], name)
        # the verdict follows from the evidence by the stated rule (evaluated independently here)
        assert c["verdict"] == _recompute(c["rule"], c["evidence"]), c["id"]
        assert c["rule"]["text"].startswith("holds if ")
