"""The overview page (isae.report.overview) on crafted outputs folders."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pandas as pd

from isae.report import overview


def _write(out, name, rows, columns=("claim", "setting", "holds", "evidence")):
    (out / "tables").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(out / "tables" / name, index=False)


def _page(out):
    path = overview.write_overview(out, "smoke", commit="abc123", now=datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    assert path == out / "report.html"
    return path.read_text()


def test_claims_rows_verdict_classes_and_paper_columns(tmp_path):
    _write(tmp_path, "table1_claims.csv", [("AbsTopK beats TopK on DCS", "iid", True, "DCS 0.46 vs 0.45"),
                                           ("iSAE <beats> TopK", "mixture", False, "IoU 0.1 vs 0.2")])
    _write(tmp_path, "table2_real_claims.csv",
           [("AbsTopK most stable", "smollm2", False, "DCS 0.2 vs 0.3", True, "DCS 0.86 vs 0.85")],
           columns=("claim", "setting", "holds", "evidence", "holds in P1's numbers", "P1's evidence"))
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "table1_synthetic.png").write_bytes(b"png")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_synthetic_identifiability.html").write_text("<html></html>")
    page = _page(tmp_path)
    assert "abc123" in page and "smoke" in page and "2026-01-02 03:04 UTC" in page
    assert page.count("<td>AbsTopK beats TopK on DCS</td>") == 1
    assert "iSAE &lt;beats&gt; TopK" in page and "<beats>" not in page  # escaped
    assert page.count('class="holds"') == 2 and page.count('class="fails"') == 2  # ours + P1's verdicts
    assert "<th>P1&#x27;s evidence</th>" in page and "<td>DCS 0.86 vs 0.85</td>" in page
    assert "1 of 2 claims hold" in page and "0 of 1 claims hold" in page
    assert 'src="figures/table1_synthetic.png"' in page
    assert 'href="notebooks/01_synthetic_identifiability.html"' in page


def test_missing_tables_say_not_run(tmp_path):
    _write(tmp_path, "p2_toy_claims.csv", [("(1) sparsity", "sweep", "True", "0.9")])
    page = _page(tmp_path)
    assert "1 of 1 claims hold" in page
    for name in ("table1_claims.csv", "table2_real_claims.csv", "p2_wsae_claims.csv"):
        assert re.search(rf"{name}: not run", page)
    assert "05_p2_weighted_sae (not run)" in page


def test_empty_folder_and_extra_or_broken_tables(tmp_path):
    assert _page(tmp_path).count("not run") >= 4  # nothing has run: still a page
    _write(tmp_path, "my_new_claims.csv", [("a claim", "x", None, "no verdict")])
    _write(tmp_path, "p2_wsae_claims.csv", [("c", "s")], columns=("what", "where"))
    page = _page(tmp_path)
    assert "Other claims: my_new_claims.csv" in page and 'class="na"' in page
    assert "has no &#x27;claim&#x27;/&#x27;holds&#x27; columns" in page
