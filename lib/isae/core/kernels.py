"""The CPU kernels compiled with numba, each where torch has no fast enough building block.

All run in parallel over torch's thread count, give results that do not depend on the number of threads, and
are compiled on first use and then cached on disk by numba. ``benchmarks/bench_training.py`` times whole
training steps.

**Top-k selection** (``topk_indices_cpu``, behind ``sparse_ops.topk_indices``). After the encoder product,
picking the k largest of K pre-activations per input was the largest remaining cost of a TopK training step,
and torch's CPU topk partially sorts a copy of each row. This kernel reads each row once and sorts nothing.

The method (exact for any threshold; the threshold only decides the speed):

1. Group maxima: entry i of a row belongs to group i mod (K / group); one vectorised max per row.
2. A threshold tau ≤ the row's k-th largest entry: if at least k group maxima reach tau, at least k entries do.
   tau is carried over from the previous row of the same thread (rows of a batch are alike); when fewer than
   k group maxima reach it, or more than 2·(k + slack), it is re-estimated as the (k + slack)-th largest
   group maximum of this row (a quickselect), "slack" = k/2 (our choice: the fastest of k/4, k/2 and k).
3. Every entry ≥ tau of a group whose maximum reaches tau is a candidate (typically 1–3 k of them); the row's
   k largest are all among them. A quickselect over the candidates gives the k-th largest value v; the
   result is every candidate > v, then candidates = v in scan order until there are k.

The result depends only on the row (not on tau, the thread count or the row's neighbours), so it is
deterministic. Ties at the k-th value are broken by position in the scan (group, then member), which may
differ from ``torch.topk``'s choice. Rows with NaN are left to ``torch.topk`` (see ``topk_indices_cpu``).

**iSAE-ME's k × k blocks of S** (``multistep_blocks`` and ``multistep_grad_S``, behind
``sparse_ops.multistep_values``). Every input and encoder step t reads a k × k block of S at random rows and
columns, S[idx[b, t − 1, i], idx[b, t, j]], and its backward adds a k × k outer product into S's gradient at
the same places: B·(T − 1)·k² = 13M entries of a 64 MiB matrix at the paper's sizes. Both kernels group the
entries by row of S (``row_layout``: one stable argsort of B·(T − 1)·k row indices, shared by the forward and
the backward) and let each thread own whole rows, so every read and update lands in a 16 KiB row held in
cache, and no two threads write the same place. This is much faster than index_select over flat positions
(forward) or forming the outer products and summing them with ``torch.bincount`` (backward), with the same
sums in the same order.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import njit, prange

#: Entries per group in step 1 (our choice: fastest of 8 and 16 at K = 4096, k = 40 and 80).
GROUP = 8


@njit(inline="always")
def _kth_largest(a, n, kk):
    """The kk-th largest (1-based) of a[:n], reordering a[:n] in place (Hoare quickselect)."""
    lo, hi, target = 0, n - 1, kk - 1
    while lo < hi:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]  # median-of-three pivot
        if x < y:
            x, y = y, x
        if y < z:
            y = z if z < x else x
        i, j = lo, hi
        while i <= j:
            while a[i] > y:
                i += 1
            while a[j] < y:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[lo]


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _topk_rows(key, k, group, slack, n_chunks, magnitude, out, failed):
    """out[b] = the k largest entries of key[b] (steps 1–3 above); failed[chunk] = rows of that chunk with NaN."""
    batch, width = key.shape
    n_groups = width // group
    per_chunk = (batch + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):  # one run of consecutive rows per thread, which carries tau along
        gmax = np.empty_like(key[0, :n_groups])
        scratch = np.empty_like(gmax)
        chosen = np.empty(n_groups, np.int64)
        cand = np.empty_like(key[0])
        cand_copy = np.empty_like(cand)
        cand_idx = np.empty(width, np.int64)
        tau = -np.inf
        n_failed = 0
        for b in range(chunk * per_chunk, min(batch, (chunk + 1) * per_chunk)):
            row = key[b]
            has_nan = False
            for i in range(width):
                has_nan |= row[i] != row[i]
            if has_nan:  # leave the row to torch.topk, which ranks NaN highest
                n_failed += 1
                continue
            if magnitude:  # rank by |key|, without a pass that writes |key| out
                np.abs(row[:n_groups], gmax)
                for s in range(1, group):
                    np.abs(row[s * n_groups:(s + 1) * n_groups], scratch)
                    np.maximum(gmax, scratch, gmax)
            else:
                gmax[:] = row[:n_groups]
                for s in range(1, group):
                    np.maximum(gmax, row[s * n_groups:(s + 1) * n_groups], gmax)
            n_sel = 0
            for j in range(n_groups):  # branch-free compaction of the groups whose maximum reaches tau
                chosen[n_sel] = j
                n_sel += gmax[j] >= tau
            if n_sel < k or n_sel > 2 * (k + slack):
                if n_sel < k:  # tau too high: estimate from every group
                    scratch[:] = gmax
                    tau = _kth_largest(scratch, n_groups, k + slack)
                else:  # tau too low: estimate from the groups that reached it
                    for q in range(n_sel):
                        scratch[q] = gmax[chosen[q]]
                    tau = _kth_largest(scratch, n_sel, k + slack)
                n_sel = 0
                for j in range(n_groups):
                    chosen[n_sel] = j
                    n_sel += gmax[j] >= tau
            n_cand = 0
            for q in range(n_sel):
                j = chosen[q]
                for s in range(group):
                    v = abs(row[j + s * n_groups]) if magnitude else row[j + s * n_groups]
                    cand[n_cand] = v
                    cand_idx[n_cand] = j + s * n_groups
                    n_cand += v >= tau
            cand_copy[:n_cand] = cand[:n_cand]
            v_k = _kth_largest(cand_copy, n_cand, k)
            n_out = 0
            for i in range(n_cand):
                if cand[i] > v_k:
                    out[b, n_out] = cand_idx[i]
                    n_out += 1
            for i in range(n_cand):
                if n_out == k:
                    break
                if cand[i] == v_k:
                    out[b, n_out] = cand_idx[i]
                    n_out += 1
        failed[chunk] = n_failed


def topk_supports(key: torch.Tensor, k: int, group: int = GROUP) -> bool:
    """Whether ``topk_indices_cpu`` handles this input (else use ``torch.topk``)."""
    return (key.device.type == "cpu" and key.dtype in (torch.float32, torch.float64) and key.dim() == 2
            and key.shape[0] > 0 and k >= 1 and key.shape[1] % group == 0 and 4 * k * group <= key.shape[1])


def _use_torch_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@torch.compiler.disable  # numba's dispatcher cannot be traced: torch.compile runs this eagerly
def topk_indices_cpu(key: torch.Tensor, k: int, sorted: bool = True, magnitude: bool = False,  # noqa: A002
                     group: int = GROUP) -> torch.Tensor:
    """Indices [B, k] of the k largest entries of each row of ``key`` [B, K], or of |key| with ``magnitude``
    (without writing |key| out first); ``topk_supports`` must hold."""
    _use_torch_threads()
    key = key.detach().contiguous()
    out = torch.empty(key.shape[0], k, dtype=torch.long)
    n_chunks = numba.get_num_threads()
    failed = np.zeros(n_chunks, np.int64)
    _topk_rows(key.numpy(), k, group, k // 2, n_chunks, magnitude, out.numpy(), failed)
    if failed.any():  # NaN in some row: torch.topk ranks NaN highest; keep its semantics
        return (key.abs() if magnitude else key).topk(k, dim=1, sorted=sorted).indices
    if sorted:
        chosen = key.gather(1, out)
        order = (chosen.abs() if magnitude else chosen).argsort(dim=1, descending=True, stable=True)
        out = out.gather(1, order)
    return out


@njit(inline="always")
def _entry(e, batch, k):
    """(b, t, i) of entry e = ((t − 1)·B + b)·k + i of a ``RowLayout``."""
    bt = e // k
    return bt % batch, bt // batch + 1, e % k


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _blocks_by_row(order, row_start, idx, S, blocks):
    """blocks[t − 1, b, i, j] = S[idx[b, t − 1, i], idx[b, t, j]], one row of S per thread at a time."""
    batch, _, k = idx.shape
    for r in prange(S.shape[0]):
        row = S[r]
        for q in range(row_start[r], row_start[r + 1]):
            b, t, i = _entry(order[q], batch, k)
            block_row = blocks[t - 1, b, i]
            for j in range(k):
                block_row[j] = row[idx[b, t, j]]


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _grad_S_by_row(order, row_start, idx, prev_vals, grads, out):
    """out[r] = Σ over the entries e of row r of z_e · g⁽ᵗ⁾[b] scattered at step t's latents."""
    batch, _, k = idx.shape
    for r in prange(out.shape[0]):
        row = out[r]
        row[:] = 0.0
        for q in range(row_start[r], row_start[r + 1]):
            b, t, i = _entry(order[q], batch, k)
            z = prev_vals[t - 1, b, i]
            for j in range(k):
                row[idx[b, t, j]] += z * grads[t - 1, b, j]


