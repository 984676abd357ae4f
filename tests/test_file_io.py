import os
import stat

import pytest

from ltdet.file_io import atomic_open


def test_atomic_open_replaces_only_on_success(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path)) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"  # the previous version survives a failed write
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left behind
    with atomic_open(str(path)) as f:
        f.write("new")
    assert path.read_text() == "new"
    mask = os.umask(0o022)
    os.umask(mask)
    # the permissions of a plain open(), not mkstemp's private 0600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask


def test_atomic_open_binary_and_refuses_read_modes(tmp_path):
    with atomic_open(str(tmp_path / "x.bin"), "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(str(tmp_path / "y"), "r"):
            pass
