"""The sparse kernels equal their dense definitions, in value and gradient (float64, tolerance 1e-12)."""

from __future__ import annotations

import pytest
import torch

from isae.core import kernels
from isae.core.kernels import GROUP
from isae.core.sparse_ops import (
    LatentMajor,
    add_sparse_decode,
    columns_preact,
    gather_preact,
    multistep_values,
    rows_dot,
    scatter_rows,
    sparse_decode,
    topk_indices,
)

TOL = dict(rtol=1e-12, atol=1e-12)  # float64: the sparse and dense sums differ only by summation order


def _dense_from_sparse(vals: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Dense [B, n] matrix with vals scattered-added at idx (duplicates within a row add up)."""
    return torch.zeros(vals.shape[0], n, dtype=vals.dtype).scatter_add(1, idx, vals)


def _problem(seed: int = 0, B: int = 37, K: int = 50, N: int = 12, k: int = 6, duplicates: bool = False):
    g = torch.Generator().manual_seed(seed)
    if duplicates:  # indices drawn with replacement: the same row may appear twice in one bag
        idx = torch.randint(K, (B, k), generator=g)
    else:
        idx = torch.rand(B, K, generator=g).argsort(1)[:, :k]
    W = torch.randn(K, N, generator=g, dtype=torch.float64)
    x = torch.randn(B, N, generator=g, dtype=torch.float64)
    vals = torch.randn(B, k, generator=g, dtype=torch.float64)
    upstream = torch.randn(B, N, generator=g, dtype=torch.float64)
    return idx, W, x, vals, upstream


@pytest.mark.parametrize("duplicates", [False, True])
def test_sparse_decode_value_and_grads_equal_dense_matmul(duplicates):
    idx, W, _, vals, upstream = _problem(duplicates=duplicates)
    W1, v1 = W.clone().requires_grad_(), vals.clone().requires_grad_()
    out = sparse_decode(v1, idx, W1)
    (out * upstream).sum().backward()

    W2, v2 = W.clone().requires_grad_(), vals.clone().requires_grad_()
    dense = _dense_from_sparse(v2, idx, W.shape[0]) @ W2
    (dense * upstream).sum().backward()

    torch.testing.assert_close(out, dense, **TOL)
    torch.testing.assert_close(W1.grad, W2.grad, **TOL)
    torch.testing.assert_close(v1.grad, v2.grad, **TOL)


@pytest.mark.parametrize("duplicates", [False, True])
def test_gather_preact_value_and_grads_equal_dense_gather(duplicates):
    idx, W, x, _, _ = _problem(seed=1, duplicates=duplicates)
    up = torch.randn(idx.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    x1, W1 = x.clone().requires_grad_(), W.clone().requires_grad_()
    pre_at_idx = (x @ W.T).gather(1, idx)  # computed without grad, as during the encoder's selection
    vals = gather_preact(x1, W1, pre_at_idx, idx)
    (vals * up).sum().backward()

    x2, W2 = x.clone().requires_grad_(), W.clone().requires_grad_()
    dense = (x2 @ W2.T).gather(1, idx)
    (dense * up).sum().backward()

    torch.testing.assert_close(vals, dense, **TOL)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    torch.testing.assert_close(W1.grad, W2.grad, **TOL)


def _assert_shifted_product_matches_dense(sparse, dense, x, W, shift, up, x_needs_grad: bool) -> None:
    """sparse(x, W, shift) equals dense(x, W, shift) — a product of x − shift with W — in value and in the
    gradients of W, shift and (when it needs one) x, for the upstream gradient ``up``."""
    results = []
    for fn in (sparse, dense):
        args = (x.clone().requires_grad_(x_needs_grad), W.clone().requires_grad_(), shift.clone().requires_grad_())
        out = fn(*args)
        (out * up).sum().backward()
        results.append((out, *args))
    (out1, x1, W1, s1), (out2, x2, W2, s2) = results
    torch.testing.assert_close(out1, out2, **TOL)
    torch.testing.assert_close(W1.grad, W2.grad, **TOL)
    torch.testing.assert_close(s1.grad, s2.grad, **TOL)
    if x_needs_grad:
        torch.testing.assert_close(x1.grad, x2.grad, **TOL)


@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_gather_preact_with_a_shift_equals_the_dense_gather_of_the_shifted_input(x_needs_grad):
    # The SAE's use: values of (x − b_dec) W_encᵀ at idx. b_dec's gradient comes from per-latent sums when x needs
    # none, and from x's [B, N] gradient when it does; both must equal autograd through the dense product.
    idx, W, x, _, _ = _problem(seed=11, duplicates=True)
    shift = torch.randn(W.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    up = torch.randn(idx.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    _assert_shifted_product_matches_dense(
        lambda x_, W_, s_: gather_preact(x_, W_, ((x - shift) @ W.T).gather(1, idx), idx, shift=s_),
        lambda x_, W_, s_: ((x_ - s_) @ W_.T).gather(1, idx), x, W, shift, up, x_needs_grad)


@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_columns_preact_equals_autograd_through_the_dense_columns(x_needs_grad):
    idx, W, x, _, _ = _problem(seed=14)
    cols = torch.tensor([3, 17, 4, 40, 22])  # distinct, unsorted
    shift = torch.randn(W.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    up = torch.randn(x.shape[0], cols.numel(), generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    _assert_shifted_product_matches_dense(
        lambda x_, W_, s_: columns_preact(x_, W_, cols, (x - shift) @ W[cols].T, shift=s_),
        lambda x_, W_, s_: (x_ - s_) @ W_[cols].T, x, W, shift, up, x_needs_grad)


def test_a_shared_latent_major_layout_gives_the_same_gradients_as_separate_ones():
    # The SAE builds one LatentMajor per step for the encoder's and the decoder's weight gradients.
    idx, W, x, vals, upstream = _problem(seed=12, duplicates=True)

    def grads(shared: bool):
        We, Wd, v = W.clone().requires_grad_(), W.clone().requires_grad_(), vals.clone().requires_grad_()
        layout = LatentMajor(idx, W.shape[0]) if shared else None
        enc = gather_preact(x, We, (x @ W.T).gather(1, idx), idx, layout=layout)
        out = sparse_decode(v * enc, idx, Wd, layout)
        (out * upstream).sum().backward()
        return We.grad, Wd.grad, v.grad

    for a, b in zip(grads(True), grads(False)):
        assert torch.equal(a, b)


def test_add_sparse_decode_equals_base_plus_sparse_decode():
    # Column tiles that do not divide the width, and a tile wider than it.
    idx, W, _, vals, upstream = _problem(seed=13, K=50, N=37)
    for tile in (16, 128, None):
        out = torch.empty_like(upstream)
        add_sparse_decode(upstream, vals, idx, W, out=out, tile=tile)
        torch.testing.assert_close(out, upstream + sparse_decode(vals, idx, W), **TOL)


def test_gather_preact_gives_zero_gradient_to_unselected_encoder_rows():
    idx, W, x, _, _ = _problem(seed=2, B=3)  # 3 inputs × 6 picks cannot cover all 50 latents
    W1 = W.clone().requires_grad_()
    gather_preact(x, W1, (x @ W.T).gather(1, idx), idx).sum().backward()
    unselected = torch.ones(W.shape[0], dtype=torch.bool)
    unselected[idx.unique()] = False
    assert unselected.any()
    assert torch.all(W1.grad[unselected] == 0)
    assert torch.all(W1.grad[~unselected].norm(dim=1) > 0)


@pytest.mark.parametrize("duplicates", [False, True])
def test_rows_dot_value_and_grads_equal_dense_product(duplicates):
    idx, W, u, _, _ = _problem(seed=3, duplicates=duplicates)
    up = torch.randn(idx.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    W1, u1 = W.clone().requires_grad_(), u.clone().requires_grad_()
    out = rows_dot(W1, idx, u1)
    (out * up).sum().backward()

    W2, u2 = W.clone().requires_grad_(), u.clone().requires_grad_()
    dense = (u2 @ W2.T).gather(1, idx)  # out[b, j] = W[idx[b, j]] · u[b]
    (dense * up).sum().backward()

    torch.testing.assert_close(out, dense, **TOL)
    torch.testing.assert_close(W1.grad, W2.grad, **TOL)
    torch.testing.assert_close(u1.grad, u2.grad, **TOL)


def test_rows_dot_is_the_adjoint_of_sparse_decode():
    # <sparse_decode(v, idx, W), u> == <v, rows_dot(W, idx, u)> for every v, u
    idx, W, u, vals, _ = _problem(seed=4)
    lhs = (sparse_decode(vals, idx, W) * u).sum()
    rhs = (vals * rows_dot(W, idx, u)).sum()
    torch.testing.assert_close(lhs, rhs, **TOL)


def test_sparse_ops_match_dense_in_float32_within_float_tolerance():
    idx, W, x, vals, _ = _problem(seed=5)
    W, x, vals = W.float(), x.float(), vals.float()
    torch.testing.assert_close(sparse_decode(vals, idx, W), _dense_from_sparse(vals, idx, W.shape[0]) @ W,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows_dot(W, idx, x), (x @ W.T).gather(1, idx), rtol=1e-5, atol=1e-5)


def test_rows_dot_fallback_kernel_equals_the_sampled_product():
    # float32/float64 on the CPU take torch.sparse.sampled_addmm; other dtypes (and the GPU) embedding_bag's kernel
    idx, W, x, _, _ = _problem(seed=7, duplicates=True)
    exact = rows_dot(W, idx, x)
    torch.testing.assert_close(exact, (x @ W.T).gather(1, idx), **TOL)
    fallback = rows_dot(W.bfloat16(), idx, x.bfloat16())
    assert fallback.dtype == torch.bfloat16
    torch.testing.assert_close(fallback.double(), exact, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("reduce", ["sum", "mean", "one_column"])
def test_sparse_backwards_accept_broadcast_upstream_gradients(reduce):
    # .sum()/.mean() hand the backward an expanded (stride-0) gradient; the kernels must read it correctly
    idx, W, x, vals, _ = _problem(seed=6)
    red = {"sum": lambda t: t.sum(), "mean": lambda t: t.mean(), "one_column": lambda t: t[:, 1].sum()}[reduce]

    def grads(fn, *args):
        args = [a.clone().requires_grad_() for a in args]
        red(fn(*args)).backward()
        return [a.grad for a in args]

    for sparse, dense, args in [
        (lambda x_, W_: gather_preact(x_, W_, (x @ W.T).gather(1, idx), idx),
         lambda x_, W_: (x_ @ W_.T).gather(1, idx), (x, W)),
        (lambda W_, x_: rows_dot(W_, idx, x_), lambda W_, x_: (x_ @ W_.T).gather(1, idx), (W, x)),
        (lambda v_, W_: sparse_decode(v_, idx, W_), lambda v_, W_: _dense_from_sparse(v_, idx, W.shape[0]) @ W_,
         (vals, W)),
    ]:
        for g_sparse, g_dense in zip(grads(sparse, *args), grads(dense, *args)):
            torch.testing.assert_close(g_sparse, g_dense, **TOL)


@pytest.mark.parametrize("duplicates", [False, True])
def test_scatter_rows_equals_dense_transposed_product(duplicates):
    idx, W, x, vals, _ = _problem(seed=7, duplicates=duplicates)
    expected = _dense_from_sparse(vals, idx, W.shape[0]).T @ x  # grad[i] = Σ_b G[b, i] x[b]
    torch.testing.assert_close(scatter_rows(idx, vals, x, W.shape[0]), expected, **TOL)


def test_scatter_rows_is_deterministic_and_zero_on_unused_rows():
    idx, W, x, vals, _ = _problem(seed=8, B=3)
    a = scatter_rows(idx, vals.float(), x.float(), W.shape[0])
    b = scatter_rows(idx, vals.float(), x.float(), W.shape[0])
    assert torch.equal(a, b)
    unused = torch.ones(W.shape[0], dtype=torch.bool)
    unused[idx.unique()] = False
    assert unused.any() and torch.all(a[unused] == 0)


@pytest.mark.parametrize("n_steps", [1, 2, 5])
@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("numba", [True, False])  # False: the index_select/bincount path a GPU takes
def test_multistep_values_and_grads_equal_dense_recursion(n_steps, duplicates, numba, monkeypatch):
    if not numba:
        monkeypatch.setattr(kernels, "multistep_supports", lambda S: False)
    K, B, k = 50, 37, 6
    idx = torch.stack([_problem(seed=20 + t, duplicates=duplicates)[0] for t in range(n_steps)], 1)  # [B, T, k]
    g = torch.Generator().manual_seed(13)
    base = torch.randn(B, n_steps, k, generator=g, dtype=torch.float64)
    S = 0.3 * torch.randn(K, K, generator=g, dtype=torch.float64)
    up = torch.randn(B, k, generator=g, dtype=torch.float64)

    b1, S1 = base.clone().requires_grad_(), S.clone().requires_grad_()
    out = multistep_values(b1, idx, S1)
    (out * up).sum().backward()

    b2, S2 = base.clone().requires_grad_(), S.clone().requires_grad_()
    z = b2[:, 0]
    for t in range(1, n_steps):  # dense: z⁽ᵗ⁾ = base_t + (z⁽ᵗ⁻¹⁾ as a dense [B, K] code) S, read at idx_t
        z = b2[:, t] + (_dense_from_sparse(z, idx[:, t - 1], K) @ S2).gather(1, idx[:, t])
    (z * up).sum().backward()

    torch.testing.assert_close(out, z, **TOL)
    torch.testing.assert_close(b1.grad, b2.grad, **TOL)
    if n_steps > 1:
        torch.testing.assert_close(S1.grad, S2.grad, **TOL)


@pytest.mark.parametrize("n,k", [(4096, 40), (4096, 80), (512, 8), (48, 4), (100, 3)])  # last two: torch.topk
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [False, True])
def test_topk_indices_equals_torch_topk(n, k, dtype, magnitude):
    key = torch.randn(33, n, generator=torch.Generator().manual_seed(n + k), dtype=dtype)
    expected = (key.abs() if magnitude else key).topk(k, dim=1).indices
    torch.testing.assert_close(topk_indices(key, k, magnitude=magnitude), expected, rtol=0, atol=0)


@pytest.mark.parametrize("n,k", [(4096, 40), (48, 4)])  # numba kernel and torch.topk
def test_unsorted_topk_indices_pick_the_same_latents(n, k):
    key = torch.randn(33, n, generator=torch.Generator().manual_seed(n))
    picked = topk_indices(key, k, sorted=False)
    assert torch.equal(picked.sort(1).values, key.topk(k, dim=1).indices.sort(1).values)


def test_topk_indices_is_exact_when_the_largest_entries_share_one_group():
    # Adversarial: all k largest entries of row 0 sit in the same group (entries j, j + n/g, j + 2n/g, …),
    # and row 1's k largest are spread one per group.
    n, k = 1024, 8
    key = torch.rand(2, n, generator=torch.Generator().manual_seed(0))
    same_group = 5 + (n // GROUP) * torch.arange(GROUP)
    key[0, same_group] += 10
    key[0, 700] += 9  # the 9th largest, in another group
    key[1, torch.arange(k) * 3] += 10
    torch.testing.assert_close(topk_indices(key, k), key.topk(k, dim=1).indices, rtol=0, atol=0)
