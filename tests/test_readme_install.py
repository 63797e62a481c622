"""The README's systemd install steps work in the order written, on a fresh machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _install_steps() -> list[str]:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Run it under systemd", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _first(steps: list[str], *words: str) -> int:
    return next(i for i, line in enumerate(steps) if all(w in line for w in words))


def test_the_kite_login_comes_after_the_data_directory_exists_and_before_the_service_starts():
    steps = _install_steps()
    data_dir = _first(steps, "install -d", "-o marketfeed", "/var/lib/marketfeed")
    login = _first(steps, "-u marketfeed", "--login")
    enable = _first(steps, "systemctl enable")
    assert data_dir < login < enable, steps


def test_the_kite_login_comes_before_the_broker_check_which_needs_its_access_token():
    steps = _install_steps()
    login = _first(steps, "-u marketfeed", "--login")
    check = _first(steps, "-u marketfeed", "--test-broker")
    assert login < check, steps


@pytest.mark.skipif(os.geteuid() != 0, reason="tar keeps the archive's owners only when it extracts as root")
def test_the_copied_code_belongs_to_root_not_to_whoever_deployed_it(tmp_path):
    src, dest = tmp_path / "checkout", tmp_path / "opt"
    src.mkdir()
    dest.mkdir()
    (src / "main.py").write_text("print('hi')\n")
    for path in (src, src / "main.py"):
        os.chown(path, 4321, 4321)  # the deploying user's checkout
    steps = _install_steps()
    copy = steps[_first(steps, "| sudo tar")].replace("sudo ", "").replace("/opt/marketfeed", str(dest))

    subprocess.run(["bash", "-c", copy], cwd=src, check=True)

    assert (dest / "main.py").stat().st_uid == 0
