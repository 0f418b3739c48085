"""The benchmark commands run end to end on the tone model and report consistent numbers.

Speed itself is never asserted here (that is what docs/benchmarks.md records); these tests
check that each scenario measures what it claims: every stream finished, sums add up, the
JSON and the markdown table agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, streamd_cli

pytest_plugins = ["conftest_offline"]


def test_engine_bench_reports_every_stream_count_and_chunk_size(tone_model_path: Path, tmp_path: Path):
    out, md = tmp_path / "engine.json", tmp_path / "bench.md"
    streamd_cli("bench", "engine", "--model", str(tone_model_path), "--streams", "1,3", "--chunk-ms", "160,1120",
                "--seconds", "2", "--out", str(out), "--markdown", str(md))
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["chunk_ms"], r["streams"]) for r in rows] == [(160, 1), (160, 3), (1120, 1), (1120, 3)]
    for row in rows:
        assert abs(row["audio_s"] - 2.0 * row["streams"]) < 1e-6
        assert row["rtfx"] == row["audio_s"] / row["compute_s"]
        assert 0 < row["step_p50_ms"] <= row["step_p99_ms"]
        # the tone model hears the tones in the benchmark audio: 2-5 letters a second
        assert 1 < row["tokens_per_audio_s"] < 8
        assert row["encoder_ms"] > 0 and row["decoder_ms"] > 0 and row["other_ms"] >= 0
        assert row["nemo_encoder_ms"] > 0
    assert all(r["batching_gain"] > 0 for r in rows if r["streams"] == 3)
    assert report["meta"]["arch"] == "tiny" and "bench engine" in report["meta"]["command"]
    assert md.read_text().count("| 160 |") == 2


def test_server_bench_overhead_capacity_and_memory(tone_model_path: Path, tmp_path: Path):
    out, md = tmp_path / "server.json", tmp_path / "bench.md"
    streamd_cli("bench", "server", "--model", str(tone_model_path), "--chunk-ms", "1120", "--seconds", "2.5",
                "--streams", "2", "--repeats", "2", "--ramp", "1,2", "--soak-minutes", "0.2", "--soak-streams", "3",
                "--out", str(out), "--markdown", str(md))
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    overhead, capacity, soak = results["overhead"], results["capacity"], results["soak"]
    assert overhead["throughput_ratio"] > 0 and overhead["server_update_s"]["p50"] > 0
    assert len(overhead["engine_compute_s"]) == len(overhead["server_wall_s"]) == 2
    # Where a server run's time went: the engine thread computed (10 ms clock ticks: the loop's
    # and the clients' share of a 2-stream run may round to nothing), none longer than the run.
    for key in ("server_engine_cpu_s", "server_loop_cpu_s", "client_cpu_s"):
        assert len(overhead[key]) == 2 and all(x >= 0 for x in overhead[key])
    assert all(0 < cpu <= 2 * wall for cpu, wall in zip(overhead["server_engine_cpu_s"], overhead["server_wall_s"]))
    assert all(cpu <= wall for cpu, wall in zip(overhead["client_cpu_s"], overhead["server_wall_s"]))
    # 1120 ms chunks of a tiny model on any CPU: one and two real-time streams keep up.
    assert capacity["capacity_streams"] == 2 and all(level["holds"] for level in capacity["levels"])
    assert capacity["aligned_capacity_streams"] == 2 and all(lv["holds"] for lv in capacity["aligned_levels"])
    assert capacity["engine_ceiling_streams"] == 2 and capacity["capacity_vs_ceiling"] == 1.0
    assert capacity["peak_rss_mib"] >= capacity["idle_rss_mib"] > 0
    assert soak["sessions"] >= 3 and len(soak["rss_samples_mib"]) >= 2 and soak["streams"] == 3
    # Every session got its final, with the letters sent: but for the tone model's own mistake
    # (it doubles a letter in ~0.2 % of sequences, in offline transcription of the same audio too).
    assert soak["finals_lost"] == 0 and soak["exact_transcripts"] >= 0.97 * soak["sessions"]
    assert soak["cache_bytes_per_stream"] > 0
    text = md.read_text()
    assert "Server overhead" in text and "Real-time capacity" in text and "Memory" in text


def test_capacity_one_frame_per_chunk_clients_in_two_processes_without_aligned_ramp_or_ceiling_keeps_server_log(
        tone_model_path: Path, tmp_path: Path):
    out, logs = tmp_path / "capacity.json", tmp_path / "logs" / "capacity"  # made by the bench
    streamd_cli("bench", "server", "--model", str(tone_model_path), "--scenarios", "capacity", "--chunk-ms", "560",
                "--seconds", "2", "--ramp", "1,2", "--frame-ms", "chunk", "--no-aligned", "--no-ceiling",
                "--encoder-cuda-graphs", "on", "--client-processes", "2", "--server-log-dir", str(logs),
                "--out", str(out))
    report = json.loads(out.read_text())
    (capacity,) = report["results"]
    assert capacity["frame_ms"] == 560 and capacity["capacity_streams"] == 2
    assert capacity["client_processes"] == 2
    assert [(lv["streams"], lv["sessions_done"]) for lv in capacity["levels"]] == [(1, 1), (2, 2)]
    assert all(0 < lv["client_busy_max"] < 1 for lv in capacity["levels"])
    # CPU shares (in 10 ms ticks: the loop's few frames may round to 0); the engine thread ran the model.
    assert all(0 <= lv["server_loop_busy"] < 1 for lv in capacity["levels"])
    assert max(lv["server_other_threads_busy"] for lv in capacity["levels"]) > 0
    assert capacity["aligned_capacity_streams"] is None and capacity["aligned_levels"] == []
    assert capacity["engine_ceiling_streams"] is None and capacity["engine_levels"] == []
    # Nothing in the bench process needed the model: its description comes from the .nemo's config.
    assert (report["meta"]["arch"], report["meta"]["device"]) == ("tiny", "cpu")  # the tone model is built tiny
    assert report["meta"]["encoder_cuda_graphs"] == "on"
    for level in capacity["levels"]:
        assert level["rss_mib"] > 0 and level["gpu_mib"] is None  # no GPU here
    server_log = (logs / "server-capacity-560.log").read_text()
    assert '"event": "ready"' in server_log and '"event": "engine built"' in server_log
    assert "encoder CUDA graphs need a CUDA device" in server_log  # asked for on a CPU: said, and eager


def test_offline_bench_times_whisper_and_aligner_on_each_side(tiny_en_dir: Path, untrained_aligner_dir: Path,
                                                              speech, tmp_path: Path):
    out, md = tmp_path / "offline.json", tmp_path / "bench.md"
    proc = streamd_cli("bench", "offline", "--whisper", str(tiny_en_dir), "--aligner", str(untrained_aligner_dir),
                "--audio", str(speech.path), "--transcript", speech.text, "--side", "device=cpu,dtype=float32",
                "--side", "device=cpu,dtype=bfloat16", "--warmup", "0", "--runs", "1", "--out", str(out),
                "--markdown", str(md))
    rows = json.loads(out.read_text())["results"]
    assert [(r["model"], r["dtype"]) for r in rows] == [
        ("whisper", "float32"), ("whisper", "bfloat16"), ("aligner", "float32"), ("aligner", "bfloat16")]
    duration = sf.info(str(speech.path)).duration
    for row in rows:
        assert abs(row["audio_s"] - duration) < 0.01
    for row in rows[:2]:
        # generation runs the encoder and then the decoder, token by token
        assert 0 < row["encoder_mean_s"] < row["generate_mean_s"]
        assert row["generate_rtf"] == row["generate_mean_s"] / row["audio_s"]
        # tiny.en transcribes the sentence: at least one token per spoken word
        assert row["generated_tokens"] >= len(speech.text.split())
        decoder_s = row["generate_mean_s"] - row["encoder_mean_s"]
        assert row["decoder_s_per_token"] == pytest.approx(decoder_s / row["generated_tokens"])
    for row in rows[2:]:
        assert row["forward_mean_s"] > 0 and row["align_s"] > 0
        assert row["forward_rtf"] == row["forward_mean_s"] / row["audio_s"]
    assert md.read_text().count("| cpu |") == 4
    assert "may be ignored" not in proc.stderr  # transformers' warning about generation flags it does not use


def test_offline_bench_needs_a_model(tmp_path: Path):
    proc = streamd_cli("bench", "offline", "--audio", "a.wav", "--out", str(tmp_path / "o.json"), check=False)
    assert proc.returncode == 2 and "give --whisper DIR and/or --aligner DIR" in proc.stderr
    missing, audio = tmp_path / "no-such-model", tmp_path / "a.wav"
    sf.write(audio, np.zeros(16000, np.float32), 16000)
    proc = streamd_cli("bench", "offline", "--whisper", str(missing), "--audio", str(audio), "--out",
                       str(tmp_path / "o.json"), check=False)
    assert proc.returncode == 2 and f"{missing}: not a directory" in proc.stderr


def test_server_bench_refuses_a_file_that_is_no_model_before_running(tmp_path: Path):
    import tarfile

    not_a_model = tmp_path / "notes.nemo"
    with tarfile.open(not_a_model, "w") as archive:
        archive.add(__file__, arcname="notes.txt")
    out = tmp_path / "s.json"
    proc = streamd_cli("bench", "server", "--model", str(not_a_model), "--scenarios", "capacity", "--no-ceiling",
                       "--out", str(out), check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "holds no model_config.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_bulk_upload_bench_runs_live_streams_alone_and_beside_an_upload(tone_model_path: Path, tmp_path: Path):
    out = tmp_path / "bulk.json"
    proc = subprocess.run([sys.executable, "bench/bulk_upload.py", "--model", str(tone_model_path), "--live", "2",
                           "--live-seconds", "3", "--upload-seconds", "20", "--rounds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]  # a session that failed fails the script
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["upload"] for r in rounds] == [False, True]
    assert rounds[0]["upload_session_s"] is None and rounds[1]["upload_session_s"] > 0
    for r in rounds:
        assert 0 < r["live_update_s"]["p50"] <= r["live_update_s"]["p99"] <= r["live_update_max_s"]


def test_protocol_cost_bench_measures_every_protocol_and_checks_its_transcripts(tone_model_path: Path,
                                                                               tmp_path: Path):
    out, md = tmp_path / "protocols.json", tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, "bench/protocol_cost.py", "--model", str(tone_model_path), "--sessions", "2",
                           "--seconds", "2", "--speed", "4", "--rounds", "2", "--out", str(out), "--markdown", str(md)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    protocols = ["native", "openai", "deepgram", "whisperlive", "vosk", "sherpa"]
    assert [row["protocol"] for row in report["summary"]] == protocols
    assert sorted(run["protocol"] for run in report["runs"]) == sorted(protocols * 2)
    assert [run["protocol"] for run in report["runs"][6:8]] == ["openai", "deepgram"]  # the second round rotated
    for run in report["runs"]:
        assert run["exact"] == run["sessions"] == 2, run  # each protocol's client heard the letters sent
        assert run["other_cpu_s"] > 0 and run["audio_s"] > 0
        assert run["total_ms_per_audio_s"] == pytest.approx(run["loop_ms_per_audio_s"] + run["other_ms_per_audio_s"],
                                                            abs=0.002)
    assert report["summary"][0]["total_vs_native"] == 1.0
    # the adapters timed without sockets: each protocol once per session's audio
    assert sorted(a["protocol"] for a in report["adapters"]) == sorted(protocols * 2)
    assert all(row["read_us_per_audio_s"] > 0 and row["write_us_per_audio_s"] >= 0 for row in report["summary"])
    assert md.read_text().count("| ") >= 8 and "bench/protocol_cost.py" in md.read_text()
