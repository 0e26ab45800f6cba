"""The demo report: the rule grammar, every claim's rule on hand-made evidence (each of the three
verdicts), the demo's own measures by hand, and the quick demo's results.json (structure, means and
standard deviations over seeds, evidence copied from the numbers, every verdict recomputed by a judge
written here independently of atrous.report.claims, and one run retrained from its stored config
reproducing its weights bit for bit)."""

import json
import math
import statistics

import numpy as np
import pytest
import torch

from atrous.metrics import ObjectRecall
from atrous.report import claims, measures
from atrous.report.evidence import EVIDENCE, evidence_value, models_of_claim

CLAIM_IDS = [
    "fixed_upsampling_loses_detail",
    "pooling_limit_2k",
    "pooling_loses_boundaries",
    "pooling_loses_small_objects",
    "skips_recover_small_objects",
    "dilation_keeps_small_objects",
    "dilation_grows_rf_for_free",
    "gridding_leaves_holes",
    "gridding_fails_texture",
    "hdc_fixes_gridding",
    "gridding_artifact",
    "large_rates_lose_small_objects",
    "hdc_beats_large_rates",
    "aspp_beats_large_rates",
    "erf_smaller_than_rf",
    "reparam_vs_hdc",
    "dense_aspp_vs_aspp",
    "nuclei_pooling_loses_nuclei",
]


# ----------------------------------------------------------------------------------------------------------
# an independent judge of the documented grammar
# ----------------------------------------------------------------------------------------------------------
def _leaf(v):
    """(value, standard error or None) of an evidence value; None when missing."""
    if isinstance(v, dict):
        if v["mean"] is None:
            return None
        se = v["std"] / math.sqrt(v["n"]) if v["n"] >= 2 else None
        return v["mean"], se
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else (v, 0.0)


def _value(expr, evidence):
    if " - " in expr or " / " in expr:
        sep = " - " if " - " in expr else " / "
        a, b = (_leaf(evidence[n]) for n in expr.split(sep))
        if a is None or b is None:
            return None
        se = None
        if sep == " - ":
            if a[1] is not None and b[1] is not None:
                se = (a[1] ** 2 + b[1] ** 2) ** 0.5
            return a[0] - b[0], se
        if b[0] == 0:
            return None
        q = a[0] / b[0]
        if a[1] is not None and b[1] is not None:
            se = ((a[1] / b[0]) ** 2 + (a[0] * b[1] / b[0] ** 2) ** 2) ** 0.5
        return q, se
    return _leaf(evidence[expr])


def _check(cond, evidence):
    expr, op, t, *mode = cond
    found = _value(expr, evidence)
    if found is None:
        return None
    v, se = found
    cmp = {">=": v >= t, "<=": v <= t, ">": v > t, "<": v < t, "==": v == t}
    if not mode:
        return cmp[op]
    if se is None:
        return None
    up = op in (">", ">=")
    if mode[0] == "sig":
        return cmp[op] and (v > 2 * se if up else v < -2 * se)
    bound = v - 2 * se if up else v + 2 * se
    return {">=": bound >= t, "<=": bound <= t, ">": bound > t, "<": bound < t}[op]


def _recompute(rule, evidence):
    sep = rule.get("separable")
    if sep:
        means = [_leaf(evidence[n]) for n in sep["names"]]
        if None not in means:
            ms = [m for m, _ in means]
            if all(m >= sep["ceiling"] for m in ms) or all(m <= sep["floor"] for m in ms):
                return "inconclusive"
    h = [_check(c, evidence) for c in rule["holds"]]
    f = [_check(c, evidence) for c in rule["does_not_hold"]]
    if None in h + f:
        return "inconclusive"
    if all(h):
        return "holds"
    return "does not hold" if any(f) else "inconclusive"


def st(mean, std=0.01, n=3):
    return {"mean": mean, "std": std, "n": n}


# ----------------------------------------------------------------------------------------------------------
# the rule grammar by hand
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


