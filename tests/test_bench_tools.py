"""The GPU session's own tools, run on the CPU: a GPU session is short and rare, so its scripts
must already work when it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_device_check_hears_the_letters_on_the_cpu_with_encoder_graphs_asked_for(tone_model_path: Path):
    proc = run_tool("bench/device_check.py", str(tone_model_path), "--device", "cpu", "--dtype", "float32",
                    "--streams", "4", "--encoder-cuda-graphs", "off,on")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "transcripts exact" in line]
    assert len(lines) == 8 and all("4/4 transcripts exact" in line for line in lines), proc.stdout


def test_serve_probe_sees_ready_and_dumps_the_servers_stacks(tone_model_path: Path, tmp_path: Path):
    log = tmp_path / "server.log"
    proc = run_tool("bench/serve_probe.py", str(tone_model_path), "--device", "cpu", "--log", str(log),
                    "max_sessions=8")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "/readyz 200 seen" in proc.stdout and "/readyz 503" in proc.stdout  # loading, then ready
    assert "most recent call first" in log.read_text()
