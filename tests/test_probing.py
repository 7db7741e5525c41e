"""Sparse probing (isae.eval.probing): pooling, latent selection, the probe beats chance only when there is signal."""

import numpy as np
import pytest
import torch

from isae.data.cache import ActivationCache, build_cache
from isae.eval import probing


def _separable(n: int, k_signal: int = 3, d: int = 40, seed: int = 0):
    """Labels 0..2; class c shifts latents 3c..3c+2 (so each class has its own few informative latents)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    z = torch.randn(n, d, generator=g)
    for c in range(3):
        z[y == c, c * k_signal : (c + 1) * k_signal] += 4.0
    return z, y


def test_pool_mean_and_max_by_group():
    z = torch.tensor([[1.0, -2.0], [3.0, 0.0], [5.0, 1.0]])
    mean, ids = probing.pool(z, torch.tensor([7, 7, 2]))
    assert ids.tolist() == [2, 7]
    torch.testing.assert_close(mean, torch.tensor([[5.0, 1.0], [2.0, -1.0]]))
    mx, _ = probing.pool(z, torch.tensor([7, 7, 2]), how="max")
    torch.testing.assert_close(mx, torch.tensor([[5.0, 1.0], [3.0, 0.0]]))
    with pytest.raises(ValueError, match="how="):
        probing.pool(z, torch.tensor([0, 0, 1]), how="median")


def test_select_latents_finds_the_informative_ones():
    z, y = _separable(600)
    assert sorted(probing.select_latents(z, y == 1, 3).tolist()) == [3, 4, 5]


def test_probe_beats_chance_on_separable_data():
    z_tr, y_tr = _separable(600, seed=0)
    z_te, y_te = _separable(600, seed=1)
    res = probing.sparse_probe(z_tr, y_tr, z_te, y_te, ks=(1, 3))
    assert len(res) == 6 and set(res["k"]) == {1, 3}
    assert (res["test_acc"] > 0.95).all()
    assert (res[res.k == 3]["test_acc"] >= res[res.k == 1]["test_acc"].values - 0.01).all()


def test_probe_is_at_chance_on_shuffled_labels():
    z_tr, y_tr = _separable(2000, seed=0)
    z_te, y_te = _separable(3000, seed=1)
    g = torch.Generator().manual_seed(5)
    res = probing.sparse_probe(z_tr, y_tr[torch.randperm(len(y_tr), generator=g)], z_te,
                               y_te[torch.randperm(len(y_te), generator=g)], ks=(1, 5))
    assert (res["test_acc"] - 0.5).abs().max() < 0.05, res
    summary = probing.probe_summary({"shuffled": res})
    assert abs(summary.loc[0, "test_acc_k5"] - 0.5) < 0.03


def test_balanced_accuracy_is_half_for_constant_predictions():
    y = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert probing.balanced_accuracy(y, torch.zeros(10, dtype=torch.bool)) == 0.5
    assert probing.balanced_accuracy(y, y) == 1.0


def test_pooled_codes_reads_a_cache_in_chunks(tmp_path):
    """Pooling over a cache equals pooling the whole matrix at once, whatever the chunk size."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 6, generator=gen)
    image = np.repeat(np.arange(10), 4)
    labels = image % 3

    def shard(i):
        sl = slice(20 * i, 20 * (i + 1))
        return {"acts": acts[sl], "image": image[sl].astype(np.int32), "labels": labels[sl].astype(np.int32)}

    build_cache(tmp_path, {"dtype": "float32", "kind": "toy"}, 2, shard, progress=False)
    cache = ActivationCache(tmp_path)
    unit = acts / acts.norm(dim=1, keepdim=True)
    want, _ = probing.pool(unit * 2.0, torch.as_tensor(image))
    for chunk in (7, 64):
        got, y = probing.pooled_codes(lambda x: x * 2.0, cache, chunk=chunk)
        torch.testing.assert_close(got, want)
        assert y.tolist() == (np.arange(10) % 3).tolist()
    got_max, _ = probing.pooled_codes(lambda x: x, cache, how="max", chunk=7)
    torch.testing.assert_close(got_max, probing.pool(unit, torch.as_tensor(image), how="max")[0])