def test_uncertainty_modes_by_hand():
    beats = claims._beats("a", "b", 0.1)
    # difference 0.2, standard errors 0.01/sqrt(3) each: far more than 2 SE -> holds
    assert claims.verdict(beats, {"a": st(0.7), "b": st(0.5)}) == "holds"
    # same means, std 0.3 over 3 seeds: SE of the difference 0.245 > 0.2 / 2 -> not "sig"; the upper
    # bound 0.2 + 0.49 is above 0.1 -> not confidently smaller either -> inconclusive
    assert claims.verdict(beats, {"a": st(0.7, 0.3), "b": st(0.5, 0.3)}) == "inconclusive"
    # difference 0.02, tight: upper bound 0.02 + 2 * 0.0082 < 0.1 -> does not hold
    assert claims.verdict(beats, {"a": st(0.52), "b": st(0.5)}) == "does not hold"
    # difference 0.09 with SE 0.0082: bound 0.106 >= 0.1, below the threshold -> inconclusive
    assert claims.verdict(beats, {"a": st(0.59), "b": st(0.5)}) == "inconclusive"
    # one seed: no spread, modes cannot be decided
    assert claims.verdict(beats, {"a": st(0.9, 0.0, 1), "b": st(0.1, 0.0, 1)}) == "inconclusive"
    # ceiling and floor: the task cannot separate the models
    found, note = claims.judge_rule(beats, {"a": st(0.995), "b": st(0.99)})
    assert found == "inconclusive" and "ceiling" in note
    found, note = claims.judge_rule(beats, {"a": st(0.02), "b": st(0.01)})
    assert found == "inconclusive" and "floor" in note
    assert claims.rule_text(beats).startswith(
        "holds if a - b >= 0.1 and > 2 SE; does not hold if a - b + 2 SE < 0.1"
    )


def test_claim_table_is_fixed_and_rules_refer_to_evidence():
    assert list(claims.CLAIMS) == CLAIM_IDS == list(EVIDENCE)
    for claim_id, (sentence, rule) in claims.CLAIMS.items():
        assert sentence.endswith(".") and rule["text"] == claims.rule_text(rule)
        names = set(EVIDENCE[claim_id])
        for cond in rule["holds"] + rule["does_not_hold"]:
            assert set(cond[0].replace(" - ", " ").replace(" / ", " ").split()) <= names, (claim_id, cond)
            assert len(cond) == 3 or cond[3] in claims.MODES
        assert set(rule.get("separable", {}).get("names", [])) <= names
        assert models_of_claim(claim_id)  # `--only` has something to rerun


# hand-made evidence for every claim: (holds, does not hold, inconclusive)
def _pair(a, b, hi, lo, mid):
    """Evidence for a two-name claim: a far above b, a level with b, a above b within the spread."""
    return (
        {a: st(hi), b: st(lo)},
        {a: st(lo), b: st(lo)},
        {a: st(mid, 0.3), b: st(lo, 0.3)},
    )


def _hand_evidence():
    static_rf = {
        "hdc_rf": 25,
        "rate1_rf": 13,
        "hdc_params": 12212,
        "rate1_params": 12212,
        "hdc_output_stride": 1,
    }
    cov = {
        "gridded_gridding_ratio": 0.75,
        "gridded_holes": 300,
        "hdc_holes": 0,
        "gridded_rf": 25,
        "hdc_rf": 25,
    }
    octs = ["pool0_r_2_4", "pool3_r_2_4", "pool0_r_4_8", "pool4_r_4_8"]
    big = {
        "pool0_r_16_32": st(0.9),
        "pool3_r_16_32": st(0.88),
        "pool0_r_32_64": st(0.95),
        "pool4_r_32_64": st(0.9),
    }
    return {
        "fixed_upsampling_loses_detail": _pair("duc_boundary_iou", "bilinear_boundary_iou", 0.6, 0.4, 0.5),
        "pooling_limit_2k": (
            {**dict(zip(octs, [st(0.9), st(0.2), st(0.85), st(0.1)])), **big},
            {**dict(zip(octs, [st(0.9), st(0.88), st(0.85), st(0.8)])), **big},
            {**dict(zip(octs, [st(0.9), st(0.5, 0.4), st(0.85), st(0.5, 0.4)])), **big},
        ),
        "pooling_loses_boundaries": (
            {"pool0_boundary_iou": st(0.8), "pool3_boundary_iou": st(0.6), "pool5_boundary_iou": st(0.3)},
            {"pool0_boundary_iou": st(0.5), "pool3_boundary_iou": st(0.5), "pool5_boundary_iou": st(0.5)},
            {"pool0_boundary_iou": st(0.8), "pool3_boundary_iou": st(0.6), "pool5_boundary_iou": st(0.58)},
        ),
        "pooling_loses_small_objects": _pair("hdc_small_recall", "pool5_small_recall", 0.8, 0.3, 0.6),
        "skips_recover_small_objects": _pair("fcn8s_small_recall", "fcn32s_small_recall", 0.6, 0.3, 0.5),
        "dilation_keeps_small_objects": (
            {"hdc_small_recall": st(0.8), "fcn8s_small_recall": st(0.5)},
            {"hdc_small_recall": st(0.5), "fcn8s_small_recall": st(0.5)},
            {"hdc_small_recall": st(0.45), "fcn8s_small_recall": st(0.2)},  # far above, but under 0.5
        ),
        "dilation_grows_rf_for_free": (
            static_rf,
            {**static_rf, "hdc_rf": 13},
            {**static_rf, "hdc_rf": 17},
        ),
        "gridding_leaves_holes": (cov, {**cov, "hdc_holes": 10}, {**cov, "gridded_gridding_ratio": 0.3}),
        "gridding_fails_texture": (
            {"gridded_texture_acc": st(0.52), "chance_acc": 0.5},
            {"gridded_texture_acc": st(0.9), "chance_acc": 0.5},
            {"gridded_texture_acc": st(0.65), "chance_acc": 0.5},
        ),
        "hdc_fixes_gridding": (
            {"hdc_texture_acc": st(0.97), "gridded_texture_acc": st(0.5)},
            {"hdc_texture_acc": st(0.55), "gridded_texture_acc": st(0.5)},
            {"hdc_texture_acc": st(0.75), "gridded_texture_acc": st(0.5)},  # far above, but under 0.8
        ),
        "gridding_artifact": (
            {"gridded_artifact": st(0.3), "hdc_artifact": st(0.02)},
            {"gridded_artifact": st(0.03), "hdc_artifact": st(0.02)},
            {"gridded_artifact": st(0.3, 0.3), "hdc_artifact": st(0.02)},  # within the spread
        ),
        "large_rates_lose_small_objects": _pair("hdc_small_recall", "large_small_recall", 0.7, 0.3, 0.5),
        "hdc_beats_large_rates": _pair("hdc_miou", "large_miou", 0.7, 0.5, 0.6),
        "aspp_beats_large_rates": _pair("aspp_miou", "large_miou", 0.7, 0.5, 0.6),
        "erf_smaller_than_rf": (
            {"d3_init_share": st(0.8), "d12_init_share": st(0.4), "d3_trained_share": st(0.8), "d12_trained_share": st(0.5)},
            {"d3_init_share": st(0.6), "d12_init_share": st(0.6), "d3_trained_share": st(0.8), "d12_trained_share": st(0.5)},
            {"d3_init_share": st(0.8, 0.3), "d12_init_share": st(0.4, 0.3), "d3_trained_share": st(0.8), "d12_trained_share": st(0.5)},
        ),
        "reparam_vs_hdc": _pair("reparam_miou", "hdc_miou", 0.7, 0.5, 0.6),
        "dense_aspp_vs_aspp": _pair("denseaspp_miou", "aspp_miou", 0.7, 0.5, 0.6),
        "nuclei_pooling_loses_nuclei": _pair("dilated_recall", "pool4_recall", 0.8, 0.5, 0.7),
    }  # fmt: skip


