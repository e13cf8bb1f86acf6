"""What a run prints: our stages, Ray Data's progress bars on a terminal, and none of Ray's own chatter."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.precompute.conftest import EXAMPLE_CONFIG

pytestmark = pytest.mark.ray
CLI = [sys.executable, "-m", "precompute.cli"]


def on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``args`` with a pseudo-terminal (120 x 40) as its stdin, stdout and stderr; return its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def test_a_run_on_a_terminal_shows_progress_bars_and_no_ray_chatter(tmp_path: Path) -> None:
    env = {**os.environ, "PRECOMPUTE_STORE": f"sqlite:///{tmp_path}/store.db"}
    code, output = on_a_terminal([*CLI, "run", "--config", str(EXAMPLE_CONFIG)], env)
    assert code == 0, output[-3000:]
    assert "tqdm is not installed" not in output
    assert "Running Dataset" in output  # Ray Data's bar, drawn by tqdm
    assert "%|" in output
    assert "published version" in output
    for chatter in ("core_worker.cc", "INFO streaming_executor", "INFO worker.py", "Execution plan of Dataset"):
        assert chatter not in output, chatter
