"""Fixtures shared by the unit tests of the Clever client and the local Clever server."""

from __future__ import annotations

import copy
from functools import cache

import pytest

from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.clever import CleverData, clever_data_from_district


@cache
def demo_data() -> CleverData:
    """The demo district as Clever objects, with two guardian contacts (built once)."""
    return clever_data_from_district(generate_district("demo"), contacts=2)


@pytest.fixture
def data() -> CleverData:
    """A copy of the demo district each test may change."""
    return copy.deepcopy(demo_data())