def multistep_supports(S: torch.Tensor) -> bool:
    """Whether the multistep kernels handle this S (else ``sparse_ops`` uses index_select and torch.bincount)."""
    return S.device.type == "cpu" and S.dtype in (torch.float32, torch.float64)


class RowLayout(NamedTuple):
    """The entries (t − 1, b, i) of iSAE-ME's steps t = 1 … T − 1, entry e = ((t − 1)·B + b)·k + i, grouped by
    the row idx[b, t − 1, i] of S they read: order[row_start[r]:row_start[r + 1]] are row r's (stable order)."""

    order: torch.Tensor
    row_start: torch.Tensor


def row_layout(idx: torch.Tensor, n: int) -> RowLayout:
    """``RowLayout`` of idx [B, T, k] for an n × n S."""
    rows = idx[:, :-1].permute(1, 0, 2).reshape(-1)
    row_start = torch.zeros(n + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=row_start[1:])
    return RowLayout(rows.argsort(stable=True), row_start)


@torch.compiler.disable  # numba's dispatcher cannot be traced: torch.compile runs this eagerly
def multistep_blocks(idx: torch.Tensor, S: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """[T − 1, B, k, k] blocks with blocks[t − 1, b, i, j] = S[idx[b, t − 1, i], idx[b, t, j]] (no grad)."""
    batch, n_steps, k = idx.shape
    blocks = torch.empty(n_steps - 1, batch, k, k, dtype=S.dtype)
    _use_torch_threads()
    _blocks_by_row(layout.order.numpy(), layout.row_start.numpy(), idx.contiguous().numpy(),
                   S.detach().contiguous().numpy(), blocks.numpy())
    return blocks


@torch.compiler.disable  # numba's dispatcher cannot be traced: torch.compile runs this eagerly
def multistep_grad_S(idx: torch.Tensor, prev_vals: torch.Tensor, grads: torch.Tensor,
                     layout: RowLayout) -> torch.Tensor:
    """S's gradient in iSAE-ME's multistep encoder: Σ_t Σ_b z⁽ᵗ⁻¹⁾[b] ⊗ g⁽ᵗ⁾[b], each at its step's latents.

    ``idx`` [B, T, k]: each step's active latents; ``prev_vals`` [T − 1, B, k]: z⁽ᵗ⁻¹⁾ at idx[:, t − 1];
    ``grads`` [T − 1, B, k]: the upstream gradient of z⁽ᵗ⁾ at idx[:, t], for t = 1 … T − 1.
    """
    n = layout.row_start.shape[0] - 1
    out = torch.empty(n, n, dtype=grads.dtype)
    _use_torch_threads()
    _grad_S_by_row(layout.order.numpy(), layout.row_start.numpy(), idx.contiguous().numpy(),
                   prev_vals.contiguous().numpy(), grads.contiguous().numpy(), out.numpy())
    return out
