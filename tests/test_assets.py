"""Asset registry, sha256 verification and the fetch machinery (isae.data.assets).

The fetch tests replace the registry client with a local archive, so they run offline. Tests on
the real assets skip when ``make assets`` has not fetched them."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from isae.data import assets
from isae.data.assets import ASSETS, Asset, AssetCorrupt, AssetMissing, FetchError, Source, asset_path, fetch, verify

pytestmark = pytest.mark.assets

REQUIRED = {"smollm2", "efficientnet-lite0", "wiki-leads", "kjv", "shakespeare", "sotu", "moby-dick",
            "fashion-mnist", "skimage-photos"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _present(name: str) -> bool:
    return assets.asset_dir(name).is_dir()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_registry_pins_every_asset_with_hashes():
    assert REQUIRED <= set(ASSETS)
    for name, a in ASSETS.items():
        assert a.source.registry in {"pypi", "npm", "debian"}, name
        assert a.source.version and a.source.archive, name
        assert HEX64.match(a.source.sha256 or ""), f"{name}: archive sha256 not recorded"
        assert a.files and all(HEX64.match(h) for h in a.files.values()), f"{name}: file hashes not recorded"
        assert a.path == "." or a.path in a.files, name
    assert len(ASSETS["shakespeare"].files) == 49 and len(ASSETS["sotu"].files) == 233
    assert {"astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"} <= set(ASSETS["skimage-photos"].files)


def test_missing_asset_names_the_fetch_command(tmp_path):
    with pytest.raises(AssetMissing) as e:
        asset_path("kjv", root=tmp_path)
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    assert "'kjv'" in msg and "make assets" in msg
    assert ".venv/bin/python scripts/fetch_assets.py --only kjv" in msg


def test_missing_asset_through_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ISAE_ASSETS_DIR", str(tmp_path))
    with pytest.raises(AssetMissing, match="--only sotu"):
        asset_path("sotu")


def test_unknown_asset_is_a_key_error():
    with pytest.raises(KeyError, match="unknown asset"):
        asset_path("no-such-asset")


def _fake_asset(files: dict[str, bytes]) -> Asset:
    return Asset(name="fake", description="a test asset", license="none",
                 source=Source("pypi", "fake", "1.0", "wheel", "fake-1.0-py3-none-any.whl", "0" * 64),
                 strip="fake/data/", include=("*.txt",), exclude=("skip*",), path=".",
                 files={k: _sha(v) for k, v in files.items()})


def test_verify_detects_a_corrupt_and_a_missing_file(tmp_path):
    files = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n"}
    fake = _fake_asset(files)
    for rel, data in files.items():
        (tmp_path / "fake" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / rel).write_bytes(data)
    assert verify(fake, root=tmp_path) == tmp_path / "fake"
    (tmp_path / "fake" / "sub/b.txt").write_bytes(b"bet4\n")  # same size, one byte changed
    with pytest.raises(AssetCorrupt) as e:
        verify(fake, root=tmp_path)
    assert "sub/b.txt" in str(e.value) and "'fake'" in str(e.value) and "fetch_assets.py" in str(e.value)
    (tmp_path / "fake" / "a.txt").unlink()
    with pytest.raises(AssetMissing, match="a.txt"):
        verify(fake, root=tmp_path)


def test_cached_verification_notices_a_changed_file(tmp_path):
    fake = _fake_asset({"a.txt": b"alpha\n"})
    f = tmp_path / "fake" / "a.txt"
    f.parent.mkdir()
    f.write_bytes(b"alpha\n")
    verify(fake, root=tmp_path, cached=True)
    f.write_bytes(b"alphA\n")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks: make the change visible
    with pytest.raises(AssetCorrupt):
        verify(fake, root=tmp_path, cached=True)


@pytest.mark.skipif(not _present("kjv"), reason="asset kjv not fetched (make assets)")
def test_verify_detects_corruption_in_a_copy_of_a_real_asset(tmp_path):
    shutil.copytree(assets.asset_dir("kjv"), tmp_path / "kjv")
    assert verify("kjv", root=tmp_path) == tmp_path / "kjv" / "Bible.db"
    db = tmp_path / "kjv" / "Bible.db"
    with open(db, "r+b") as f:
        f.seek(db.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(AssetCorrupt, match="Bible.db"):
        verify("kjv", root=tmp_path)
    verify("kjv")  # the real one is untouched


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_fetched_assets_verify(name):
    if not _present(name):
        pytest.skip(f"asset {name} not fetched (make assets)")
    p = verify(name)
    assert p.exists()


# ------------------------------------------------------------------ fetching, offline

def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def offline_registry(tmp_path, monkeypatch):
    """A fake asset whose 'registry' is a local wheel; returns (asset, wheel path, download calls)."""
    wanted = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n"}
    wheel = _wheel(tmp_path / "fake-1.0-py3-none-any.whl",
                   {"fake/data/a.txt": wanted["a.txt"], "fake/data/sub/b.txt": wanted["sub/b.txt"],
                    "fake/data/skip.txt": b"excluded\n", "fake/other.py": b"print()\n"})
    fake = _fake_asset(wanted)
    fake = replace(fake, source=replace(fake.source, sha256=_sha(wheel.read_bytes())))
    calls = []

    def download(src, dest, log):
        calls.append(src.spec())
        return Path(shutil.copy(wheel, dest / wheel.name))

    monkeypatch.setitem(ASSETS, "fake", fake)
    monkeypatch.setattr(assets, "_download", download)
    return fake, wheel, calls


def test_fetch_unpacks_verifies_and_is_idempotent(tmp_path, offline_registry):
    fake, wheel, calls = offline_registry
    root = tmp_path / "assets"
    out = fetch("fake", root=root, log=lambda s: None)
    assert out == root / "fake"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        [".asset.json", "a.txt", "sub/b.txt"]
    assert verify("fake", root=root) == out
    fetch("fake", root=root, log=lambda s: None)
    assert len(calls) == 1, "a verified asset must not be fetched again"
    (out / "a.txt").write_bytes(b"alphX\n")
    fetch("fake", root=root, log=lambda s: None)  # corrupt -> fetched again and replaced
    assert len(calls) == 2 and (out / "a.txt").read_bytes() == b"alpha\n"
    assert [p.name for p in root.iterdir()] == ["fake"], "no temporary folders left behind"


def test_fetch_refuses_an_archive_with_the_wrong_hash(tmp_path, offline_registry, monkeypatch):
    fake, wheel, calls = offline_registry
    root = tmp_path / "assets"
    fetch("fake", root=root, log=lambda s: None)
    _wheel(wheel, {"fake/data/a.txt": b"tampered\n", "fake/data/sub/b.txt": b"beta\n"})
    with pytest.raises(FetchError, match="sha256"):
        fetch("fake", root=root, force=True, log=lambda s: None)
    assert verify("fake", root=root), "the good copy stays in place"
    assert [p.name for p in root.iterdir()] == ["fake"]
    # an archive with the right hash but files that differ from the registry is refused too
    monkeypatch.setitem(ASSETS, "fake", replace(fake, source=replace(fake.source, sha256=_sha(wheel.read_bytes()))))
    with pytest.raises(FetchError, match="a.txt"):
        fetch("fake", root=root, force=True, log=lambda s: None)


def test_unsafe_member_names_are_refused():
    fake = _fake_asset({})
    with pytest.raises(FetchError, match="unsafe"):
        assets._members(replace(fake, strip=""), ["../evil.txt"])
