"""tools/install.sh refusals that must come before any download (no network, a second each)."""

import os
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(ROOT, "tools", "install.sh")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bash script")


def _run(env_dir, tmp_path, free_mb):
    """install.sh with an empty virtualenv active (no torch, no pip: a pip call fails at once
    instead of downloading) and a `df` that reports ``free_mb`` and records its arguments."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "df").write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path / "df_args"}\n'
        "echo 'Filesystem 1M-blocks Used Available Capacity Mounted on'\n"
        f"echo '/dev/x 100000 1 {free_mb} 1% /'\n"
    )
    (fake_bin / "df").chmod(0o755)
    env = dict(os.environ, VIRTUAL_ENV=str(env_dir), PATH=f"{fake_bin}:{os.environ['PATH']}")
    return subprocess.run(
        ["bash", INSTALL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def empty_venv(tmp_path):
    d = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(d)
    # No pip inside: if the script got past its checks, `python -m pip` would fail loudly.
    return d


def test_low_disk_is_refused_before_pip(empty_venv, tmp_path):
    r = _run(empty_venv, tmp_path, free_mb=1200)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "only 1200 MB free" in r.stderr and "needs about 6.5 GB" in r.stderr
    assert "No module named pip" not in r.stderr  # refused before pip ran
    # measured where torch would go: the environment's site-packages
    assert (tmp_path / "df_args").read_text().split()[-1].endswith("site-packages")


def test_unreadable_free_space_does_not_stop_the_install(empty_venv, tmp_path):
    r = _run(empty_venv, tmp_path, free_mb="-")
    assert "could not read the free space" in r.stderr
    assert "[install] torch 2.14.1" in r.stdout and "No module named pip" in r.stderr


def test_enough_disk_goes_on_to_pip(empty_venv, tmp_path):
    # The same environment with room: the check passes and pip is called (and fails here, as
    # the virtualenv has no pip), which shows the refusal above came from the free-space check.
    r = _run(empty_venv, tmp_path, free_mb=20000)
    assert r.returncode != 0
    assert "MB free" not in r.stderr
    assert "[install] torch 2.14.1" in r.stdout
    assert "No module named pip" in r.stderr


def test_virtualenv_without_python_is_refused(tmp_path):
    r = _run(tmp_path / "nothing", tmp_path, free_mb=20000)
    assert r.returncode == 1
    assert "has no bin/python" in r.stderr
