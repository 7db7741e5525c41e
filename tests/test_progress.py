"""Progress bars: text on stdout for make reproduce (ISAE_PROGRESS=text), tqdm.auto otherwise, a clear error else."""

from __future__ import annotations

import pytest
import tqdm.auto
import tqdm.std

from isae.progress import ENV, progress_bar


def test_text_mode_writes_a_plain_bar_to_stdout(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "text")
    bar = progress_bar(range(3), desc="work", mininterval=0)
    assert type(bar) is tqdm.std.tqdm
    assert list(bar) == [0, 1, 2]
    out = capsys.readouterr()
    assert "work" in out.out and "3/3" in out.out and "work" not in out.err


def test_auto_mode_is_tqdm_auto(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    bar = progress_bar(range(2), disable=True)
    assert isinstance(bar, tqdm.auto.tqdm)


def test_an_unknown_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV, "widgets")
    with pytest.raises(ValueError, match=f"{ENV}='widgets'"):
        progress_bar(range(2))
