"""Sparse building blocks for k-sparse autoencoders.

A k-sparse code touches k of K latents per input, so everything after the one dense encoder product
(pre-activation = x W_encᵀ) can cost O(k) per input instead of O(K). Three products cover every use, each
with a backward made of the other two, so no dense batch × K tensor is ever formed:

* ``sparse_decode``: Σ_j vals[b, j] · W[idx[b, j]] (an embedding-bag: the decoder of sparsify);
* ``rows_dot``: W[idx[b, j]] · u[b] (its adjoint, and the encoder restricted to the selected latents);
* ``scatter_rows``: grad[i] = Σ_{idx[b, j] = i} weights[b, j] · rows[b] (the weight gradient of both), through
  a ``LatentMajor`` layout of idx that products over the same idx share.

``gather_preact`` and ``columns_preact`` give the encoder's values at latents the selection chose (sparse,
and dense over a few hundred columns for AuxK) a gradient without recomputing them. ``multistep_values``
runs iSAE-ME's multistep encoder on k × k blocks of S per input, and ``add_sparse_decode`` computes its
dense lateral input during the selection, one cache-sized tile of S at a time.

Why these kernels (whole training steps are timed by ``benchmarks/bench_training.py``):

* ``scatter_rows`` is a CSR sparse × dense product (latent-major, built with one stable argsort, int32
  indices, written by ``addmm(beta=0, out=)`` into an uninitialised output). It is as fast as embedding_bag's
  own weight-gradient kernel called directly, and faster than that kernel reached through autograd (which also
  fills a dummy K × N weight), the dense ``Gᵀ x`` product and ``index_add`` over materialised outer products;
* ``rows_dot`` is a sampled dense × dense product, ``torch.sparse.sampled_addmm`` over the CSR pattern of
  idx, faster on the CPU than embedding_bag's per-sample-weights backward kernel (a private ``torch.ops.aten``
  op that computes the same product, kept for the GPU and other dtypes) and than ``bmm`` over gathered
  [chunk, k, N] blocks.

``tests/test_sparse_ops.py`` checks values and gradients against the dense computation in float64.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from isae.core import kernels


def _index_dtype(numel: int) -> torch.dtype:
    """int32 where the indices fit (MKL's own index type, and half the memory traffic), else int64."""
    return torch.int32 if numel < 2**31 else torch.long


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix over a pattern built here (so not re-checked), without torch's "sparse CSR support is in
    beta" warning: the products used on it (addmm, sampled_addmm) are stable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class LatentMajor:
    """The (b, j) pairs of idx [B, k] grouped by latent: the CSR pattern of the [n_rows, B] matrix G with
    G[idx[b, j], b] = weights[b, j], built on first use and shared by every weight gradient scattered through
    the same idx (the decoder's and the encoder's: one stable argsort per step instead of two).

    ``scatter(weights, rows)`` returns grad [n_rows, N] with grad[i] = Σ_{(b, j): idx[b, j] = i} weights[b, j] ·
    rows[b], i.e. G @ rows, summed in a fixed order (the stable sort), hence deterministic. The product is
    written into a fresh, uninitialised output (``addmm(beta=0, out=)``): ``G @ rows`` would zero-fill its output
    and then copy MKL's result into it, two extra K × N passes per step.
    """

    def __init__(self, idx: torch.Tensor, n_rows: int):
        self.idx, self.n_rows = idx, n_rows
        self._pattern: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _csr(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._pattern is None:
            batch, k = self.idx.shape
            flat = self.idx.reshape(-1)
            order = flat.argsort(stable=True)
            index_dtype = _index_dtype(flat.numel())
            crow = torch.zeros(self.n_rows + 1, dtype=index_dtype, device=flat.device)
            torch.cumsum(torch.bincount(flat, minlength=self.n_rows), 0, out=crow[1:])
            col = torch.div(order, k, rounding_mode="floor").to(index_dtype)  # the input b of each (b, j) pair
            self._pattern = (order, crow, col)
        return self._pattern

    def scatter(self, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """G @ rows for G[idx[b, j], b] = weights[b, j] (not differentiable)."""
        order, crow, col = self._csr()
        vals = weights.reshape(-1)[order].to(rows.dtype)
        out = torch.empty(self.n_rows, rows.shape[1], dtype=rows.dtype, device=rows.device)
        g = _csr(crow, col, vals, (self.n_rows, self.idx.shape[0]))
        return torch.addmm(out, g, rows.contiguous(), beta=0, out=out)

    def latent_sums(self, weights: torch.Tensor) -> torch.Tensor:
        """[n_rows] Σ_{(b, j): idx[b, j] = i} weights[b, j] (not differentiable; summed in a fixed order)."""
        flat = self.idx.reshape(-1)
        return torch.bincount(flat, weights=weights.reshape(-1), minlength=self.n_rows).to(weights.dtype)


def scatter_rows(idx: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_rows: int,
                 layout: LatentMajor | None = None) -> torch.Tensor:
    """grad [n_rows, N] with grad[i] = Σ_{(b, j): idx[b, j] = i} weights[b, j] · rows[b] (not differentiable).

    ``layout``: a ``LatentMajor`` of the same idx to reuse (built here when None).
    """
    return (layout if layout is not None else LatentMajor(idx, n_rows)).scatter(weights, rows)


def _rows_dot(weight: torch.Tensor, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """out[b, j] = weight[idx[b, j]] · u[b] (not differentiable): a sampled dense × dense product (SDDMM).

    On the CPU in float32/float64 it is ``torch.sparse.sampled_addmm`` over the CSR pattern of idx (row b holds
    columns idx[b]; its kernel computes each entry on its own, so the columns need not be sorted); elsewhere
    embedding_bag's per-sample-weights backward kernel, which computes the same product.
    """
    if not weight.is_cuda and weight.dtype in (torch.float32, torch.float64) and u.dtype == weight.dtype:
        return _rows_dot_sampled(weight, idx, u)
    batch, k = idx.shape
    offsets = torch.arange(0, batch * k, k, device=idx.device)
    offset2bag = torch.arange(batch, device=idx.device).repeat_interleave(k)
    out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        u.contiguous(), weight, idx.reshape(-1), offsets, offset2bag, 0, -1)  # mode 0 = sum, no padding index
    return out.view(batch, k)


@torch.compiler.disable  # torch.compile cannot trace sparse CSR tensors: it runs this eagerly
def _rows_dot_sampled(weight: torch.Tensor, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    batch, k = idx.shape
    index_dtype = _index_dtype(idx.numel())
    crow = torch.arange(0, batch * k + 1, k, dtype=index_dtype, device=idx.device)
    pattern = _csr(crow, idx.reshape(-1).to(index_dtype), torch.zeros(batch * k, dtype=weight.dtype, device=idx.device),
                   (batch, weight.shape[0]))
    out = torch.sparse.sampled_addmm(pattern, u.contiguous(), weight.T, beta=0.0)
    return out.values().view(batch, k).clone()  # a tensor of its own: dynamo could not wrap a view of the values


def _decode(vals: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.embedding_bag(idx, weight, per_sample_weights=vals.contiguous(), mode="sum")


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals, idx, weight, layout):
        ctx.save_for_backward(vals, idx, weight)
        ctx.layout = layout
        return _decode(vals, idx, weight)

    @staticmethod
    def backward(ctx, grad_out):
        vals, idx, weight = ctx.saved_tensors
        grad_vals = _rows_dot(weight, idx, grad_out) if ctx.needs_input_grad[0] else None
        grad_w = scatter_rows(idx, vals, grad_out, weight.shape[0], ctx.layout) if ctx.needs_input_grad[2] else None
        return grad_vals, None, grad_w, None


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                  layout: LatentMajor | None = None) -> torch.Tensor:
    """Return Σ_j vals[b, j] · weight[idx[b, j]] as a [B, weight.shape[1]] tensor (differentiable in vals, weight).

    ``layout``: a ``LatentMajor(idx, weight.shape[0])`` shared with other products over the same idx.
    """
    return _SparseDecode.apply(vals, idx, weight, layout)


#: Columns per tile in ``add_sparse_decode`` on the CPU (our choice: fastest of 32–1024 at K = 4096, k = 40).
DECODE_TILE = 128
#: ``add_sparse_decode`` reads the whole width at once while ``weight`` takes at most this many bytes (our choice,
#: measured on a 2-core EPYC with a 32 MiB L3: an S that fits in the last-level cache gains nothing from tiles and
#: pays for their copies, e.g. K = 2048, 512 inputs, k = 20: 1.6 ms whole against 6.1 ms in tiles of 128; at
#: K = 3072 and K = 4096 the tiles win, 6.4 against 10 ms and 11 against 24 ms).
DECODE_WHOLE_MAX_BYTES = 24 << 20


@torch.no_grad()
def add_sparse_decode(base: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                      out: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """out = base + Σ_j vals[b, j] · weight[idx[b, j]] (not differentiable), for a wide ``weight`` [K, M].

    iSAE-ME's lateral input S z reads k rows of S (K × K, 64 MiB at K = 4096) per input, so it is bound by
    memory traffic. On the CPU, when S does not fit in the last-level cache (``DECODE_WHOLE_MAX_BYTES``), it runs
    one column tile of S at a time (embedding_bag copies the strided view into a contiguous K × 128 tile,
    2 MiB), which stays in cache while every input reads it, and the sum with ``base`` is written straight into
    ``out``. This is faster than the whole width at once, copies included. ``tile``: columns per tile (None:
    chosen as above).
    """
    if tile is None:
        whole = weight.numel() * weight.element_size() <= DECODE_WHOLE_MAX_BYTES
        tile = weight.shape[1] if whole else DECODE_TILE
    if weight.is_cuda or tile >= weight.shape[1]:
        return torch.add(base, _decode(vals, idx, weight).to(base.dtype), out=out)
    for start in range(0, weight.shape[1], tile):
        cols = slice(start, start + tile)
        torch.add(base[:, cols], _decode(vals, idx, weight[:, cols]).to(base.dtype), out=out[:, cols])
    return out


class _RowsDot(torch.autograd.Function):
    """out[b, j] = weight[idx[b, j]] · (u[b] − shift), or the given ``values`` when they are known already."""

    @staticmethod
    def forward(ctx, weight, idx, u, shift, values, layout):
        u_c = u if shift is None else u - shift
        ctx.save_for_backward(weight, idx, u_c)
        ctx.layout = layout
        return _rows_dot(weight, idx, u_c) if values is None else values

    @staticmethod
    def backward(ctx, grad_out):
        weight, idx, u_c = ctx.saved_tensors
        n_rows = weight.shape[0]
        layout = ctx.layout if ctx.layout is not None else LatentMajor(idx, n_rows)
        grad_w = scatter_rows(idx, grad_out, u_c, n_rows, layout) if ctx.needs_input_grad[0] else None
        grad_u = _decode(grad_out, idx, weight) if ctx.needs_input_grad[2] else None
        grad_shift = None
        if ctx.needs_input_grad[3]:  # −Σ_b grad_u[b] = −Σ_i (Σ_{idx = i} grad_out) weight[i]: O(B·k + K·N), no [B, N]
            grad_shift = -grad_u.sum(0) if grad_u is not None else -(layout.latent_sums(grad_out) @ weight)
        return grad_w, None, grad_u, grad_shift, None, None


def rows_dot(weight: torch.Tensor, idx: torch.Tensor, u: torch.Tensor,
             layout: LatentMajor | None = None) -> torch.Tensor:
    """Return weight[idx[b, j]] · u[b] for every (b, j) — the adjoint of ``sparse_decode`` — with a sparse backward."""
    return _RowsDot.apply(weight, idx, u, None, None, layout)


def gather_preact(x: torch.Tensor, W_enc: torch.Tensor, pre_at_idx: torch.Tensor, idx: torch.Tensor,
                  shift: torch.Tensor | None = None, layout: LatentMajor | None = None) -> torch.Tensor:
    """Selected pre-activations ((x − shift) W_encᵀ)[b, idx[b, j]] with a sparse backward.

    ``pre_at_idx`` must equal that product gathered at idx, already computed without grad while the latents
    were selected (it is returned as the value, not recomputed); gradients flow to x, shift and W_enc only
    through the selected latents, costing O(B·k·N) instead of O(B·K·N). ``shift`` (the SAE's b_dec, [N]) gets
    its gradient straight from per-latent sums, without the [B, N] gradient of x − shift unless x needs one.
    """
    return _RowsDot.apply(W_enc, idx, x, shift, pre_at_idx, layout)


class _ColumnsPreact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, cols, x, shift, values):
        ctx.save_for_backward(weight, cols, x if shift is None else x - shift)
        return values

    @staticmethod
    def backward(ctx, grad_out):
        weight, cols, x_c = ctx.saved_tensors
        w_cols = weight.index_select(0, cols)
        grad_w = None
        if ctx.needs_input_grad[0]:  # cols are distinct: each row of the gradient is written once
            grad_w = torch.zeros_like(weight).index_copy_(0, cols, grad_out.T @ x_c)
        grad_x = grad_out @ w_cols if ctx.needs_input_grad[2] else None
        grad_shift = None
        if ctx.needs_input_grad[3]:  # −Σ_b grad_x[b], from the column sums: a [n_cols] × [n_cols, N] product
            grad_shift = -grad_x.sum(0) if grad_x is not None else -(grad_out.sum(0) @ w_cols)
        return grad_w, None, grad_x, grad_shift, None


def columns_preact(x: torch.Tensor, weight: torch.Tensor, cols: torch.Tensor, pre_at_cols: torch.Tensor,
                   shift: torch.Tensor | None = None) -> torch.Tensor:
    """Dense pre-activations ((x − shift) weightᵀ)[:, cols] for distinct ``cols``, given their value.

    The dense counterpart of ``gather_preact`` for AuxK over a few hundred dead latents: ``pre_at_cols``
    [B, len(cols)] is the selection's product read at those columns, returned as the value; the backward
    is dense over the columns (BLAS), and ``shift``'s gradient comes from column sums, so of the three
    products that autograd through ``(x − shift) @ weight[cols].T`` would cost, only the weight gradient's
    remains (the forward one was done by the selection, and x's is skipped unless x needs a gradient).
    """
    return _ColumnsPreact.apply(weight, cols, x, shift, pre_at_cols)


class _MultistepValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, base, idx, S):
        batch, n_steps, k = idx.shape
        layout = None
        if n_steps == 1:
            blocks = base.new_empty(0, batch, k, k)
        elif kernels.multistep_supports(S):  # gathered one row of S at a time (see isae.core.kernels)
            layout = kernels.row_layout(idx, S.shape[0])
            blocks = kernels.multistep_blocks(idx, S, layout)
        else:
            flat = _block_positions(idx, S.shape[1], S.numel())
            blocks = S.reshape(-1).index_select(0, flat.view(-1)).view(n_steps - 1, batch, k, k)
        vals = [base[:, 0]]
        for t in range(1, n_steps):  # z⁽ᵗ⁾ = base_t + z⁽ᵗ⁻¹⁾ · block, block[i, j] = S[idx[b,t-1,i], idx[b,t,j]]
            vals.append(base[:, t] + torch.bmm(vals[-1][:, None, :], blocks[t - 1])[:, 0])
        ctx.save_for_backward(idx, blocks, *vals[:-1])
        ctx.layout, ctx.S_shape = layout, S.shape
        return vals[-1]

    @staticmethod
    def backward(ctx, grad_out):
        idx, blocks, *prev_vals = ctx.saved_tensors
        n = len(prev_vals)
        g = grad_out.contiguous()
        grads = [g]  # upstream gradient of z⁽ᵗ⁾ at idx[:, t], for t = T − 1 … 0
        for t in range(n, 0, -1):  # step t read z⁽ᵗ⁻¹⁾ through blocks[t - 1]
            g = torch.bmm(blocks[t - 1], g[:, :, None])[..., 0]
            grads.append(g)
        grads = grads[::-1]
        grad_base = torch.stack(grads, 1) if ctx.needs_input_grad[0] else None
        grad_S = None
        if ctx.needs_input_grad[2] and n > 0:
            prev, up = torch.stack(prev_vals), torch.stack(grads[1:])  # [T − 1, B, k] each
            if ctx.layout is not None:
                grad_S = kernels.multistep_grad_S(idx, prev, up, ctx.layout)
            else:  # every step's k × k outer products summed by one bincount (accumulates with atomics on a GPU)
                flat = _block_positions(idx, ctx.S_shape[1], ctx.S_shape.numel())  # rebuilt, not kept: B·T·k² ints
                outer = prev[:, :, :, None] * up[:, :, None, :]
                grad_S = torch.bincount(flat.view(-1), weights=outer.view(-1), minlength=ctx.S_shape.numel())
                grad_S = grad_S.to(grad_out.dtype).view(ctx.S_shape)
        return grad_base, None, grad_S


def _block_positions(idx: torch.Tensor, n: int, numel: int) -> torch.Tensor:
    """[T − 1, B, k, k] flat positions idx[b, t − 1, i] · n + idx[b, t, j] of every step's k × k block of S."""
    batch, n_steps, k = idx.shape
    index_dtype = _index_dtype(numel)
    idx_n = idx.to(index_dtype)
    flat = torch.empty(max(n_steps - 1, 0), batch, k, k, dtype=index_dtype, device=idx.device)
    for t in range(1, n_steps):
        torch.add(idx_n[:, t - 1, :, None] * n, idx_n[:, t, None, :], out=flat[t - 1])
    return flat


def multistep_values(base: torch.Tensor, idx: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Final code values of iSAE-ME's multistep encoder, given its discrete choices.

    ``base`` [B, T, k]: each step's encoder values (pre-activation at that step's active latents);
    ``idx`` [B, T, k]: each step's active latents. Returns z⁽ᵀ⁾ at idx[:, T-1], where
    z⁽¹⁾ = base[:, 0] and z⁽ᵗ⁾[b, j] = base[b, t, j] + Σ_i z⁽ᵗ⁻¹⁾[b, i] · S[idx[b, t-1, i], idx[b, t, j]]: the
    lateral input (z⁽ᵗ⁻¹⁾ S) read only where step t is active. Each step gathers a k × k block of S per input
    (B·k² entries) instead of forming the dense [B, K] product, and the backward adds every step's outer
    products into S's gradient at once (``kernels.multistep_grad_S`` on the CPU, one row of S per thread at a
    time): no [B, K] tensor is formed, and S's gradient is built once.
    """
    return _MultistepValues.apply(base, idx, S)


def topk_indices(key: torch.Tensor, k: int, sorted: bool = True, magnitude: bool = False) -> torch.Tensor:  # noqa: A002
    """Indices of the k largest entries of each row of ``key`` [B, K] — ``key.topk(k, sorted=sorted).indices`` —
    or, with ``magnitude``, of |key| (AbsTopK's ranking).

    On the CPU (float32/float64, K a multiple of ``kernels.GROUP`` and k ≤ K / (4 · GROUP)) this is the exact
    numba kernel in ``isae.core.kernels`` (several times faster than ``torch.topk`` there).
    Elsewhere (a GPU, other shapes and dtypes) it is ``torch.topk``. Tied values may be picked in a different
    order than ``torch.topk`` picks them. ``sorted=False``: the k indices in no particular order (cheaper).
    """
    if kernels.topk_supports(key, k):
        return kernels.topk_indices_cpu(key, k, sorted=sorted, magnitude=magnitude)
    return (key.abs() if magnitude else key).topk(k, dim=1, sorted=sorted).indices
