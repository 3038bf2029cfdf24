"""The forgetting plot's colour scale follows the data, so close scores stay distinguishable."""

from __future__ import annotations

import pytest

from medqwen_cli.plots import colour_range


def test_colour_range_spans_the_data_not_zero_to_one() -> None:
    assert colour_range([0.13, 0.32, 0.2]) == (0.13, 0.32)  # the quick demo's spread
    assert colour_range([0.5, 0.5]) == pytest.approx((0.45, 0.55))  # one value: a band around it
    assert colour_range([]) == (0.0, 1.0)
