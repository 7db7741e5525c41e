"""``benchmarks/bench_training.py`` runs end to end at tiny sizes and reports consistent figures.

The benchmarks are not part of the library, but their numbers go into the README, so the training one is run
here on a problem small enough for CI: the fast and the naive path must reach the same loss after the same
steps (no dead latents, so no AuxK; TopK and AbsTopK have no aRIP term, so both paths optimise the same loss),
and every reported time and ratio must be positive and consistent with the others.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_training():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_training
        yield bench_training
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_bench_training_fast_and_naive_paths_reach_the_same_loss(bench_training, capsys):
    df = bench_training.main(["--d-in", "24", "--d-sae", "96", "--k", "4", "--batch", "64", "--steps", "2",
                              "--warmup", "1", "--models", "topk", "abstopk", "--dead-fracs", "0",
                              "--no-bf16-selection", "--device", "cpu", "--matmul-seconds", "0.01"])
    assert list(df["model"]) == ["TopK", "AbsTopK"]
    assert df["fast_loss"].tolist() == pytest.approx(df["ref_loss"].tolist(), rel=1e-4)
    assert (df[["fast_ms_step", "ref_ms_step", "speedup", "fast_roofline_frac"]] > 0).all().all()
    assert df["speedup"].tolist() == pytest.approx((df["ref_ms_step"] / df["fast_ms_step"]).tolist())
    assert "TopK" in capsys.readouterr().out


def test_bench_training_refuses_compile_without_enough_warmup(bench_training):
    with pytest.raises(SystemExit):
        bench_training.main(["--compile", "--warmup", "1"])


def test_bench_training_runs_every_model_through_torch_compile(bench_training):
    # --compile is the option a GPU session times. The numba kernels and the sparse CSR
    # products cannot be traced, so they must run eagerly inside the compiled forward instead of failing it.
    # d_sae = 512, k = 8: wide enough for the numba top-k kernel (2k = 16 for the aRIP support) to be used.
    df = bench_training.main(["--d-in", "32", "--d-sae", "512", "--k", "8", "--batch", "64", "--steps", "1",
                              "--warmup", "2", "--compile", "--dead-fracs", "0", "0.1", "--no-bf16-selection",
                              "--device", "cpu", "--matmul-seconds", "0.01"])
    assert sorted(set(df["model"])) == ["AbsTopK", "TopK", "iSAE", "iSAE-ME"]
    assert (df["fast_ms_step"] > 0).all()
    healthy = df[(df["dead_frac"] == 0) & df["model"].isin(["TopK", "AbsTopK"])]
    assert healthy["fast_loss"].tolist() == pytest.approx(healthy["ref_loss"].tolist(), rel=1e-4)
