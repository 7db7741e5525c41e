"""The environment files agree, every package the library imports is pinned, and the Makefile/CI wiring that a
newcomer relies on is in place."""

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"transformer_lens": "transformer-lens", "sae_lens": "sae-lens", "yaml": "pyyaml", "PIL": "pillow",
                 "sklearn": "scikit-learn"}
# Imported by lib/isae but installed as a dependency of a pinned package (pinned transitively by its pin).
TRANSITIVE = {"PIL": "torchvision"}
# Imported only by an optional plug-in (``isae.saelens``), declared in pyproject's extra of that name.
OPTIONAL = {"sae_lens": "saelens"}


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pinned() -> set[str]:
    return {re.split(r"==", r)[0].lower() for r in _requirements()}


def _library_imports() -> set[str]:
    names = set()
    for path in (ROOT / "lib" / "isae").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"isae", "__future__"}


def test_environment_yml_pip_section_holds_the_same_pins_as_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = [p for p in pip_section if not p.startswith("-e")]
    assert sorted(pins) == sorted(_requirements())
    assert "python=3.11" in env["dependencies"]


def test_every_requirement_is_pinned_exactly():
    assert all("==" in r for r in _requirements()), "pin every requirement with =="


def test_every_package_the_library_imports_is_pinned():
    imports = _library_imports()
    assert {"torch", "numpy", "pandas"} <= imports  # the scan sees the library
    unpinned = sorted(n for n in imports if n not in TRANSITIVE
                      and DISTRIBUTIONS.get(n, n).lower() not in _pinned())
    assert not unpinned, f"lib/isae imports {unpinned}: pin them in requirements.txt and environment.yml"


def test_ci_lints_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make lint" in ci and "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()
    assert "ruff" in _pinned()


def test_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    assert {"help", "setup", "assets", "reproduce", "unit", "lint", "test", "lab", "bench", "bench-saelens",
            "clean"} <= targets
    assert re.search(r"^unit: \$\(STAMP\)", makefile, flags=re.M), "make unit must not fetch the assets"
    assert re.search(r"^test: unit assets", makefile, flags=re.M), "unit tests run before the assets are fetched"
    assert "isae.report.overview" in makefile and "--log-output" in makefile


def test_license_is_mit():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def _declared() -> dict[str, str]:
    """pyproject's runtime dependencies: distribution name → version range."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower(): d for d in deps}


def test_every_package_the_library_imports_is_a_declared_dependency_and_its_pin_is_in_range():
    import tomllib

    from packaging.requirements import Requirement

    declared = _declared()
    missing = sorted(n for n in _library_imports() if n not in TRANSITIVE and n not in OPTIONAL
                     and DISTRIBUTIONS.get(n, n).lower() not in declared)
    assert not missing, f"lib/isae imports {missing}: declare them in pyproject.toml's dependencies"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, extra in OPTIONAL.items():
        assert any(d.startswith(DISTRIBUTIONS[name]) for d in extras[extra]), f"declare {name} in the {extra} extra"
    pins = dict(r.split("==") for r in _requirements())
    for dist, spec in declared.items():
        assert dist in {p.lower() for p in pins}, f"{dist} is declared in pyproject.toml but not pinned"
        version = next(v for p, v in pins.items() if p.lower() == dist)
        assert Requirement(spec).specifier.contains(version), f"the pin {dist}=={version} is outside {spec}"
