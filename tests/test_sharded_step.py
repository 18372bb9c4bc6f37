"""The sharded train step equals the single-device step, on simulated CPU devices.

tests/sharded_worker.py runs the scenarios in subprocesses (tests/subprocess_jobs.py, run once
on the xdist worker that runs these tests), since the device count must be fixed before jax
is imported: one process with 8 devices for the meshes and accumulation, and two processes
with 2 devices each for the multi-host path (JAX's distributed runtime over localhost,
process-local batches, orbax save and restore).

Tolerance: fp32 on CPU, where sharded reductions sum in another order; after two AdamW
updates at lr 1e-3 the parameters agree to 1e-5 absolute and the losses and gradient norms
to 5e-6 relative (observed: 2e-6 and 5e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

SHARDED = ["data8", "fsdp8", "mixed222", "mixed222_accum4"]
pytestmark = pytest.mark.slow  # the jobs start first


@pytest.fixture(scope="module")
def results(subprocess_results) -> dict[str, np.ndarray]:
    return subprocess_results("sharded-single-host")


@pytest.fixture(scope="module")
def multihost(subprocess_results) -> dict[str, np.ndarray]:
    return subprocess_results("sharded-multi-host")


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_step_matches_single_device(results, name):
    ref = "single"
    np.testing.assert_array_equal(results[f"{name}/weight"], results[f"{ref}/weight"])
    np.testing.assert_allclose(results[f"{name}/loss"], results[f"{ref}/loss"], rtol=5e-6)
    np.testing.assert_allclose(results[f"{name}/grad_norm"], results[f"{ref}/grad_norm"], rtol=5e-6)
    np.testing.assert_allclose(results[f"{name}/params"], results[f"{ref}/params"], atol=1e-5)
    # The second loss depends on the first update: the step really trained.
    assert results[f"{ref}/loss"][0] != results[f"{ref}/loss"][1]


def test_parameters_are_really_sharded(results):
    # tiny: embedding [vocab 256, embed 64]; vocab -> tensor, embed -> fsdp.
    assert tuple(results["single/embed_shard_shape"]) == (256, 64)
    assert tuple(results["data8/embed_shard_shape"]) == (256, 64)  # replicated
    assert tuple(results["fsdp8/embed_shard_shape"]) == (256, 8)
    assert tuple(results["mixed222/embed_shard_shape"]) == (128, 32)


def test_accumulation_equals_whole_batch_step(results):
    np.testing.assert_allclose(results["mixed222_accum4/loss"], results["mixed222/loss"], rtol=5e-6)
    np.testing.assert_allclose(
        results["mixed222_accum4/params"], results["mixed222/params"], atol=1e-5
    )


def test_reference_scores_match_across_meshes(results):
    single, sharded = results["score/single"], results["score/mixed222"]
    assert single.shape == (20,)  # 2 full batches of 8 + 4 rows of a padded third
    assert np.all(single < 0)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)


def test_multi_host_matches_single_device(results, multihost):
    np.testing.assert_allclose(multihost["loss"], results["single/loss"], rtol=5e-6)
    np.testing.assert_allclose(multihost["grad_norm"], results["single/grad_norm"], rtol=5e-6)
    np.testing.assert_allclose(multihost["params"], results["single/params"], atol=1e-5)
    np.testing.assert_array_equal(multihost["restored"], multihost["params"])
