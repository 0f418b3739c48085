"""Offline benchmarks: Whisper encoder/generate and forced-aligner forward/alignment times.

Each model runs once per side (``device=D,dtype=T``) through the same side runners as
``streamd parity`` (:mod:`streamd.offline.whisper`, :mod:`streamd.offline.aligner`), so the
timings are taken exactly as the parity reports take them: warm-up runs, then the mean of timed
runs with the device synchronized around each. What this adds is the table across sides, with
real-time factors and Whisper's generated tokens per second.
"""

from __future__ import annotations

from typing import Any

from streamd.offline.report import SideSpec


def whisper_rows(model_dir: str, files: list[str], sides: list[SideSpec], warmup: int, runs: int
                 ) -> list[dict[str, Any]]:
    """Encoder forward and full greedy generation of all files as one batch, per side."""
    from streamd.offline import whisper

    run_side = whisper.parity_side(model_dir, files, warmup, runs)
    rows = []
    for side in sides:
        result = run_side(side)
        tokens = sum(len(output.tokens) for output in result.outputs.values())
        timing = result.timing
        rows.append({"scenario": "offline", "model": "whisper", "path": model_dir, "device": side.device,
                     "dtype": side.dtype, "files": len(files), **timing, "generated_tokens": tokens,
                     "tokens_per_s": tokens / timing["generate_mean_s"],
                     # The decoder alone: generation runs the encoder once, then a step per token.
                     "decoder_s_per_token": (timing["generate_mean_s"] - timing["encoder_mean_s"]) / tokens
                     if tokens else None})
    return rows


def aligner_rows(model_dir: str, files: list[str], transcripts: list[str], sides: list[SideSpec], warmup: int,
                 runs: int) -> list[dict[str, Any]]:
    """Network forward per file and the CTC forced alignment, per side (``transcripts``: one for
    all files or one per file)."""
    from streamd.offline import aligner

    run_side = aligner.parity_side(model_dir, files, aligner.transcripts_per_file(transcripts, files), warmup, runs)
    rows = []
    for side in sides:
        result = run_side(side)
        rows.append({"scenario": "offline", "model": "aligner", "path": model_dir, "device": side.device,
                     "dtype": side.dtype, "files": len(files), **result.timing,
                     "align_rtf": result.timing["align_s"] / result.timing["audio_s"]})
    return rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def _rtf(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def offline_table(rows: list[dict[str, Any]]) -> str:
    """One line per model and side; a dash where a time does not apply to the model."""
    lines = ["| model | device | dtype | audio s | encoder / forward ms | encoder / forward RTF | generate ms "
             "| generate RTF | tokens/s | decoder ms per token | alignment ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        forward = r.get("encoder_mean_s", r.get("forward_mean_s"))
        forward_rtf = r.get("encoder_rtf", r.get("forward_rtf"))
        tokens = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
        lines.append(f"| {r['model']} | {r['device']} | {r['dtype']} | {r['audio_s']:.1f} | {_ms(forward)} | "
                     f"{_rtf(forward_rtf)} | {_ms(r.get('generate_mean_s'))} | {_rtf(r.get('generate_rtf'))} | "
                     f"{tokens} | {_ms(r.get('decoder_s_per_token'))} | {_ms(r.get('align_s'))} |")
    return "\n".join(lines)
