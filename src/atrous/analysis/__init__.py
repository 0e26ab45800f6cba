"""Diagnostics of dilated networks: receptive field, gridding coverage, HDC rate rules, valid weights,
effective receptive field and the small-object limit. Library functions; `atrous rf/grid/hdc/erf/objects`
are thin layers over them."""

from atrous.analysis.receptive_field import receptive_field, small_object_limit

__all__ = ["receptive_field", "small_object_limit"]
