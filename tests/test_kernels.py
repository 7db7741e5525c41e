"""The numba kernels (isae.core.kernels) are exact on inputs that exercise each of their branches."""

from __future__ import annotations

import pytest
import torch

from isae.core import kernels


def _same_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.sort(1).values, b.sort(1).values)


def test_rows_of_very_different_scales_take_every_threshold_branch_and_stay_exact():
    # Scales that jump by 10^±3 from row to row make the carried-over threshold too high on some rows and too
    # low on others, so both re-estimation branches run; the result must not depend on them.
    g = torch.Generator().manual_seed(0)
    scale = 10.0 ** torch.randint(-3, 4, (257, 1), generator=g)
    key = torch.randn(257, 2048, generator=g) * scale
    for k in (1, 16, 64):
        picked = kernels.topk_indices_cpu(key, k, sorted=False)
        assert _same_sets(picked, key.topk(k, dim=1).indices), k


def test_result_does_not_depend_on_the_number_of_threads():
    key = torch.randn(301, 1024, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 10, 301)[:, None]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.topk_indices_cpu(key, 20, sorted=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, kernels.topk_indices_cpu(key, 20, sorted=False))


def test_ties_give_k_distinct_indices_with_the_largest_values():
    key = torch.randint(0, 3, (64, 512), generator=torch.Generator().manual_seed(2)).float()
    key[0] = 1.0  # a constant row: every entry ties
    k = 12
    picked = kernels.topk_indices_cpu(key, k)
    assert all(len(set(row.tolist())) == k for row in picked)
    torch.testing.assert_close(key.gather(1, picked), key.topk(k, dim=1).values, rtol=0, atol=0)


def test_infinite_entries_are_ranked_like_torch_topk():
    key = torch.randn(8, 512, generator=torch.Generator().manual_seed(3))
    key[0, :10] = float("inf")
    key[1, :] = float("-inf")
    key[1, 7] = 0.0
    key[2, 100:] = float("-inf")
    picked = kernels.topk_indices_cpu(key, 16)
    torch.testing.assert_close(key.gather(1, picked), key.topk(16, dim=1).values, rtol=0, atol=0)


@pytest.mark.parametrize("sorted_", [True, False])
def test_rows_with_nan_are_ranked_like_torch_topk(sorted_):
    key = torch.randn(16, 512, generator=torch.Generator().manual_seed(4))
    key[3, 17] = float("nan")
    picked = kernels.topk_indices_cpu(key, 8, sorted=sorted_)
    assert torch.equal(picked, key.topk(8, dim=1, sorted=sorted_).indices)
    assert 17 in picked[3].tolist()


def test_supports_only_the_shapes_and_dtypes_the_kernel_handles():
    assert kernels.topk_supports(torch.empty(4, 4096), 40)
    assert kernels.topk_supports(torch.empty(4, 4096, dtype=torch.float64), 80)
    assert not kernels.topk_supports(torch.empty(4, 4096, dtype=torch.bfloat16), 40)  # numpy has no bfloat16
    assert not kernels.topk_supports(torch.empty(4, 4100), 40)  # width not a multiple of GROUP
    assert not kernels.topk_supports(torch.empty(4, 256), 40)  # k too large for the groups
    assert not kernels.topk_supports(torch.empty(0, 4096), 40)


def _multistep_problem(B: int = 97, T: int = 4, k: int = 5, K: int = 64):
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(K, (B, T, k), generator=g)  # with repeats: rows of S shared within and across inputs
    S = torch.randn(K, K, generator=g)
    prev, up = torch.randn(T - 1, B, k, generator=g), torch.randn(T - 1, B, k, generator=g)
    return idx, S, prev, up


def test_multistep_blocks_equal_direct_indexing():
    idx, S, _, _ = _multistep_problem()
    blocks = kernels.multistep_blocks(idx, S, kernels.row_layout(idx, S.shape[0]))
    for t in range(1, idx.shape[1]):
        assert torch.equal(blocks[t - 1], S[idx[:, t - 1, :, None], idx[:, t, None, :]])


def test_multistep_grad_S_equals_summed_outer_products_for_any_thread_count():
    idx, S, prev, up = _multistep_problem()
    expected = torch.zeros_like(S, dtype=torch.float64)
    for t in range(1, idx.shape[1]):
        outer = prev[t - 1, :, :, None].double() * up[t - 1, :, None, :].double()
        expected.index_put_((idx[:, t - 1, :, None].expand_as(outer), idx[:, t, None, :].expand_as(outer)), outer,
                            accumulate=True)
    layout = kernels.row_layout(idx, S.shape[0])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.multistep_grad_S(idx, prev, up, layout)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(one, kernels.multistep_grad_S(idx, prev, up, layout))


@pytest.mark.parametrize("sorted_", [True, False])
def test_magnitude_ranks_by_absolute_value_like_torch_topk_of_abs(sorted_):
    g = torch.Generator().manual_seed(6)
    key = torch.randn(129, 2048, generator=g) * 10.0 ** torch.randint(-2, 3, (129, 1), generator=g)
    with_nan = key.clone()
    with_nan[5, 3] = float("nan")  # a NaN sends the whole call to torch.topk, which must rank |key| as well
    for x in (key, with_nan):
        for k in (8, 40):
            picked = kernels.topk_indices_cpu(x, k, sorted=sorted_, magnitude=True)
            expected = x.abs().topk(k, dim=1, sorted=sorted_).indices
            if sorted_:
                assert torch.equal(picked, expected)
            else:
                assert _same_sets(picked, expected)
