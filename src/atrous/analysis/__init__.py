"""Diagnostics of dilated networks: receptive field, gridding coverage, HDC rate rules, valid weights,
effective receptive field and the small-object limit. Library functions; `atrous rf/grid/hdc/erf/objects`
are thin layers over them, and `plots` draws their figures."""

from atrous.analysis.coverage import (
    coverage,
    coverage_model,
    coverage_reparam,
    hdc_check,
    hdc_plan,
    merge_reparam,
    path_profile,
)
from atrous.analysis.erf import erf
from atrous.analysis.objects import object_sizes, objects_at_risk
from atrous.analysis.receptive_field import receptive_field, small_object_limit
from atrous.analysis.valid_weights import valid_weight_curve, valid_weights

__all__ = [
    "coverage",
    "coverage_model",
    "coverage_reparam",
    "erf",
    "hdc_check",
    "hdc_plan",
    "merge_reparam",
    "object_sizes",
    "objects_at_risk",
    "path_profile",
    "receptive_field",
    "small_object_limit",
    "valid_weight_curve",
    "valid_weights",
]
