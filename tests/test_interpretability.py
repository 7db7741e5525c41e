"""Offline monosemanticity measures: purity/entropy on known firing patterns, chunking, context, vision pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isae.eval import interpretability as interp

N_TOP = 10


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def test_label_purity_and_entropy_of_known_columns():
    labels = torch.stack([torch.full((N_TOP,), 7), torch.arange(N_TOP), torch.tensor([1] * 5 + [2] * 5)], dim=1)
    purity, entropy = interp.label_purity(labels)
    assert purity.tolist() == pytest.approx([1.0, 1 / N_TOP, 0.5])
    assert entropy.tolist() == pytest.approx([0.0, math.log(N_TOP), math.log(2)], abs=1e-6)


def test_label_purity_handles_negative_labels():
    labels = torch.tensor([[-1, 3], [-1, 4], [2, 3], [-1, 3]])
    purity, _ = interp.label_purity(labels)
    assert purity.tolist() == pytest.approx([0.75, 0.75])


def test_token_purity_is_one_for_a_single_token_latent_and_one_over_n_for_spread_firing():
    g = np.random.default_rng(0)
    n = 2000
    tokens = g.integers(0, 50_000, size=n)
    tokens[::20] = 7  # token 7 occurs 100 times
    gen = torch.Generator().manual_seed(0)
    is7 = torch.as_tensor(tokens == 7)
    codes = torch.zeros(n, 3)
    codes[is7, 0] = torch.rand(int(is7.sum()), generator=gen) + 0.1  # fires only on token 7
    codes[~is7, 1] = torch.rand(int((~is7).sum()), generator=gen) + 0.1  # fires on tokens spread over 50k ids
    codes[:5, 2] = 1.0  # fires on 5 < N_TOP rows: not live
    prev = interp.previous_tokens(tokens, np.arange(n) + 1)
    per = interp.text_interpretability(_identity, codes, tokens, prev, N_TOP)
    assert per.loc[0, "token_purity"] == 1.0 and per.loc[0, "token_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert per.loc[1, "token_purity"] <= 2 / N_TOP  # ~1/n: the 10 top rows carry (almost surely) distinct tokens
    assert per.loc[1, "token_n_eff"] > N_TOP - 2
    assert not per.loc[2, "live"] and np.isnan(per.loc[2, "token_purity"])
    summary = interp.summarise_latents(per)
    assert summary["live_frac"] == pytest.approx(2 / 3)
    assert summary["token_purity"] == pytest.approx((1.0 + per.loc[1, "token_purity"]) / 2)
    assert summary["token_pure_frac"] == pytest.approx(1 / 3)  # only latent 0 is live and pure, of 3 latents


def test_context_purity_sees_the_previous_token():
    # latent fires on the token after "5", whatever that token is
    g = np.random.default_rng(1)
    tokens = g.integers(100, 10_000, size=1000)
    tokens[10::25] = 5
    positions = np.arange(1000) % 50 + 1  # windows of 50 kept tokens
    prev = interp.previous_tokens(tokens, positions)
    codes = torch.zeros(1000, 1)
    codes[torch.as_tensor(prev == 5), 0] = 1.0
    per = interp.text_interpretability(_identity, codes, tokens, prev, N_TOP)
    assert per.loc[0, "context_purity"] == 1.0
    assert per.loc[0, "token_purity"] <= 3 / N_TOP


def test_previous_tokens_respects_window_starts_and_gaps():
    tokens = np.array([10, 11, 12, 20, 21, 22])
    positions = np.array([1, 2, 3, 1, 2, 4])  # new window at row 3; a removed separator before row 5
    assert interp.previous_tokens(tokens, positions).tolist() == [-1, 10, 11, -1, 20, -1]


@pytest.mark.parametrize("chunk", [3, 7, 64, 10_000])
def test_top_activations_is_independent_of_the_chunk_size(chunk):
    x = torch.randn(200, 12, generator=torch.Generator().manual_seed(0))
    ref = interp.top_activations(_identity, x, N_TOP, chunk=10_000)
    got = interp.top_activations(_identity, x, N_TOP, chunk=chunk)
    assert torch.equal(got.values, ref.values) and torch.equal(got.index, ref.index)
    assert torch.equal(got.fires, (x > 0).sum(0))
    assert torch.equal(ref.values, x.topk(N_TOP, dim=0).values)


def test_top_activations_rejects_too_few_inputs():
    with pytest.raises(ValueError, match="n_top"):
        interp.top_activations(_identity, torch.randn(5, 3), N_TOP)


def _patches(n_images: int, per_image: int, n_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels_img = torch.randint(0, n_classes, (n_images,), generator=g)
    groups = torch.arange(n_images).repeat_interleave(per_image)
    return groups, labels_img[groups], labels_img


def test_vision_class_purity_one_for_a_class_latent_and_near_chance_for_a_random_one():
    groups, labels, labels_img = _patches(400, 4, 10)
    g = torch.Generator().manual_seed(1)
    codes = torch.zeros(len(groups), 2)
    codes[:, 0] = (labels == 3).float() * (1 + torch.rand(len(groups), generator=g))  # class-3 detector
    codes[:, 1] = torch.rand(len(groups), generator=g)  # random
    per = interp.vision_interpretability(_identity, codes, groups, labels, N_TOP)
    assert per.loc[0, "class_purity"] == 1.0
    assert per.loc[1, "class_purity"] < 0.6
    chance = interp.random_purity(labels_img.numpy(), N_TOP)
    assert 0.1 < chance < 0.45


def test_vision_pooling_counts_an_image_once():
    groups, labels, _ = _patches(50, 16, 10)
    codes = torch.zeros(len(groups), 1)
    codes[groups == 4, 0] = 1.0  # all 16 patches of one image: 16 rows but one image
    per = interp.vision_interpretability(_identity, codes, groups, labels, N_TOP)
    assert per.loc[0, "fires"] == 1 and not per.loc[0, "live"]


def test_image_labels_refuses_mixed_labels():
    with pytest.raises(ValueError, match="different labels"):
        interp.image_labels(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 3]))


def test_random_purity_bounds():
    assert interp.random_purity(np.zeros(100, dtype=int), N_TOP) == 1.0
    assert interp.random_purity(np.arange(1000), N_TOP) == pytest.approx(1 / N_TOP)
