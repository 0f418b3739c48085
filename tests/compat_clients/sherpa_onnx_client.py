"""sherpa-onnx's own C++ client, ``sherpa-onnx-online-websocket-client`` (PyPI ``sherpa-onnx-bin``),
transcribing a WAV file (16 kHz mono 16-bit, as it requires) through streamd's sherpa-onnx port.

Runs in the compat venv (tests/conftest.py: compat_python), whose bin/ holds the binary. The
client sends the file as float32 samples, --samples-per-message at a time, without real-time
pacing, then ``Done``; it logs every message it receives to stderr and closes on ``Done!``. Prints
one JSON object: the JSON results it logged, in order, and its exit status. Usage:
sherpa_onnx_client.py PORT WAV [--samples-per-message N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BINARY = Path(sys.executable).parent / "sherpa-onnx-online-websocket-client"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("wav")
    parser.add_argument("--samples-per-message", type=int, default=8000)
    args = parser.parse_args()

    proc = subprocess.run([str(BINARY), "--server-ip=127.0.0.1", f"--server-port={args.port}",
                           f"--samples-per-message={args.samples_per_message}", "--seconds-per-message=0", args.wav],
                          capture_output=True, text=True, timeout=120)
    # Each received message is logged as "<file>:<function>:<line> <payload>".
    results = [json.loads(line[line.index("{"):]) for line in proc.stderr.splitlines() if "{" in line]
    print(json.dumps({"results": results, "returncode": proc.returncode, "log": proc.stderr[-2000:]}))


if __name__ == "__main__":
    main()
