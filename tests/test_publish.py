"""make publish (isae.report.publish): what it copies, the pages it writes from the tables, and what it refuses."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from isae.report import publish
from isae.report.claims import CLAIM_COLUMNS

README = f"# project\n\nintro\n\n{publish.SUMMARY_MARKERS[0]}\nold text\n{publish.SUMMARY_MARKERS[1]}\n\nmore\n"


def _claims(paper: str, verdicts: list[str]) -> pd.DataFrame:
    rows = [{c: "" for c in CLAIM_COLUMNS} | {"paper": paper, "claim": f"claim {i} | piped", "setting": "iid",
                                              "verdict": v, "ours": f"0.{i}", "paper_value": "0.9",
                                              "paper_verdict": "holds"} for i, v in enumerate(verdicts)]
    return pd.DataFrame(rows)


def _output(folder, notebook: str, claims_name: str, claims: pd.DataFrame, figure: str, commit: str = "abc123"):
    record = {"params": {"notebook": notebook, "profile": folder.name}, "git_commit": commit}
    (folder / "notebooks").mkdir(parents=True, exist_ok=True)
    (folder / "notebooks" / f"{notebook}.ipynb").write_text('{"cells": []}')
    for sub, name in (("tables", claims_name), ("figures", figure)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        path = folder / sub / name
        claims.to_csv(path, index=False) if sub == "tables" else path.write_bytes(b"png")
        (folder / sub / f"{name}.provenance.json").write_text(json.dumps(record))
    (folder / "saes").mkdir(exist_ok=True)
    (folder / "saes" / "weights.safetensors").write_bytes(b"w")  # never published


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text(README)
    for cmd in (["init", "-q"], ["add", "README.md"],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    default, reference = root / "outputs" / "default", root / "outputs" / "reference"
    _output(default, "01_synthetic_identifiability", "table1_claims.csv", _claims("P1", ["holds", "fails"]),
            "table1_synthetic.png")
    _output(reference, "07_p1_scale_sweep", "scale_sweep_claims.csv", _claims("P1", ["inconclusive"]),
            "scale_sweep.png", commit="def456")
    return root


def test_publish_copies_each_notebook_from_its_run_and_writes_the_pages(repo):
    dest = publish.publish(repo)
    assert sorted(p.name for p in (dest / "notebooks").iterdir()) == ["01_synthetic_identifiability.ipynb",
                                                                       "07_p1_scale_sweep.ipynb"]
    assert (dest / "tables" / "table1_claims.csv.provenance.json").is_file()
    assert (dest / "figures" / "scale_sweep.png").is_file()
    assert not list(dest.rglob("*.safetensors"))
    page = (dest / "README.md").read_text()
    assert "claim 0 \\| piped" in page and "| **holds** |" in page  # pipes escaped, verdicts from the tables
    assert "`def456`" in page and "make reference-scale" in page  # the reference run names its commit and command
    assert "03_p1_real_activations (not published)" in page and "Not published yet" in page
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert f"Made by `make publish` at commit `{head}`." in page  # the publishing repo's commit, not "-dirty"
    summary = (repo / "README.md").read_text()
    assert "old text" not in summary and summary.endswith("more\n")
    p1 = next(line for line in summary.splitlines() if line.startswith("| P1"))
    assert p1.split(" | ")[1:4] == ["3", "1", "1"]  # 3 claims: 1 holds, 1 fails (then 1 inconclusive)
    assert "`make reference-scale` (profile" in summary and "commit def456" in summary  # each run by its command


def test_the_summary_names_a_command_once_with_each_commit_that_made_its_notebooks(repo):
    _output(repo / "outputs" / "default", "04_p2_toy_conditions", "p2_toy_claims.csv", _claims("P2", ["holds"]),
            "p2_toy_sparsity.png", commit="fff999")
    publish.publish(repo)
    summary = (repo / "README.md").read_text()
    assert summary.count("`make reproduce PROFILE=default`") == 1
    assert "`make reproduce PROFILE=default` (profile default, commits abc123, fff999)" in summary
    assert "`make reference-scale` (profile reference, commit def456)" in summary


def test_publish_refuses_uncommitted_changes_and_dirty_outputs(repo):
    (repo / "tracked.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "tracked.py"], cwd=repo, check=True)
    with pytest.raises(publish.PublishError, match="uncommitted changes \\(tracked.py\\)"):
        publish.publish(repo)
    subprocess.run(["git", "reset", "-q"], cwd=repo, check=True)
    (repo / "README.md").write_text(README + "edited\n")  # what publish writes itself does not count
    _output(repo / "outputs" / "default", "01_synthetic_identifiability", "table1_claims.csv",
            _claims("P1", ["holds"]), "table1_synthetic.png", commit="abc123-dirty")
    with pytest.raises(publish.PublishError, match="made by uncommitted code"):
        publish.publish(repo)


def test_publish_needs_the_readme_markers_and_an_executed_notebook(repo, tmp_path):
    with pytest.raises(publish.PublishError, match="no executed notebook"):
        publish.publish(repo, {"default": tmp_path / "none", "reference": tmp_path / "none"})
    with pytest.raises(publish.PublishError, match="markers"):
        publish.replace_summary("# no markers\n", "x")


def test_publish_writes_the_wall_times_of_make_reproduce(repo):
    times = repo / "outputs" / "default" / "notebooks" / publish.WALL_TIMES
    times.write_text("notebook,seconds,cpu_cores,commit\n01_synthetic_identifiability,605,2,abc123\n"
                     "02_activation_caching,61,2,abc123\n")
    dest = publish.publish(repo)
    page = (dest / "README.md").read_text()
    assert "| 01_synthetic_identifiability | 10 min 05 s |" in page
    assert "| **all 2 notebooks** | **11 min 06 s** |" in page
    assert "2 CPU cores" in page and (dest / publish.WALL_TIMES).is_file()
    times.unlink()
    assert "Wall times" not in (publish.publish(repo) / "README.md").read_text()
