"""Object sizes (8-connected components) and the classes at risk, by hand."""

from __future__ import annotations

import math

import torch

from atrous.analysis import object_sizes, objects_at_risk


def test_object_sizes_are_8_connected_components():
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[0, 0] = mask[1, 1] = 1  # diagonal neighbours: one object of area 2
    mask[5:8, 5:8] = 1  # area 9
    mask[4, 0] = 255  # ignored
    sizes = object_sizes([(None, mask)])
    assert sizes[1] == [math.sqrt(2), 3.0] and sorted(sizes) == [0, 1]
    rows = objects_at_risk(sizes, limit=4, erf_radius=1.0)
    cls1 = next(r for r in rows if r["class"] == 1)
    assert cls1["below_limit"] == 1.0 and cls1["at_risk"] and cls1["histogram"][0] == 2
    assert cls1["wider_than_erf"] == 0.0
