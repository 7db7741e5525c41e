"""One page that says which of the papers' claims hold at a profile: ``outputs/<profile>/report.html``.

    python -m isae.report.overview --profile smoke        # the last step of `make reproduce`

Every claims table the notebooks wrote (``tables/*claims*.csv``, the claims engine's columns
``isae.report.claims.CLAIM_COLUMNS``) becomes one table of the page, with the count of each verdict per notebook
at the top, the figures of that notebook as thumbnails, and links to the executed notebooks. A smoke page says
at its top that smoke sizes decide no claim. A notebook that has not run yet is listed as "not run". Pure Python
and pandas; the page is self-contained apart from the linked figures and notebooks (relative links: move the
folder as a whole).
"""

from __future__ import annotations

import argparse
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from isae.core.provenance import atomic_write_text, git_commit, repo_root
from isae.report.claims import RULE, SMOKE_REASON, VERDICTS, counts

SHOWN_COLUMNS = ("claim", "setting", "verdict", "ours", "reason", "paper_value", "paper_verdict")
"""The columns of a claims table the page shows (the CSV holds more)."""


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
            ("scale_",)),
    Section("P1's theory: Theorem 3.2, aRIP, Theorem 3.6", "08_p1_theory_and_arip", "p1_theory_claims.csv",
            ("p1_theory_",)),
    Section("P3: the optimality structure of sparse dictionaries", "09_p3_optimality", "p3_claims.csv", ("p3_",)),
    Section("A peer's benchmark: P1's models on SynthSAEBench", "10_synthbench", "synthbench_claims.csv",
            ("synthbench",)),
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1400px; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; margin-bottom: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.holds { background: #d4f4d4; color: #145214; font-weight: bold; }
td.fails { background: #f8d4d4; color: #7a1010; font-weight: bold; }
td.inconclusive { background: #fdf3d0; color: #6b5300; }
td.not-tested, td.missing { background: #eee; color: #555; font-style: italic; }
td.na, .notrun { color: #888; font-style: italic; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; font-weight: bold; }
.thumbs a { display: inline-block; margin: 0 6px 6px 0; text-align: center; font-size: 0.8em; }
.thumbs img { height: 140px; border: 1px solid #ddd; display: block; }
"""


def _verdict_cell(value) -> str:
    v = "" if pd.isna(value) else str(value)
    css = v.replace(" ", "-") if v in VERDICTS else "na"
    return f'<td class="{css}">{html.escape(v or "n/a")}</td>'


def claims_html(df: pd.DataFrame) -> str:
    """The claims as an HTML table: claim, setting, our verdict, our numbers and why, the paper's."""
    columns = [c for c in SHOWN_COLUMNS if c in df.columns]
    heads = {"verdict": "verdict here", "ours": "ours", "paper_value": "paper",
             "paper_verdict": "in the paper's numbers"}
    out = ["<table><tr>" + "".join(f"<th>{html.escape(heads.get(c, str(c)))}</th>" for c in columns) + "</tr>"]
    for _, row in df.iterrows():
        cells = []
        for c in columns:
            if c in ("verdict", "paper_verdict"):
                cells.append(_verdict_cell(row[c]))
            else:
                v = row[c]
                cells.append(f"<td>{'' if pd.isna(v) else html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _count_cells(df: pd.DataFrame | None) -> str:
    if df is None:
        return "".join("<td></td>" for _ in VERDICTS)
    return "".join(f"<td>{n}</td>" for n in counts(df).values())


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
    if "claim" not in df.columns or "verdict" not in df.columns:
        return None, (f"{path.name} has no 'claim'/'verdict' columns (columns: {', '.join(map(str, df.columns))}); "
                      "it was written by older code: re-run its notebook")
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

    summary = ['<table><tr><th>section</th><th>notebook</th>'
               + "".join(f"<th>{v}</th>" for v in VERDICTS) + "<th>status</th></tr>"]
    bodies = []
    for i, s in enumerate(sections):
        anchor = f"s{i}"
        link = _notebook_link(out, s.notebook) if s.notebook else None
        nb_cell = (f'<a href="{html.escape(link)}">{html.escape(s.notebook)}</a>' if link
                   else f'<span class="notrun">{html.escape(s.notebook or "-")} (not run)</span>')
        body = [f'<h2 id="{anchor}">{html.escape(s.title)}</h2>', f"<p>notebook: {nb_cell}</p>"]
        df = None
        if s.claims is None:
            status = "no claims table" if link else '<span class="notrun">not run</span>'
        else:
            df, why = _read_claims(tables / s.claims)
            if df is None:
                status = f'<span class="notrun">{html.escape(why)}</span>'
                body.append(f'<p class="notrun">{html.escape(s.claims)}: {html.escape(why)}</p>')
            else:
                written = datetime.fromtimestamp((tables / s.claims).stat().st_mtime, UTC)
                status = f"{len(df)} claims"
                text = ", ".join(f"{n} {v}" for v, n in counts(df).items() if n)
                body.append(f"<p>{len(df)} claims: {html.escape(text)} ({html.escape(s.claims)}, written "
                            f"{written:%Y-%m-%d %H:%M} UTC)</p>")
                body.append(claims_html(df))
        body.append(_thumbs(out, s.figure_prefixes))
        summary.append(f'<tr><td><a href="#{anchor}">{html.escape(s.title)}</a></td><td>{nb_cell}</td>'
                       f"{_count_cells(df)}<td>{status}</td></tr>")
        bodies.append("\n".join(body))
    summary.append("</table>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>isae claims: profile {html.escape(profile)}</title><style>{CSS}</style></head><body>",
        f"<h1>Which claims hold: profile <code>{html.escape(profile)}</code></h1>",
        f'<div class="meta">commit <code>{html.escape(commit)}</code> · generated {now:%Y-%m-%d %H:%M} UTC · '
        f"outputs: <code>{html.escape(str(out))}</code></div>",
        (f'<p class="banner">Profile <code>smoke</code>: {html.escape(SMOKE_REASON)}; every verdict is "not tested" '
         "(or \"missing\").</p>" if profile == "smoke" else ""),
        f'<p class="meta">The rule (every table): {html.escape(RULE)}.</p>',
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
