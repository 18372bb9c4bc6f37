"""The suite's xdist groups reach the scheduler: pytest-xdist marks a grouped test by
suffixing its id with `@group`. Without that (pytest 9.2 with pytest-xdist 3.8), every worker
that draws a test of a file builds that file's module fixtures again, and the reduced demo of
tests/test_demo.py runs twice."""

from __future__ import annotations

import os

import pytest


def test_the_test_id_carries_its_group(request: pytest.FixtureRequest):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("runs under pytest-xdist only (the suite's default; not with -n0)")
    assert request.node.nodeid.endswith("@tests/test_xdist_groups.py"), (
        f"{request.node.nodeid}: pytest-xdist did not apply the test's group; "
        'install a pytest that it supports (pip install -e ".[test]")'
    )