@pytest.mark.parametrize("claim_id", CLAIM_IDS)
def test_every_claim_gives_each_verdict_on_hand_made_evidence(claim_id):
    _, rule = claims.CLAIMS[claim_id]
    names = set(EVIDENCE[claim_id])
    for evidence, expected in zip(_hand_evidence()[claim_id], ("holds", "does not hold", "inconclusive")):
        full = {name: evidence.get(name, st(0.5)) for name in names}  # names no rule reads: any value
        assert claims.verdict(rule, full) == expected, (claim_id, expected)
        assert _recompute(rule, full) == expected, (claim_id, expected)


# ----------------------------------------------------------------------------------------------------------
# the demo's measures by hand
# ----------------------------------------------------------------------------------------------------------
def test_octave_recall_small_recall_and_artifact_by_hand():
    target = torch.zeros(20, 20, dtype=torch.long)
    target[0, 0] = 1  # area 1 -> [1, 2)
    target[3:5, 3:5] = 2  # area 4 -> [2, 4)
    target[10:16, 10:16] = 1  # area 36 -> [4, 8)
    pred = torch.zeros_like(target)
    pred[3, 3:5] = 2  # half of the 2x2 box
    pred[10:16, 10:16] = 1  # all of the 6x6 box
    buckets = measures.octave_recall([pred], [target], [1, 2])
    assert [(b["min"], b["max"], b["objects"]) for b in buckets[:4]] == [
        (1, 2, 1),
        (2, 4, 1),
        (4, 8, 1),
        (8, 16, 0),
    ]
    assert [b["recall"] for b in buckets[:4]] == [0.0, 0.5, 1.0, None]
    assert measures.small_recall(buckets) == pytest.approx((0 + 0.5 + 1) / 3)
    assert measures.overall_recall(buckets) == pytest.approx(0.5)
    # the same objects through atrous eval's ObjectRecall: its [0, 4) bucket is our [1, 2) + [2, 4)
    rec = ObjectRecall(3, object_classes=[1, 2])
    rec.update(pred.unsqueeze(0), target.unsqueeze(0))
    first = rec.compute()[0]
    assert first["objects"] == 2 and first["recall"] == pytest.approx(0.25)
    t = torch.zeros(1, 2, 4, dtype=torch.long)
    t[0, :, 2:] = 1
    p = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0]]])
    # same-label pairs: horizontal 2 per row = 4, vertical 4 -> 8; differing among them: 4
    assert measures.artifact_rate(p, t) == pytest.approx(4 / 8)


