"""One page that says which of the papers' claims hold at a profile: ``outputs/<profile>/report.html``.

    python -m isae.report.overview --profile smoke        # the last step of `make reproduce`

Every claims table the notebooks wrote (``tables/*claims*.csv``: columns ``claim, setting, holds, evidence`` and,
where the paper's own numbers were checked, e.g. ``holds in P1's numbers, P1's evidence``) becomes one table of the
page, with a summary line per table at the top, the figures of that notebook as thumbnails, and links to the
executed notebooks. A notebook that has not run yet is listed as "not run". Pure Python and pandas; the page is
self-contained apart from the linked figures and notebooks (relative links: move the folder as a whole).
"""

from __future__ import annotations

import argparse
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from isae.core.provenance import atomic_write_text, git_commit, repo_root

CORE_COLUMNS = ("recipe", "claim", "setting", "model", "holds", "evidence")


@dataclass(frozen=True)
class Section:
    """One notebook's part of the page: its claims table (may be None) and the prefixes of its figures."""

    title: str
    notebook: str
    claims: str | None
    figure_prefixes: tuple[str, ...]


SECTIONS: tuple[Section, ...] = (
    Section("P1 Table 1: synthetic identifiability", "01_synthetic_identifiability", "table1_claims.csv",
            ("table1_",)),
    Section("Activation caching (real models)", "02_activation_caching", None, ("activation_",)),
    Section("P1 Tables 2-3: real activations", "03_p1_real_activations", "table2_real_claims.csv",
            ("table2_", "table3_")),
    Section("P2: toy conditions", "04_p2_toy_conditions", "p2_toy_claims.csv", ("p2_toy_",)),
    Section("P2: weighted SAE on real activations", "05_p2_weighted_sae", "p2_wsae_claims.csv", ("p2_wsae_",)),
    Section("P1's recipe, element by element", "06_p1_recipe_ablation", None, ("recipe_ablation",)),
    Section("Where P1's headline appears: a scale sweep", "07_p1_scale_sweep", "scale_sweep_claims.csv",
            ("scale_sweep",)),
    Section("P1's theory: Theorem 3.2, aRIP, Theorem 3.6", "08_p1_theory_and_arip", "p1_theory_claims.csv",
            ("p1_theory_",)),
    Section("P3: the optimality structure of sparse dictionaries", "09_p3_optimality", "p3_claims.csv", ("p3_",)),
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1400px; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; margin-bottom: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.holds { background: #d4f4d4; color: #145214; font-weight: bold; }
td.fails { background: #f8d4d4; color: #7a1010; font-weight: bold; }
td.na, .notrun { color: #888; font-style: italic; }
.thumbs a { display: inline-block; margin: 0 6px 6px 0; text-align: center; font-size: 0.8em; }
.thumbs img { height: 140px; border: 1px solid #ddd; display: block; }
"""


def _truth(value) -> bool | None:
    """True/False from a claims cell (bool, "True"/"False", 1/0); None when empty or unreadable."""
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip().lower()
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text)


def _verdict_cell(value) -> str:
    t = _truth(value)
    if t is None:
        return '<td class="na">n/a</td>'
    return '<td class="holds">holds</td>' if t else '<td class="fails">fails</td>'


def _is_verdict_column(name: str) -> bool:
    return name == "holds" or name.startswith("holds")


def claims_html(df: pd.DataFrame) -> str:
    """The claims as an HTML table: claim, setting, ours (evidence), our verdict, then the paper's columns."""
    paper = [c for c in df.columns if c not in CORE_COLUMNS]
    columns = [c for c in ("recipe", "claim", "setting", "model", "evidence", "holds") if c in df.columns] + paper
    heads = {"evidence": "ours", "holds": "holds here"}
    out = ["<table><tr>" + "".join(f"<th>{html.escape(heads.get(c, str(c)))}</th>" for c in columns) + "</tr>"]
    for _, row in df.iterrows():
        cells = []
        for c in columns:
            if _is_verdict_column(str(c)):
                cells.append(_verdict_cell(row[c]))
            else:
                v = row[c]
                cells.append(f"<td>{'' if pd.isna(v) else html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _count(df: pd.DataFrame) -> tuple[int, int]:
    """(claims that hold, claims with a verdict)."""
    verdicts = [_truth(v) for v in df["holds"]] if "holds" in df.columns else []
    return sum(v is True for v in verdicts), sum(v is not None for v in verdicts)


def _notebook_link(out: Path, notebook: str) -> str | None:
    for suffix in (".html", ".ipynb"):
        if (out / "notebooks" / f"{notebook}{suffix}").is_file():
            return f"notebooks/{notebook}{suffix}"
    return None


def _thumbs(out: Path, prefixes: tuple[str, ...]) -> str:
    figures = sorted(p for p in (out / "figures").glob("*.png") if p.name.startswith(prefixes)) \
        if (out / "figures").is_dir() else []
    if not figures:
        return ""
    links = "".join(f'<a href="figures/{html.escape(p.name)}"><img src="figures/{html.escape(p.name)}" '
                    f'alt="{html.escape(p.stem)}">{html.escape(p.stem)}</a>' for p in figures)
    return f'<div class="thumbs">{links}</div>'


def _read_claims(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """The claims table, or None and why not (absent: the notebook has not run; unreadable: the error)."""
    if not path.is_file():
        return None, "not run"
    try:
        df = pd.read_csv(path)
    except Exception as e:  # an unreadable table is reported on the page, not hidden
        return None, f"unreadable claims table {path.name}: {type(e).__name__}: {e}"
    if "claim" not in df.columns or "holds" not in df.columns:
        return None, f"{path.name} has no 'claim'/'holds' columns (columns: {', '.join(map(str, df.columns))})"
    return df, None


def build_overview(out: str | Path, profile: str, commit: str | None = None, now: datetime | None = None) -> str:
    """The HTML page for the outputs folder ``out`` (``outputs/<profile>``)."""
    out = Path(out)
    commit = git_commit() if commit is None else commit
    now = now or datetime.now(UTC)
    tables = out / "tables"
    known = {s.claims for s in SECTIONS if s.claims}
    extra = sorted(p.name for p in tables.glob("*claims*.csv") if p.name not in known) if tables.is_dir() else []
    sections = list(SECTIONS) + [Section(f"Other claims: {name}", "", name, ()) for name in extra]

    summary = ['<table><tr><th>section</th><th>notebook</th><th>claims that hold</th></tr>']
    bodies = []
    for i, s in enumerate(sections):
        anchor = f"s{i}"
        link = _notebook_link(out, s.notebook) if s.notebook else None
        nb_cell = (f'<a href="{html.escape(link)}">{html.escape(s.notebook)}</a>' if link
                   else f'<span class="notrun">{html.escape(s.notebook or "-")} (not run)</span>')
        body = [f'<h2 id="{anchor}">{html.escape(s.title)}</h2>', f"<p>notebook: {nb_cell}</p>"]
        if s.claims is None:
            status = "no claims table" if link else '<span class="notrun">not run</span>'
        else:
            df, why = _read_claims(tables / s.claims)
            if df is None:
                status = f'<span class="notrun">{html.escape(why)}</span>'
                body.append(f'<p class="notrun">{html.escape(s.claims)}: {html.escape(why)}</p>')
            else:
                held, judged = _count(df)
                written = datetime.fromtimestamp((tables / s.claims).stat().st_mtime, UTC)
                status = f"{held} / {judged}"
                body.append(f"<p>{held} of {judged} claims hold ({html.escape(s.claims)}, written "
                            f"{written:%Y-%m-%d %H:%M} UTC)</p>")
                body.append(claims_html(df))
        body.append(_thumbs(out, s.figure_prefixes))
        summary.append(f'<tr><td><a href="#{anchor}">{html.escape(s.title)}</a></td><td>{nb_cell}</td>'
                       f"<td>{status}</td></tr>")
        bodies.append("\n".join(body))
    summary.append("</table>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>isae claims: profile {html.escape(profile)}</title><style>{CSS}</style></head><body>",
        f"<h1>Which claims hold: profile <code>{html.escape(profile)}</code></h1>",
        f'<div class="meta">commit <code>{html.escape(commit)}</code> · generated {now:%Y-%m-%d %H:%M} UTC · '
        f"outputs: <code>{html.escape(str(out))}</code></div>",
        *summary, *bodies, "</body></html>", "",
    ])


def write_overview(out: str | Path, profile: str, **kw) -> Path:
    """Write ``<out>/report.html`` atomically; return its path."""
    return atomic_write_text(Path(out) / "report.html", build_overview(out, profile, **kw))


def main(argv: list[str] | None = None) -> Path:
    from isae.experiments.profiles import check_profile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True, help="smoke, default or paper")
    ap.add_argument("--outputs", default=None, help="the outputs folder (default: <repo>/outputs/<profile>)")
    args = ap.parse_args(argv)
    out = Path(args.outputs) if args.outputs else repo_root() / "outputs" / check_profile(args.profile)
    path = write_overview(out, args.profile)
    print(f"overview: {path}")
    return path


if __name__ == "__main__":
    main()
