"""The GPU session's own tools, run on the CPU: a GPU session is short and rare, so its scripts
must already work when it starts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, log_records


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_device_check_hears_the_letters_on_the_cpu_with_encoder_graphs_asked_for(tone_model_path: Path):
    proc = run_tool("bench/device_check.py", str(tone_model_path), "--device", "cpu", "--dtype", "float32",
                    "--streams", "4", "--encoder-cuda-graphs", "off,on")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "transcripts exact" in line]
    assert len(lines) == 8 and all("4/4 transcripts exact" in line for line in lines), proc.stdout


def test_serve_probe_sees_ready_and_reports_the_servers_sockets_loop_and_stacks(tone_model_path: Path,
                                                                             tmp_path: Path):
    log = tmp_path / "server.log"
    proc = run_tool("bench/serve_probe.py", str(tone_model_path), "--device", "cpu", "--log", str(log),
                    "max_sessions=8")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "/readyz 200 seen" in proc.stdout and "/readyz 503" in proc.stdout  # loading, then ready
    server_pid = re.search(r"server pid (\d+)", proc.stdout).group(1)
    # The kernel's view: the listening socket, held by the server and nothing else.
    assert re.search(rf"127\.0\.0\.1:\d+ -> 0\.0\.0\.0:0 LISTEN rx=0 .* held by pids \['{server_pid}'\]",
                     proc.stdout), proc.stdout
    records = log_records(log.read_text())
    handshakes = [r for r in records if r["event"] == "opening handshake done"]
    assert {r["status"] for r in handshakes} == {200, 503}
    report = next(r for r in records if r["event"] == "probe report")
    assert any(task.startswith("engine-pump:") for task in report["tasks"])
    listening = [fd for fd, target in report["open_fds"].items() if target.startswith("socket:")]
    assert set(map(int, listening)) & set(report["selector_fds"])  # the loop watches its sockets
    assert "most recent call first" in log.read_text()


def test_serve_probe_bare_probes_a_websockets_server_without_streamd(tmp_path: Path):
    log = tmp_path / "server.log"
    proc = run_tool("bench/serve_probe.py", "no-model-needed", "--bare", "--log", str(log))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert re.search(r"/readyz 200 b'ok\\n'", proc.stdout) and "/readyz 200 seen" in proc.stdout, proc.stdout
    records = log_records(log.read_text())
    assert any(r["event"] == "opening handshake done" and r["status"] == 200 for r in records)
    report = next(r for r in records if r["event"] == "probe report")
    assert not any(task.startswith("engine-pump:") for task in report["tasks"])  # no streamd server
    assert "torch" not in report["modules"]