def test_seed_stats_by_hand():
    runs = [
        {"miou": 0.2, "b": [{"objects": 3, "recall": 0.5}], "name": "x"},
        {"miou": 0.6, "b": [{"objects": 3, "recall": None}], "name": "x"},
        {"miou": 0.4, "b": [{"objects": 3, "recall": 0.7}], "name": "x"},
    ]
    mean, std = measures.seed_stats(runs)
    assert mean["miou"] == pytest.approx(0.4) and std["miou"] == pytest.approx(0.2)  # sample std
    assert mean["b"] == [{"objects": 3, "recall": None}] and std["b"] == [{"objects": 0, "recall": None}]
    assert mean["name"] == "x"


# ----------------------------------------------------------------------------------------------------------
# the quick demo's results.json
# ----------------------------------------------------------------------------------------------------------
def _walk(results, path):
    node = results
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_results_json_contract(quick_demo):
    from atrous.report import plan

    results = json.loads((quick_demo / "results.json").read_text())
    assert results["quick"] is True and results["machine"]
    assert set(results["models"]) == set(plan.MODELS)
    n_seeds = results["budget"]["seeds"]
    assert n_seeds >= 2 and len(results["training_seeds"]) == n_seeds
    for key, m in results["models"].items():
        assert set(m) >= {"config", "seeds", "mean", "std", "runs"}
        assert len(m["seeds"]) == n_seeds and len({r["seed"] for r in m["runs"]}) == n_seeds
        # the resolved config trains this model with the engine's settings the demo states
        cfg = m["config"]
        assert cfg["model"]["name"] == plan.MODELS[key].name and cfg["train"]["threads"] == 1
        assert cfg["log"] == {"tensorboard": False, "progress": False} and cfg["data"]["val_split"] is None
        for metric in ("miou", "pixel_acc", "boundary_iou", "final_loss"):
            values = [s[metric] for s in m["seeds"]]
            assert m["mean"][metric] == pytest.approx(statistics.mean(values)), (key, metric)
            assert m["std"][metric] == pytest.approx(statistics.stdev(values), abs=1e-12), (key, metric)
        assert 0 <= m["mean"]["miou"] <= 1 and m["mean"]["params"] > 0
        for run in m["runs"]:
            assert (quick_demo / run["dir"] / "config.yaml").is_file() and (
                quick_demo / run["dir"] / "last.pt"
            ).is_file()
    pools = [results["models"][f"pool{k}"]["mean"] for k in range(6)]
    assert [p["output_stride"] for p in pools] == [1, 2, 4, 8, 16, 32]
    assert (
        len({p["params"] for p in pools})
        == 1
        == len({pools[0]["params"], results["models"]["hdc"]["mean"]["params"]})
    )
    names = {d["name"]: d for d in results["datasets"]}
    assert set(names) == {"shapes", "borders", "texture", "nuclei"}
    assert names["nuclei"]["real"] is True and "stardist" in names["nuclei"]["source"]
    assert all(d["image_size"]["val"][0] >= 256 for d in results["datasets"])
    for name in results["figures"].values():
        assert (quick_demo / name).stat().st_size > 1000


def test_results_json_verdicts_follow_from_the_numbers(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    assert [c["id"] for c in results["claims"]] == CLAIM_IDS
    for c in results["claims"]:
        assert set(c) >= {"id", "claim", "verdict", "evidence", "sources", "rule"}
        assert set(c["evidence"]) == set(c["sources"]) == set(EVIDENCE[c["id"]])
        for name, path in c["sources"].items():
            if path.startswith("models."):
                _, key, rest = path.split(".", 2)
                m = results["models"][key]
                expected = {
                    "mean": _walk(m["mean"], rest),
                    "std": _walk(m["std"], rest),
                    "n": len(m["seeds"]),
                }
            else:
                expected = _walk(results, path)
            assert c["evidence"][name] == expected == evidence_value(results, path), (c["id"], name)
        assert c["verdict"] == _recompute(c["rule"], c["evidence"]), c["id"]


def test_a_run_retrained_from_its_stored_config_reproduces_its_weights(quick_demo, tmp_path):
    from atrous.checkpoint import load_checkpoint
    from atrous.config import from_dict
    from atrous.train import fit

    results = json.loads((quick_demo / "results.json").read_text())
    m = results["models"]["pool5"]
    config = from_dict(m["config"])
    config.train.out = str(tmp_path / "again")
    fit(config, log=lambda message: None)
    stored = load_checkpoint(quick_demo / m["runs"][0]["dir"] / "last.pt")["state_dict"]
    again = load_checkpoint(tmp_path / "again" / "last.pt")["state_dict"]
    assert stored.keys() == again.keys()
    for k in stored:
        assert torch.equal(stored[k], again[k]), k
    assert np.isfinite(m["mean"]["final_loss"])
