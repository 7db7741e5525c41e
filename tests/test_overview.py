"""The overview page (isae.report.overview) on crafted outputs folders."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pandas as pd

from isae.report import claims, overview


def _write(out, name, rows, columns=("claim", "setting", "verdict", "ours", "reason", "paper_value", "paper_verdict")):
    (out / "tables").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(out / "tables" / name, index=False)


def _engine_table(out, name, tests, profile="default"):
    """A claims table written by the claims engine itself."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    claims.claims_table([claims.Claim("P1", c, "iid", t) for c, t in tests], profile).to_csv(
        out / "tables" / name, index=False)


def _page(out, profile="smoke"):
    path = overview.write_overview(out, profile, commit="abc123", now=datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    assert path == out / "report.html"
    return path.read_text()


def test_claims_rows_verdict_classes_and_paper_columns(tmp_path):
    q = claims.from_seeds
    _engine_table(tmp_path, "table1_claims.csv", [
        ("AbsTopK beats TopK on DCS", claims.Compare(q("a", 0.9, 0.01, 3), ">", q("b", 0.5, 0.01, 3))),
        ("iSAE <beats> TopK", claims.Compare(q("a", 0.5, 0.01, 3), ">", q("b", 0.9, 0.01, 3))),
        ("a tie", claims.Compare(q("a", 0.5, 0.2, 3), ">", q("b", 0.5, 0.2, 3))),
        ("no model", claims.Compare(claims.missing("iSAE-ME DCS"), ">", q("b", 0.5, 0.01, 3)))])
    _write(tmp_path, "table2_real_claims.csv",
           [("AbsTopK most stable", "smollm2", "not tested", "DCS 0.2 vs 0.3", "still moving", "0.86 vs 0.85",
             "holds")])
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "table1_synthetic.png").write_bytes(b"png")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_synthetic_identifiability.html").write_text("<html></html>")
    page = _page(tmp_path, "default")
    assert "abc123" in page and "default" in page and "2026-01-02 03:04 UTC" in page
    assert page.count("<td>AbsTopK beats TopK on DCS</td>") == 1
    assert "iSAE &lt;beats&gt; TopK" in page and "<beats>" not in page  # escaped
    for verdict in ("holds", "fails", "inconclusive", "missing", "not-tested"):
        assert f'class="{verdict}"' in page
    assert page.count('class="holds"') == 2  # ours in table 1, P1's in table 2
    assert "4 claims: 1 holds, 1 fails, 1 inconclusive, 1 missing" in page
    assert "1 claims: 1 not tested" in page
    assert claims.RULE.split(" (")[0] in page and "decide no claim" not in page
    assert 'src="figures/table1_synthetic.png"' in page
    assert 'href="notebooks/01_synthetic_identifiability.html"' in page


def test_a_smoke_page_says_that_smoke_decides_nothing(tmp_path):
    _engine_table(tmp_path, "table1_claims.csv",
                  [("c", claims.Compare(claims.from_seeds("a", 0.9, 0.01, 3), ">", claims.exact("0", 0)))],
                  profile="smoke")
    page = _page(tmp_path, "smoke")
    assert claims.SMOKE_REASON in page and 'class="banner"' in page
    assert "1 claims: 1 not tested" in page and 'class="holds"' not in page


def test_missing_tables_say_not_run(tmp_path):
    _write(tmp_path, "p2_toy_claims.csv", [("(1) sparsity", "sweep", "inconclusive", "0.9", "", "", "")])
    page = _page(tmp_path)
    assert "1 claims: 1 inconclusive" in page
    for name in ("table1_claims.csv", "table2_real_claims.csv", "p2_wsae_claims.csv"):
        assert re.search(rf"{name}: not run", page)
    assert "05_p2_weighted_sae (not run)" in page


def test_empty_folder_and_extra_or_broken_tables(tmp_path):
    assert _page(tmp_path).count("not run") >= 4  # nothing has run: still a page
    _write(tmp_path, "my_new_claims.csv", [("a claim", "x", None, "no verdict", "", "", "")])
    _write(tmp_path, "p2_wsae_claims.csv", [("c", "s")], columns=("what", "where"))
    _write(tmp_path, "p2_toy_claims.csv", [("c", "s", True, "x")], columns=("claim", "setting", "holds", "evidence"))
    page = _page(tmp_path)
    assert "Other claims: my_new_claims.csv" in page and 'class="na"' in page
    assert "has no &#x27;claim&#x27;/&#x27;verdict&#x27; columns" in page
    # both the foreign table and the old holds/evidence layout, each in the summary and in its section
    assert page.count("written by older code: re-run its notebook") == 4
