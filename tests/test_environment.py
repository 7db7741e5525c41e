"""The environment files agree, and the Makefile/CI wiring that a newcomer relies on is in place."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_environment_yml_pip_section_holds_the_same_pins_as_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = [p for p in pip_section if not p.startswith("-e")]
    assert sorted(pins) == sorted(_requirements())
    assert "python=3.11" in env["dependencies"]


def test_every_requirement_is_pinned_exactly():
    assert all("==" in r for r in _requirements()), "pin every requirement with =="


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
