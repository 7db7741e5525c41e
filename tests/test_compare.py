"""The identifiability report (``isae.report.compare`` and ``python -m isae.compare``): metrics and bad input."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import D_IN, D_SAE, make_sae, unit_rows
from safetensors.torch import save_file

import isae.report.compare as compare
from isae.compare import main as cli
from isae.core.io import save_sae
from isae.data.cache import build_cache
from isae.eval.metrics import pair_metrics
from isae.report.compare import CompareInputError, check_inputs, compare_saes, preprocess


def _perturbed(architecture: str, seed: int, **kw):
    sae = make_sae(architecture, seed=seed, **kw)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        sae.W_enc.add_(0.05 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_dec.add_(0.01 * torch.randn(D_IN, generator=g))
    return sae


@pytest.fixture
def folders(tmp_path: Path) -> list[Path]:
    """Three saved TopK SAEs (seeds 0, 1, 2)."""
    out = []
    for s in range(3):
        out.append(save_sae(_perturbed("topk", s), tmp_path / f"topk_seed{s}", seed=s))
    return out


@pytest.fixture
def acts(tmp_path: Path) -> Path:
    x = torch.randn(300, D_IN, generator=torch.Generator().manual_seed(7)) * 3.0
    np.save(tmp_path / "acts.npy", x.numpy())
    return tmp_path / "acts.npy"


def test_report_has_every_pair_and_the_random_init_floor_and_writes_its_files(folders, acts, tmp_path: Path):
    out = tmp_path / "report"
    res = compare_saes(folders, acts, oracle=True, out=out, n_inputs=200, n_supports=64, n_boot=20, progress=False)
    trained = res.pairs[res.pairs["trained"]]
    assert len(trained) == 3 and len(res.pairs) == 4  # C(3, 2) pairs + one random-init pair
    assert {(r.a, r.b) for r in trained.itertuples()} == {(f"topk_seed{i}", f"topk_seed{j}")
                                                           for i, j in combinations(range(3), 2)}
    assert set(compare.PAIR_METRICS) <= set(res.pairs.columns)
    row = res.summary.set_index("group").loc["trained"]
    for m in ("dcs", "sae_iou", "oracle_iou"):  # mean ± sd over pairs, computed independently here
        assert row[m] == pytest.approx(float(np.mean(trained[m])))
        assert row[f"{m}_sd"] == pytest.approx(float(np.std(trained[m], ddof=1)))
    assert row["n_pairs"] == 3 and row["n_saes"] == 3
    assert res.summary.set_index("group").loc["random-init", "n_pairs"] == 1
    assert len(res.saes) == 5 and {"r_s", "delta_q50", "delta_q90_lo", "mse"} <= set(res.saes.columns)
    assert res.normalize == "unit" and res.n_inputs == 200
    for name in ("saes.csv", "pairs.csv", "summary.csv", "matched_cosines.csv", "matched_cosines.png", "report.md"):
        assert (out / name).exists(), name
    assert (out / "pairs.csv.provenance.json").exists() and "dcs" in (out / "report.md").read_text()
    # the matched |cos| of each pair averages to its DCS
    for r in res.pairs.itertuples():
        cos = res.matched_cos[res.matched_cos["pair"] == f"{r.a} vs {r.b}"]["abs_cos"]
        assert len(cos) == D_SAE and cos.mean() == pytest.approx(r.dcs)


def test_pair_metrics_with_the_matched_cosines_are_the_same_metrics(x_unit):
    a, b = _perturbed("abstopk", 0), _perturbed("abstopk", 1)
    ref = pair_metrics(a, b, x_unit, oracle=True)
    ours, abs_cos = pair_metrics(a, b, x_unit, oracle=True, codes={}, with_matched_cos=True)
    assert ours == ref
    assert len(abs_cos) == D_SAE and abs_cos.mean() == pytest.approx(ref["dcs"])


def test_the_chunked_oracle_equals_the_projects_oracle(x_unit):
    from isae.eval.metrics import oracle_codes

    sae = _perturbed("topk", 3)
    torch.testing.assert_close(compare._oracle_codes(sae, x_unit, progress=False, label="t", chunk=5),
                               oracle_codes(sae, x_unit))


def test_identical_saes_are_perfectly_consistent(folders, acts):
    res = compare_saes([folders[0], folders[0]], acts, n_inputs=100, n_supports=32, n_boot=10, progress=False)
    pair = res.pairs[res.pairs["trained"]].iloc[0]
    assert pair["dcs"] == pytest.approx(1.0) and pair["sae_iou"] == pytest.approx(1.0) and pair["sae_l2"] == 0


def test_preprocessing_options():
    x = torch.randn(50, D_IN, generator=torch.Generator().manual_seed(0)) * 4 + 1
    torch.testing.assert_close(preprocess(x, "unit").norm(dim=1), torch.ones(50))
    c = preprocess(x, "center-unit")
    torch.testing.assert_close(c.mean(dim=1), torch.zeros(50), atol=1e-6, rtol=0)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(50))
    assert float(preprocess(x, "expected-norm").norm(dim=1).mean()) == pytest.approx(math.sqrt(D_IN), rel=1e-5)
    assert preprocess(x, "none") is x


def test_auto_preprocessing_follows_each_folders_training(tmp_path: Path, acts):
    a = save_sae(_perturbed("topk", 0), tmp_path / "a", recipe={"center_inputs": True})
    b = save_sae(_perturbed("topk", 1), tmp_path / "b", recipe={"center_inputs": True})
    assert check_inputs([a, b], acts).normalize == "center-unit"
    c = save_sae(_perturbed("topk", 2), tmp_path / "c")
    with pytest.raises(CompareInputError, match=r"normalize='auto'.*expect different.*--normalize"):
        check_inputs([a, c], acts)
    assert check_inputs([a, c], acts, normalize="unit").normalize == "unit"


def test_saelens_folders_are_compared_on_raw_activations_by_default(tmp_path: Path, acts):
    dirs = []
    for s in range(2):
        sae = _perturbed("topk", s)
        d = tmp_path / f"saelens{s}"
        d.mkdir()
        save_file({"W_enc": sae.W_enc.detach().T.contiguous(), "W_dec": sae.W_dec.detach().contiguous(),
                   "b_enc": torch.zeros(D_SAE), "b_dec": sae.b_dec.detach().contiguous()},
                  str(d / "sae_weights.safetensors"))
        (d / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
                                                "apply_b_dec_to_input": True, "normalize_activations": "none",
                                                "reshape_activations": "none", "metadata": {}, "k": 4,
                                                "rescale_acts_by_decoder_norm": False, "architecture": "topk"}))
        dirs.append(d)
    assert check_inputs(dirs, acts).normalize == "none"


def test_an_activation_cache_folder_and_a_safetensors_matrix_are_accepted(folders, tmp_path: Path):
    x = torch.randn(120, D_IN, generator=torch.Generator().manual_seed(1))
    build_cache(tmp_path / "cache", {"dtype": "float32", "d_in": D_IN, "what": "test"}, 3,
                lambda i: x[40 * i : 40 * (i + 1)].numpy(), progress=False)
    got = check_inputs(folders[:2], tmp_path / "cache", n_inputs=1000)
    assert torch.equal(got.x, x)  # every row, in order, across the shards
    got = check_inputs(folders[:2], tmp_path / "cache", n_inputs=30, seed=3)
    rows = {tuple(r.tolist()) for r in x}
    assert got.x.shape == (30, D_IN) and all(tuple(r.tolist()) in rows for r in got.x)
    save_file({"acts": x}, str(tmp_path / "one.safetensors"))
    assert torch.equal(check_inputs(folders[:2], tmp_path / "one.safetensors", n_inputs=1000).x, x)
    save_file({"acts": x, "labels": torch.zeros(120)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CompareInputError, match=r"holds tensors \['acts', 'labels'\].*--activations-key"):
        check_inputs(folders[:2], tmp_path / "two.safetensors")
    assert check_inputs(folders[:2], tmp_path / "two.safetensors", activations_key="acts").x.shape == (120, D_IN)


# --- bad input: a clear error before any compute, naming the parameter and the fix ------------------------------

@pytest.fixture
def no_compute(monkeypatch):
    """Any compute step fails loudly, so a test passes only when the check came first."""
    def boom(*args, **kwargs):
        raise AssertionError("compute ran before the inputs were checked")

    for name in ("sae_codes", "single_metrics", "arip_diagnostic", "_floor", "omp"):
        monkeypatch.setattr(compare, name, boom)


def test_fewer_than_two_saes_is_refused(folders, acts, no_compute):
    with pytest.raises(CompareInputError, match=r"sae_dirs: got 1 SAE folder.*two or more"):
        compare_saes(folders[:1], acts)


def test_a_missing_sae_folder_is_refused(folders, acts, tmp_path: Path, no_compute):
    with pytest.raises(CompareInputError, match=r"sae_dirs: '.*nope' does not exist"):
        compare_saes([folders[0], tmp_path / "nope"], acts)


def test_a_folder_without_weights_is_refused(folders, acts, no_compute):
    (folders[1] / "sae_weights.safetensors").unlink()
    with pytest.raises(CompareInputError, match=r"sae_dirs: .*sae_weights\.safetensors is missing"):
        compare_saes(folders[:2], acts)


def test_a_missing_activations_file_is_refused(folders, tmp_path: Path, no_compute):
    with pytest.raises(CompareInputError, match=r"activations='.*missing\.npy' does not exist"):
        compare_saes(folders[:2], tmp_path / "missing.npy")


def test_mismatched_d_in_is_refused(folders, acts, tmp_path: Path, no_compute):
    other = save_sae(make_sae("topk", d_in=D_IN + 1), tmp_path / "wide")
    with pytest.raises(CompareInputError, match=rf"wide has d_in={D_IN + 1} but topk_seed0 has d_in={D_IN}"):
        compare_saes([folders[0], other], acts)


def test_mismatched_d_sae_is_refused(folders, acts, tmp_path: Path, no_compute):
    other = save_sae(make_sae("topk", d_sae=D_SAE * 2), tmp_path / "big")
    with pytest.raises(CompareInputError, match=rf"big has d_sae={2 * D_SAE} but .* d_sae={D_SAE}.*same shape"):
        compare_saes([folders[0], other], acts)


def test_activations_of_the_wrong_width_are_refused(folders, tmp_path: Path, no_compute):
    np.save(tmp_path / "narrow.npy", np.zeros((10, D_IN - 2), dtype=np.float32))
    with pytest.raises(CompareInputError, match=rf"width {D_IN - 2} but the SAEs have d_in={D_IN}.*layer"):
        compare_saes(folders[:2], tmp_path / "narrow.npy")


def test_nan_weights_are_refused(folders, acts, tmp_path: Path, no_compute):
    sae = _perturbed("topk", 5)
    with torch.no_grad():
        sae.W_dec[3, 2] = float("nan")
    broken = save_sae(sae, tmp_path / "broken")
    with pytest.raises(CompareInputError, match=r"sae_dirs: '.*broken' has non-finite values .* in W_dec"):
        compare_saes([folders[0], broken], acts)


def test_nan_activations_are_refused(folders, tmp_path: Path, no_compute):
    x = np.ones((10, D_IN), dtype=np.float32)
    x[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(CompareInputError, match=r"activations=.*non-finite"):
        compare_saes(folders[:2], tmp_path / "nan.npy")


def test_an_unknown_normalization_is_refused(folders, acts, no_compute):
    with pytest.raises(CompareInputError, match=r"normalize='l2'; use one of"):
        compare_saes(folders[:2], acts, normalize="l2")


def test_the_cli_prints_the_error_and_exits_2(folders, tmp_path: Path, capsys):
    np.save(tmp_path / "narrow.npy", np.zeros((10, 3), dtype=np.float32))
    assert cli([str(folders[0]), str(folders[1]), "--activations", str(tmp_path / "narrow.npy")]) == 2
    assert "error: activations=" in capsys.readouterr().err


def test_the_cli_writes_the_report(folders, acts, tmp_path: Path, capsys):
    out = tmp_path / "cli"
    assert cli([*map(str, folders[:2]), "--activations", str(acts), "--out", str(out), "--n-inputs", "100",
                "--n-supports", "32", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "random-init floor" in text and "dcs" in text and (out / "report.md").exists()


def test_unit_rows_helper_matches_preprocess(x_unit):
    torch.testing.assert_close(preprocess(x_unit * 5, "unit"), unit_rows(x_unit * 5))
