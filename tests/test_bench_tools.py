"""The GPU session's own tools, run on the CPU: a GPU session is short and rare, so its scripts
must already work when it starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
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


GPU_SESSION_STAGES = ["correctness-float32", "model", "serve-probe-cpu", "capacity-160", "capacity-1120",
                      "capacity-160-engine-process", "engine-encoder-graphs-off", "engine-encoder-graphs-on",
                      "engine-decoder-graphs-off"]


def test_gpu_session_script_runs_its_stages_on_the_cpu(tone_model_path: Path, tmp_path: Path):
    """bench/gpu_session.sh end to end at toy sizes, so that a renamed flag or a broken stage shows
    here rather than in a lent GPU's few minutes. Its offline stage is left out (its models take
    4 GB; `streamd model create-offline` and `bench offline` have their own tests)."""
    out, pack = tmp_path / "out", tmp_path / "results.tar.gz"
    sizes = {"RAMP_160": "2", "RAMP_1120": "2", "RAMP_160_PROCESS": "2", "CAPACITY_SECONDS": "2",
             "MAX_BATCH_160": "4", "MAX_BATCH_1120": "4", "CLIENT_PROCESSES": "2", "ENGINE_STREAMS": "2",
             "ENGINE_SECONDS": "2"}
    env = {**os.environ, **sizes, "PY": sys.executable, "DEVICE": "cpu", "DTYPE": "float32", "DTYPES": "float32",
           "ARCH": "tiny", "TOKENS_PER_SECOND": "", "STAGES": "correctness capacity engine", "PACK": str(pack)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), str(out), str(tone_model_path)],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = re.findall(r"stage (\S+): exit (\d+)", (out / "stages.txt").read_text())
    assert stages == [(name, "0") for name in GPU_SESSION_STAGES]
    reports = {name: json.loads((out / f"{name}.json").read_text())
               for name in ("capacity-160", "capacity-1120", "capacity-160-engine-process")}
    assert [r["meta"]["engine_process"] for r in reports.values()] == [False, False, True]
    assert "engine in its own process" in reports["capacity-160-engine-process"]["meta"]["title"]
    for name, report in reports.items():
        [result] = report["results"]
        assert result["capacity_streams"] == 2  # two real-time streams of the tone model on any CPU
        assert (out / f"server-logs-{name.removeprefix('capacity-')}").is_dir()
    tables = (out / "tables.md").read_text()
    assert tables.count("### Real-time capacity") == 3 and tables.count("### Engine") == 3
    with tarfile.open(pack) as archive:  # rewritten after every stage: it holds the last one's output
        assert "./engine-decoder-graphs-off.json" in archive.getnames()
    assert "offline stage skipped" not in proc.stdout  # not asked for
