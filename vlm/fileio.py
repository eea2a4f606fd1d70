"""Crash-safe file writes."""

import os
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0o022)  # read once (reading means setting it) and put back at once
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, flush it to disk, then rename it over `path`.

    A crash or a full disk midway leaves the previous `path` intact and no half-written file behind. The
    file gets the permissions a plain open() would give it: some writers (safetensors) make theirs 0600,
    which would hide a saved model from the other users of a shared folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
