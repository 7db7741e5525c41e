"""Activation cache: round trip, resume after a kill, refusal of a mismatched cache, corruption detection, streams."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from isae.data.cache import ActivationCache, CacheCorrupt, CacheMismatch, build_cache

SPEC = {"model": "toy", "hook": "blocks.0.hook_resid_post", "layer": 0, "dtype": "float32", "d_in": 8}


def make_shard(i: int) -> dict:
    """Deterministic shard i: rows of varying count, with per-row labels."""
    g = torch.Generator().manual_seed(i)
    rows = 20 + 3 * i
    return {"acts": torch.randn(rows, 8, generator=g), "labels": np.arange(rows) + 1000 * i}


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _manifest_without_timings(d: Path) -> dict:
    manifest = json.loads((d / "manifest.json").read_text())
    for shard in manifest["shards"]:
        assert shard.pop("seconds") >= 0
    return manifest


def test_round_trip_returns_the_rows_and_extras_that_were_written(tmp_path):
    build_cache(tmp_path, SPEC, 4, make_shard, progress=False)
    cache = ActivationCache(tmp_path)
    expected = np.concatenate([make_shard(i)["acts"].numpy() for i in range(4)])
    assert len(cache) == len(expected) and cache.d_in == 8
    np.testing.assert_array_equal(cache.rows(0, len(cache)), expected)
    np.testing.assert_array_equal(cache.rows(15, 50), expected[15:50])  # crosses a shard boundary
    np.testing.assert_array_equal(cache.extra("labels"), np.concatenate([make_shard(i)["labels"] for i in range(4)]))
    cache.verify()


def test_float16_cache_stores_half_precision(tmp_path):
    build_cache(tmp_path, {**SPEC, "dtype": "float16"}, 2, make_shard, progress=False)
    cache = ActivationCache(tmp_path)
    assert cache.shards[0].dtype == np.float16
    np.testing.assert_allclose(cache.rows(0, 20), make_shard(0)["acts"].numpy(), atol=2e-3)


def test_a_killed_build_resumes_and_ends_identical_to_an_uninterrupted_one(tmp_path):
    build_cache(tmp_path / "whole", SPEC, 5, make_shard, progress=False)
    calls = []

    def dies_at_3(i):
        if i == 3:
            raise KeyboardInterrupt("simulated kill")
        calls.append(i)
        return make_shard(i)

    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "resumed", SPEC, 5, dies_at_3, progress=False)
    with pytest.raises(ValueError, match="incomplete"):
        ActivationCache(tmp_path / "resumed")
    resumed_calls = []
    build_cache(tmp_path / "resumed", SPEC, 5, lambda i: resumed_calls.append(i) or make_shard(i), progress=False)
    assert calls == [0, 1, 2] and resumed_calls == [3, 4]  # nothing on disk is recomputed
    whole, resumed = _files(tmp_path / "whole"), _files(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    assert all(whole[f] == resumed[f] for f in whole if f != "manifest.json")  # shards byte-identical
    assert _manifest_without_timings(tmp_path / "whole") == _manifest_without_timings(tmp_path / "resumed")
    assert not list((tmp_path / "resumed").glob("*.tmp")) and not list((tmp_path / "resumed").glob(".*"))


def test_a_cache_built_for_another_request_is_refused(tmp_path):
    build_cache(tmp_path, SPEC, 2, make_shard, progress=False)
    with pytest.raises(CacheMismatch, match="layer"):
        build_cache(tmp_path, {**SPEC, "layer": 3}, 2, make_shard, progress=False)
    with pytest.raises(CacheMismatch, match="hook"):
        ActivationCache(tmp_path, expected_spec={"hook": "blocks.1.hook_resid_post"})


def test_a_corrupt_shard_is_detected_and_named(tmp_path):
    build_cache(tmp_path, SPEC, 3, make_shard, progress=False)
    shard = tmp_path / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheCorrupt, match="shard_00001.npy"):
        ActivationCache(tmp_path).verify()


def test_bad_dtype_is_refused_before_any_shard_is_computed(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        build_cache(tmp_path, {**SPEC, "dtype": "int8"}, 2, lambda i: pytest.fail("computed a shard"), progress=False)


def test_missing_cache_names_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="build"):
        ActivationCache(tmp_path / "nothing")


def test_stream_batches_are_pure_seeded_and_cover_each_row_once_per_pass(tmp_path):
    build_cache(tmp_path, SPEC, 6, make_shard, progress=False)
    cache = ActivationCache(tmp_path)
    a = cache.stream(batch_size=10, seed=3, buffer_rows=40, normalize=False)
    b = cache.stream(batch_size=10, seed=3, buffer_rows=40, normalize=False)
    steps = list(range(a.steps_per_pass))
    first = [a.batch(s) for s in steps]
    assert all(torch.equal(x, b.batch(s)) for s, x in zip(reversed(steps), reversed(first)))  # order-independent
    seen = torch.cat(first)
    assert len(torch.unique(seen, dim=0)) == len(seen)  # no row twice in a pass
    other = cache.stream(batch_size=10, seed=4, buffer_rows=40, normalize=False)
    assert not torch.equal(other.batch(0), first[0])
    with pytest.raises(ValueError, match="raise passes"):
        a.batch(a.steps_per_pass)


def test_later_passes_revisit_every_row_in_a_new_order_and_pass_0_is_the_one_pass_stream(tmp_path):
    build_cache(tmp_path, SPEC, 6, make_shard, progress=False)
    cache = ActivationCache(tmp_path)
    one = cache.stream(batch_size=10, seed=3, buffer_rows=40, normalize=False)
    three = cache.stream(batch_size=10, seed=3, buffer_rows=40, normalize=False, passes=3)
    n = one.steps_per_pass
    assert three.n_steps == 3 * n and three.identity() != one.identity()
    passes = [torch.cat([three.batch(p * n + s) for s in range(n)]) for p in range(3)]
    assert torch.equal(passes[0], torch.cat([one.batch(s) for s in range(n)]))
    for p in (1, 2):
        assert not torch.equal(passes[p], passes[0])  # reshuffled
        assert torch.equal(torch.unique(passes[p], dim=0), torch.unique(passes[0], dim=0))  # the same rows
    with pytest.raises(ValueError, match="passes"):
        cache.stream(batch_size=10, passes=0)


def test_centred_stream_subtracts_each_rows_own_mean_before_the_unit_norm(tmp_path):
    build_cache(tmp_path, SPEC, 2, make_shard, progress=False)
    cache = ActivationCache(tmp_path)
    raw = cache.stream(batch_size=8, buffer_rows=16, normalize=False).batch(0)
    x = cache.stream(batch_size=8, buffer_rows=16, center=True).batch(0)
    expected = raw - raw.mean(1, keepdim=True)
    torch.testing.assert_close(x, expected / expected.norm(dim=1, keepdim=True))


def test_stream_normalises_rows_to_unit_norm(tmp_path):
    build_cache(tmp_path, SPEC, 2, make_shard, progress=False)
    x = ActivationCache(tmp_path).stream(batch_size=8, buffer_rows=16).batch(0)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(8))


def test_decoder_bias_init_uses_a_short_cache_without_reading_past_it(tmp_path):
    from isae.core.models import SAE, SAEConfig
    from isae.train.trainer import geometric_median, initialise_decoder_bias

    build_cache(tmp_path, SPEC, 2, make_shard, progress=False)
    stream = ActivationCache(tmp_path).stream(batch_size=8, buffer_rows=16)
    sae = SAE(SAEConfig(d_in=8, d_sae=16, k=2))
    initialise_decoder_bias([sae], stream, n_samples=10_000)  # far more than the cache holds
    every_batch = torch.cat([stream.batch(s) for s in range(stream.steps_per_pass)])
    torch.testing.assert_close(sae.b_dec.detach(), geometric_median(every_batch))
