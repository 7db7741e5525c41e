"""The public API: ``import isae`` is light, exports what the README names, and the README's quickstart runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import isae
from isae.core.provenance import repo_root


def _quickstart() -> str:
    text = (repo_root() / "README.md").read_text()
    section = text[text.index("## Library quickstart"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_import_isae_loads_no_heavy_module():
    code = "import sys, isae; print(sorted(m for m in ('torch', 'pandas', 'isae.core') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_export_resolves_and_an_unknown_name_is_refused_with_the_list():
    for name in isae.__all__:
        assert getattr(isae, name).__name__ == name
    with pytest.raises(AttributeError, match="SAEConfig"):
        isae.not_there  # noqa: B018


def test_the_readme_quickstart_runs(tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(_quickstart(), "README quickstart", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "'dcs':" in printed and "random-init" in printed
    assert (tmp_path / "saes" / "seed1" / "cfg.json").exists()


def test_a_tensor_stream_is_seeded_and_visits_every_row_once_per_pass():
    import torch

    rows = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    s = isae.TensorStream(rows, batch_size=5, seed=3, passes=2, normalize=False)
    first = torch.cat([s.batch(i) for i in range(4)])
    assert sorted(first[:, 0].tolist()) == rows[:, 0].tolist()  # one pass: every row once
    assert torch.equal(isae.TensorStream(rows, 5, seed=3, passes=2, normalize=False).batch(2), s.batch(2))
    assert not torch.equal(torch.cat([s.batch(i) for i in range(4, 8)]), first)  # pass 2 reshuffled
    with pytest.raises(ValueError, match="raise passes"):
        s.batch(8)


@pytest.mark.skipif(not os.environ.get("ISAE_INSTALL_TEST"),
                    reason="builds a fresh venv and installs torch (~6.5 GB, minutes): set ISAE_INSTALL_TEST=1 "
                           "(and ISAE_INSTALL_PYTHON to choose the interpreter, e.g. python3.12)")
def test_pip_install_into_a_fresh_venv_gives_a_working_library(tmp_path):
    """``pip install .`` from nothing (the declared dependencies only), then the README quickstart with that venv's
    interpreter, outside the repository."""
    python = os.environ.get("ISAE_INSTALL_PYTHON", sys.executable)
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(repo_root())], check=True)
    script = tmp_path / "quickstart.py"
    script.write_text(_quickstart())
    done = subprocess.run([str(venv / "bin" / "python"), str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'dcs':" in done.stdout and "random-init" in done.stdout
