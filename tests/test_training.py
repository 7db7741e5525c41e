"""Training: loss goes down, determinism, one shared stream, exact resume, divergence, config checks, b_dec init."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_sae

from isae.core.models import SAE
from isae.data.synthetic import SyntheticConfig, SyntheticStream
from isae.train.trainer import Probe, TrainConfig, TrainingDiverged, geometric_median, train_many

D_IN, D_SAE, K = 16, 96, 3


def _stream(batch_size: int = 64, seed: int = 0) -> SyntheticStream:
    return SyntheticStream(SyntheticConfig(d_in=D_IN, n_atoms=32, k=K, seed=0), batch_size=batch_size, seed=seed)


def _cfg(**kw) -> TrainConfig:
    base = dict(n_steps=12, batch_size=64, lr=3e-3, geometric_median_samples=128, log_every=2,
                checkpoint_every=4, device="cpu", dead_after_tokens=2 * 64)  # short window: AuxK is exercised
    return TrainConfig(**(base | kw))


def _models() -> dict[str, SAE]:
    # TopK (AuxK), iSAE with the *noise* aRIP estimator (uses the per-model generator), iSAE-ME (S trained)
    return {"topk": make_sae("topk", d_sae=D_SAE, k=K, seed=1),
            "isae": make_sae("isae", d_sae=D_SAE, k=K, seed=2),
            "isae_me": make_sae("isae_me", d_sae=D_SAE, k=K, seed=3, n_steps=3)}


def _assert_same_params(a: dict[str, SAE], b: dict[str, SAE]) -> None:
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        for p in sa:
            assert torch.equal(sa[p], sb[p]), f"{name}.{p} differs"


class RecordingStream:
    """Wraps a stream; records the steps asked for; optionally raises or returns NaN at a chosen step."""

    def __init__(self, inner, raise_at: int | None = None, nan_at: int | None = None):
        self.inner, self.raise_at, self.nan_at = inner, raise_at, nan_at
        self.steps: list[int] = []
        self.steps_per_pass = inner.steps_per_pass

    @property
    def d_in(self) -> int:
        return self.inner.d_in

    def identity(self) -> dict:
        return self.inner.identity()

    def batch(self, step: int) -> torch.Tensor:
        self.steps.append(step)
        if step == self.raise_at:
            raise KeyboardInterrupt(f"simulated kill at step {step}")
        x = self.inner.batch(step)
        return torch.full_like(x, float("nan")) if step == self.nan_at else x


# --- learning and determinism -----------------------------------------------------------------------

@pytest.mark.parametrize("bf16_selection", [False, True])
def test_training_lowers_the_reconstruction_loss(bf16_selection):
    saes = _models()
    cfg = _cfg(n_steps=40, lr=1e-2, log_every=1, checkpoint_every=1000, bf16_selection=bf16_selection)
    log = train_many(saes, _stream(), cfg, progress=False)
    assert set(log.columns) >= {"model", "step", "loss", "mse", "l0", "dead_frac"}
    for name in saes:
        rows = log[log.model == name].sort_values("step")
        assert rows.step.tolist() == list(range(1, 41))
        first, last = rows.mse.iloc[0], rows.mse.iloc[-1]
        assert last < 0.8 * first, (name, first, last)
        assert (rows.l0 == K).all()


def test_atoms_stay_unit_norm_and_b_dec_starts_at_the_geometric_median():
    stream = _stream()
    cfg = _cfg(n_steps=1)
    saes = {"a": make_sae("abstopk", d_sae=D_SAE, k=K)}
    train_many(saes, stream, cfg, progress=False)
    torch.testing.assert_close(saes["a"].W_dec.norm(dim=1), torch.ones(D_SAE))
    median = geometric_median(torch.cat([stream.batch(0), stream.batch(1)]))
    # one Adam step moves b_dec by at most ~lr per coordinate
    assert (saes["a"].b_dec - median).abs().max() < 1.5 * cfg.lr


@pytest.mark.parametrize("bf16_selection", [False, True])
def test_same_seeds_give_identical_parameters_across_runs(bf16_selection):
    a, b = _models(), _models()
    log_a = train_many(a, _stream(), _cfg(bf16_selection=bf16_selection), progress=False)
    log_b = train_many(b, _stream(), _cfg(bf16_selection=bf16_selection), progress=False)
    _assert_same_params(a, b)
    pd.testing.assert_frame_equal(log_a, log_b)
    c = {"topk": make_sae("topk", d_sae=D_SAE, k=K, seed=99)}
    train_many(c, _stream(), _cfg(), progress=False)
    assert not torch.equal(c["topk"].W_dec, a["topk"].W_dec)


def test_models_trained_together_see_the_same_batches_in_order():
    stream = RecordingStream(_stream())
    cfg = _cfg(n_steps=6)
    saes = {"x": make_sae("topk", d_sae=D_SAE, k=K, seed=5), "y": make_sae("topk", d_sae=D_SAE, k=K, seed=5)}
    train_many(saes, stream, cfg, progress=False)
    # geometric-median sample (2 batches of 64 for 128 samples), then every step exactly once, in order
    assert stream.steps == [0, 1] + list(range(6))
    # two identical models (TopK draws no noise) trained on the same batches end identical
    _assert_same_params({"m": saes["x"]}, {"m": saes["y"]})
    # and equal to the same model trained alone on the same stream
    alone = {"x": make_sae("topk", d_sae=D_SAE, k=K, seed=5)}
    train_many(alone, _stream(), cfg, progress=False)
    _assert_same_params({"m": saes["x"]}, {"m": alone["x"]})


# --- the synthetic stream ---------------------------------------------------------------------------

def test_stream_batch_is_a_pure_function_of_step():
    s = _stream()
    b3 = s.batch(3)
    s.batch(7), s.batch(0)
    assert torch.equal(s.batch(3), b3)
    assert torch.equal(_stream().batch(3), b3)  # a fresh stream object gives the same data
    assert not torch.equal(s.batch(4), b3)
    assert not torch.equal(_stream(seed=1).batch(3), b3)
    torch.testing.assert_close(b3.norm(dim=1), torch.ones(64))


def test_held_out_data_differs_from_every_training_batch():
    s = _stream()
    held, codes = s.held_out(64)
    train = torch.cat([s.batch(i) for i in range(50)])
    # no held-out row equals any training row
    assert torch.cdist(held, train).min() > 1e-3
    assert torch.equal(s.held_out(64)[0], held)
    torch.testing.assert_close(codes @ s.dictionary, held)  # codes are rescaled with the input
    assert torch.equal((codes != 0).sum(1), torch.full((64,), K))


# --- checkpoints and resume -------------------------------------------------------------------------

def test_interrupted_run_resumes_to_the_same_parameters_as_an_uninterrupted_run(tmp_path: Path):
    cfg = _cfg(n_steps=12, checkpoint_every=4)
    reference = _models()
    log_ref = train_many(reference, _stream(), cfg, progress=False)
    assert (log_ref.dead_frac > 0).any()  # AuxK was active, so the dead counters must be restored too

    resumed = _models()
    killer = RecordingStream(_stream(), raise_at=6)
    with pytest.raises(KeyboardInterrupt):
        train_many(resumed, killer, cfg, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))

    fresh = _models()  # a new process: fresh objects, everything restored from the checkpoint
    recorder = RecordingStream(_stream())
    log = train_many(fresh, recorder, cfg, checkpoint_dir=tmp_path, progress=False)
    assert recorder.steps == list(range(4, 12))  # no geometric-median recomputation, starts at the checkpoint
    _assert_same_params(fresh, reference)
    pd.testing.assert_frame_equal(log, log_ref)


def _norm_probe(steps=(0, 4, 8, 12)) -> Probe:
    """A probe recording the decoder's Frobenius norm and b_dec's sum per model (changes with every step)."""
    return Probe(steps, lambda step, saes: [{"step": step, "model": n, "b_dec": float(s.b_dec.sum()),
                                             "w_enc": float(s.W_enc.norm())} for n, s in saes.items()])


def test_probe_sees_the_models_at_its_steps_and_survives_a_resume(tmp_path: Path):
    cfg = _cfg(n_steps=12, checkpoint_every=4)
    reference, probe_ref = _models(), _norm_probe()
    train_many(reference, _stream(), cfg, progress=False, probe=probe_ref)
    assert sorted({r["step"] for r in probe_ref.rows}) == [0, 4, 8, 12]
    final = {r["model"]: r["w_enc"] for r in probe_ref.rows if r["step"] == 12}
    assert final == {n: float(s.W_enc.norm()) for n, s in reference.items()}  # the models after the last step
    assert len({r["w_enc"] for r in probe_ref.rows if r["model"] == "topk"}) == 4  # training moved them
    unprobed = _models()
    train_many(unprobed, _stream(), cfg, progress=False)
    _assert_same_params(unprobed, reference)  # probing changes nothing in training

    # killed at step 6: the checkpoint (step 4) carries the probe rows of steps 0 and 4; the resumed run adds the rest
    with pytest.raises(KeyboardInterrupt):
        train_many(_models(), RecordingStream(_stream(), raise_at=6), cfg, checkpoint_dir=tmp_path, progress=False,
                   probe=_norm_probe())
    resumed = _norm_probe()
    train_many(_models(), _stream(), cfg, checkpoint_dir=tmp_path, progress=False, probe=resumed)
    assert resumed.rows == probe_ref.rows
    with pytest.raises(ValueError, match="different experiment"):  # other probe steps: another experiment
        train_many(_models(), _stream(), cfg, checkpoint_dir=tmp_path, progress=False, probe=_norm_probe((0, 12)))


def test_completed_checkpoint_is_reused_without_training(tmp_path: Path):
    cfg = _cfg(n_steps=4)
    first = _models()
    train_many(first, _stream(), cfg, checkpoint_dir=tmp_path, progress=False)
    again = _models()
    recorder = RecordingStream(_stream())
    train_many(again, recorder, cfg, checkpoint_dir=tmp_path, progress=False)
    assert recorder.steps == []
    _assert_same_params(again, first)


@pytest.mark.parametrize("change", ["lr", "n_steps", "model"])
def test_checkpoint_from_a_different_config_is_refused(tmp_path: Path, change):
    train_many(_models(), _stream(), _cfg(n_steps=4), checkpoint_dir=tmp_path, progress=False)
    cfg, saes = _cfg(n_steps=4), _models()
    if change == "lr":
        cfg = _cfg(n_steps=4, lr=1e-3)
    elif change == "n_steps":
        cfg = _cfg(n_steps=8)
    else:
        saes["topk"] = make_sae("topk", d_sae=D_SAE, k=K + 1, seed=1)
    before = {n: s.W_dec.detach().clone() for n, s in saes.items()}
    with pytest.raises(ValueError, match="different experiment"):
        train_many(saes, _stream(), cfg, checkpoint_dir=tmp_path, progress=False)
    for n, s in saes.items():
        assert torch.equal(s.W_dec, before[n])  # nothing was loaded into the models


def test_non_finite_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path: Path):
    cfg = _cfg(n_steps=8, checkpoint_every=3)
    saes = _models()
    with pytest.raises(TrainingDiverged, match="step 4"):
        train_many(saes, RecordingStream(_stream(), nan_at=4), cfg, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    for name, sd in state["models"].items():
        assert all(torch.isfinite(t).all() for t in sd.values()), name
    # the checkpoint equals a clean 3-step run (with the same TrainConfig, interrupted right after step 3)
    clean = _models()
    with pytest.raises(KeyboardInterrupt):
        train_many(clean, RecordingStream(_stream(), raise_at=3), cfg, progress=False)
    for name in clean:
        for p, t in clean[name].state_dict().items():
            assert torch.equal(state["models"][name][p], t), (name, p)


def test_non_finite_loss_without_checkpoint_dir_still_raises():
    with pytest.raises(TrainingDiverged, match="no checkpoint"):
        train_many(_models(), RecordingStream(_stream(), nan_at=2), _cfg(n_steps=4), progress=False)


# --- argument checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,param", [
    ({"n_steps": 0}, "n_steps"),
    ({"n_steps": -3}, "n_steps"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"log_every": 0}, "log_every"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
])
def test_bad_train_config_raises_value_error_naming_the_parameter(kwargs, param):
    with pytest.raises(ValueError, match=param):
        TrainConfig(**({"n_steps": 10} | kwargs))


def test_mismatched_d_in_raises_before_any_training():
    stream = RecordingStream(_stream())
    sae = make_sae("topk", d_in=D_IN + 4, d_sae=D_SAE, k=K)
    before = {n: p.detach().clone() for n, p in sae.state_dict().items()}
    with pytest.raises(ValueError, match=r"d_in=20.*d_in=16"):
        train_many({"bad": sae}, stream, _cfg(), progress=False)
    assert stream.steps == []
    for n, p in sae.state_dict().items():
        assert torch.equal(p, before[n])


def test_empty_model_dict_is_refused():
    with pytest.raises(ValueError, match="empty"):
        train_many({}, _stream(), _cfg(), progress=False)


def test_default_learning_rate_follows_sparsify_scaling():
    assert TrainConfig(n_steps=1).learning_rate(2**14) == pytest.approx(2e-4)
    assert TrainConfig(n_steps=1).learning_rate(2**12) == pytest.approx(4e-4)
    assert TrainConfig(n_steps=1, lr=1e-3).learning_rate(2**12) == 1e-3


# --- geometric median -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_geometric_median_matches_scipy_minimisation(seed):
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    x[:5] += 20.0  # outliers pull the mean but not the median
    xn = x.numpy()

    def objective(m: np.ndarray) -> float:
        return float(np.linalg.norm(xn - m, axis=1).sum())

    ref = minimize(objective, xn.mean(0), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000, "maxfev": 20_000}).x
    m = geometric_median(x).numpy()
    assert objective(m) <= objective(ref) + 1e-8
    np.testing.assert_allclose(m, ref, atol=1e-4)
    assert objective(m) < objective(xn.mean(0)) - 1.0  # and it is not the mean


def test_checkpoint_from_another_data_stream_or_seed_is_refused(tmp_path: Path):
    cfg = _cfg(n_steps=4)
    train_many(_models(), _stream(), cfg, checkpoint_dir=tmp_path, progress=False)
    other = _stream()
    other.seed += 1
    with pytest.raises(ValueError, match="different experiment"):
        train_many(_models(), other, cfg, checkpoint_dir=tmp_path, progress=False)
    reseeded = {n: SAE(s.cfg, seed=s.seed + 1) for n, s in _models().items()}
    with pytest.raises(ValueError, match="different experiment"):
        train_many(reseeded, _stream(), cfg, checkpoint_dir=tmp_path, progress=False)


def test_checkpoint_from_another_loss_weighting_is_refused(tmp_path: Path):
    cfg = _cfg(n_steps=4)
    train_many(_models(), _stream(), cfg, checkpoint_dir=tmp_path, progress=False)
    weighted = _models()
    for sae in weighted.values():
        sae.set_loss_weight(torch.linspace(0.5, 1.5, sae.cfg.d_in))
    with pytest.raises(ValueError, match="different experiment"):
        train_many(weighted, _stream(), cfg, checkpoint_dir=tmp_path, progress=False)
