import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from vlm.fileio import atomic_write


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    atomic_write(tmp_path / "tensors.safetensors", lambda tmp: save_file({"t": torch.zeros(2)}, str(tmp)))
    atomic_write(tmp_path / "text.json", lambda tmp: tmp.write_text("{}"))
    plain = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert {stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("tensors.safetensors", "text.json")} == {plain}


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]
