"""Run identity includes the code: checkpoints and completed runs of other code are refused, naming the files;
provenance records the device that ran the work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_sae

from isae.core.io import save_sae
from isae.core.provenance import (
    ALL_CODE,
    EVALUATION_CODE,
    RESULTS_CODE,
    TRAINING_CODE,
    atomic_write_json,
    code_difference,
    code_digest,
    code_fingerprint,
    hash_sources,
    provenance,
)
from isae.data.synthetic import SyntheticConfig, SyntheticStream
from isae.experiments import executor
from isae.experiments.p2_toy import P2Toy
from isae.experiments.profiles import toy_profile
from isae.train import trainer
from isae.train.trainer import TrainConfig, train_many

D_IN, D_SAE, K = 16, 32, 3


def _train(ckpt: Path, kill_at: int | None = None, **kw):
    """A tiny TopK SAE trained with a checkpoint every 2 steps; ``kill_at``: interrupted at that step."""
    saes = {"topk": make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=K, seed=1)}
    stream = SyntheticStream(SyntheticConfig(d_in=D_IN, n_atoms=24, k=K, seed=0), batch_size=32, seed=0)
    if kill_at is not None:
        batch = stream.batch

        def killed(step: int) -> torch.Tensor:
            if step == kill_at:
                raise KeyboardInterrupt(f"simulated kill at step {step}")
            return batch(step)
        stream.batch = killed
    cfg = TrainConfig(**({"n_steps": 4, "batch_size": 32, "lr": 3e-3, "geometric_median_samples": 64,
                          "log_every": 2, "checkpoint_every": 2, "device": "cpu"} | kw))
    return train_many(saes, stream, cfg, checkpoint_dir=ckpt, progress=False)


def _other_code(changed: str, scope_of=code_fingerprint):
    """A fingerprint function whose code differs from this one in file ``changed``."""
    return lambda scope=ALL_CODE: {**scope_of(scope), changed: "0" * 12}


# --- the hashing ------------------------------------------------------------------------------------

def test_a_fingerprint_changes_with_a_file_and_names_it(tmp_path):
    for name, text in {"pkg/a.py": "x = 1\n", "pkg/sub/b.py": "y = 2\n", "other/c.py": "z = 3\n",
                       "pkg/notes.txt": "not code"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = hash_sources(tmp_path, ("pkg",))
    assert list(before) == ["pkg/a.py", "pkg/sub/b.py"] and all(len(h) == 12 for h in before.values())
    assert hash_sources(tmp_path, ("pkg",)) == before  # content-hashed: the same files give the same fingerprint

    (tmp_path / "pkg/sub/b.py").write_text("y = 3\n")
    (tmp_path / "pkg/d.py").write_text("")
    after = hash_sources(tmp_path, ("pkg",))
    assert after["pkg/sub/b.py"] != before["pkg/sub/b.py"] and after["pkg/a.py"] == before["pkg/a.py"]
    assert code_digest(after) != code_digest(before) and len(code_digest(after)) == 16
    assert code_difference(before, after) == "pkg/sub/b.py changed, pkg/d.py added"
    assert code_difference(after, before) == "pkg/sub/b.py changed, pkg/d.py removed"
    assert code_difference(None, after) == "from code before fingerprints"
    assert list(hash_sources(tmp_path, ("other/c.py", "pkg/sub"))) == ["other/c.py", "pkg/sub/b.py"]  # a file, a folder
    many = {f"f{i}.py": "1" for i in range(8)}
    assert code_difference(many, {k: "2" for k in many}).endswith("f4.py changed and 3 more")


def test_the_scopes_cover_what_they_say():
    training, results, every = (set(code_fingerprint(s)) for s in (TRAINING_CODE, RESULTS_CODE, ALL_CODE))
    assert {"core/losses.py", "core/models.py", "train/trainer.py", "data/stream.py"} <= training
    assert not any(f.startswith(("eval/", "experiments/", "report/", "plots/")) for f in training)
    assert training < results and "eval/metrics.py" in results and "experiments/executor.py" in results
    assert "pipeline.py" in set(code_fingerprint(EVALUATION_CODE)) - training  # the curve probe and seed pairs
    assert not any(f.startswith(("report/", "plots/")) for f in results)
    assert results < every and "report/p1.py" in every and "__init__.py" in every


# --- training checkpoints -----------------------------------------------------------------------------

def test_a_checkpoint_of_other_code_is_refused_naming_the_file(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    first = _train(ckpt)
    assert _train(ckpt).equals(first)  # the same code and configs: it resumes (here: already done)

    monkeypatch.setattr(trainer, "code_fingerprint", _other_code("core/losses.py"))
    with pytest.raises(ValueError, match=r"other code \(core/losses\.py changed\).*make clean") as err:
        _train(ckpt)
    assert str(ckpt) in str(err.value)
    monkeypatch.undo()

    with pytest.raises(ValueError, match=r"different experiment \(differs in train \(TrainConfig\)\)"):
        _train(ckpt, lr=1e-3)  # other configs: named as before

    state = torch.load(ckpt / "checkpoint.pt", weights_only=False)  # a checkpoint from before fingerprints
    del state["signature"]["code"]
    torch.save(state, ckpt / "checkpoint.pt")
    with pytest.raises(ValueError, match="from code before fingerprints.*make clean"):
        _train(ckpt)


def test_an_interrupted_run_resumes_under_the_same_code(tmp_path):
    ckpt = tmp_path / "ckpt"
    whole = _train(tmp_path / "whole", n_steps=6)
    with pytest.raises(KeyboardInterrupt):
        _train(ckpt, kill_at=3, n_steps=6)
    state = torch.load(ckpt / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and state["signature"]["code"] == code_fingerprint(TRAINING_CODE)
    assert _train(ckpt, n_steps=6).equals(whole)


# --- completed runs -----------------------------------------------------------------------

def _complete_json(out: Path, identity: dict, code_files: dict | None) -> None:
    record = {"experiment": "p2_toy", **identity, "world_size": 2, "finished_utc": "2025-01-01T00:00:00+00:00",
              "command": "torchrun ..."}
    if code_files is not None:
        record["code_files"] = code_files
    else:
        record.pop("code")
    atomic_write_json(executor.marker_path(out, "p2_toy"), record)


def test_a_completed_run_of_other_code_is_refused_naming_the_file(tmp_path):
    identity = executor.full_identity(P2Toy(toy_profile("smoke")))
    out = tmp_path / "out"
    _complete_json(out, identity, code_fingerprint(RESULTS_CODE))
    found = executor.results_source("auto", out, "p2_toy", identity)
    assert found is not None and found[0] == out and found[1]["code"] == identity["code"]

    other = {**code_fingerprint(RESULTS_CODE), "eval/metrics.py": "0" * 12}
    _complete_json(out, {**identity, "code": code_digest(other)}, other)
    assert executor.completed_record(out, "p2_toy", identity) is None
    for results_from in ("auto", out):
        with pytest.raises(ValueError, match=r"other code \(eval/metrics\.py changed\).*make clean"):
            executor.results_source(results_from, out, "p2_toy", identity)
    # other sizes: "auto" still trains here, an explicit folder names the sizes and the code
    sizes = executor.full_identity(P2Toy(toy_profile("smoke", n_seeds=7)))
    assert executor.results_source("auto", out, "p2_toy", sizes) is None
    with pytest.raises(ValueError, match=r"other sizes \(n_seeds: run \d+, here 7; code: eval/metrics\.py changed"):
        executor.results_source(out, tmp_path, "p2_toy", sizes)

    _complete_json(out, identity, None)  # a run from before fingerprints
    with pytest.raises(ValueError, match="code before fingerprints"):
        executor.results_source("auto", out, "p2_toy", identity)


# --- provenance's device ------------------------------------------------------------------------------

def test_provenance_records_the_device_that_ran_the_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    record = provenance(device="cpu", seed=1)
    assert record["device"].startswith("cpu (") and record["params"] == {"device": "cpu", "seed": 1}
    assert provenance(device=torch.device("cuda", 0))["device"] == "Fake GPU"
    assert provenance(seed=1)["device"] == "not recorded (CUDA available: Fake GPU)"
    assert record["code"] == code_digest(code_fingerprint(ALL_CODE))

    save_sae(make_sae("topk"), tmp_path)  # a saved SAE: the device of its parameters
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["params"]["device"] == "cpu" and prov["device"].startswith("cpu (")
