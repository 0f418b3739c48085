"""The clients as people run them, against real ``streamd serve`` processes (tone model).

The mic client captures from a real audio stack: a PulseAudio daemon of the test's own with
virtual microphones (a null sink whose monitor is remapped to a source), reached through
PortAudio and ALSA's pulse plugin exactly as a laptop's microphone is; ``paplay`` plays a tone
WAV into it, and the client must print the letters that WAV spells. Connection options and
refusals (``--token``, ``wss://`` with ``--cafile``, 401/429/503, TLS mistakes) meet a real
server with tokens and a certificate of the test's own CA; the refusals no client of ours can
provoke from a real server (a browser's origin, a model still loading) come from a stand-in
that answers the upgrade as the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, TlsFiles
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.sync.client import connect

from clients.common import run_session
from clients.mic import InputDeviceError
from streamd.models import tones
from streamd.serverproc import ServerProcess, start_server

CLIENT_TIMEOUT_S = 90
PULSE_TOOLS = ("pulseaudio", "pactl", "paplay", "pacat")
# Virtual microphones at the two rates a real one runs at: 16 kHz (what the model wants) and
# 48 kHz (the server resamples).
MIC_RATES = (16000, 48000)


# ---------------------------------------------------------------------- the real server and audio
@pytest.fixture(scope="module")
def server(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One session at a time: the tests run one client after another, and the full-server test
    # fills it by holding one connection.
    started = start_server(tone_model_path, tmp_path_factory.mktemp("server") / "server.log", max_sessions=1)
    yield started
    assert started.stop() == 0, started.log_tail()


@pytest.fixture
def idle_server(server: ServerProcess) -> ServerProcess:
    """The server once the previous test's session has freed its one slot."""
    server.wait_idle()
    return server


TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def cafile(tls_files: TlsFiles) -> Path:
    """The test CA's certificate (no system trusts it), which signed the secure server's."""
    return tls_files.ca


@pytest.fixture(scope="module")
def secure_server(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory,
                  tls_files: TlsFiles) -> Iterator[ServerProcess]:
    """A server that requires :data:`TOKEN` and speaks TLS only (a certificate for 127.0.0.1 and
    localhost signed by the test's CA); one session per client address."""
    folder = tmp_path_factory.mktemp("secure")
    (folder / "tokens").write_text(f"{TOKEN}\n")
    started = start_server(tone_model_path, folder / "server.log", cafile=tls_files.ca, tls_cert=tls_files.cert,
                           tls_key=tls_files.key, auth_tokens_file=folder / "tokens", max_sessions=4,
                           max_sessions_per_ip=1)
    yield started
    assert started.stop() == 0, started.log_tail()


@pytest.fixture
def idle_secure_server(secure_server: ServerProcess) -> ServerProcess:
    secure_server.wait_idle()
    return secure_server


def secure_args(cafile: Path) -> list[str]:
    """What a client of :func:`secure_server` passes."""
    return ["--token", TOKEN, "--cafile", str(cafile)]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tone WAVs (16-bit, 16 kHz) by the letters they spell; gaps stay within the tone model's range."""
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(25)
    paths = {}
    for letters in ("cafe", "bad", "hg"):
        paths[letters] = folder / f"{letters}.wav"
        sf.write(paths[letters], tones.synthesize(letters, rng).audio, tones.SAMPLE_RATE, subtype="PCM_16")
    return paths


def spelled(letters: str) -> str:
    """The transcript of a tone WAV: its letters, space-separated."""
    return " ".join(letters)


def run_client(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S, cwd=ROOT, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# ---------------------------------------------------------------------- PulseAudio
class Pulse:
    """A PulseAudio daemon with one virtual microphone per rate in :data:`MIC_RATES`."""

    def __init__(self, folder: Path) -> None:
        self.socket = folder / "native"
        home = folder / "home"  # the daemon's cookie and state stay in here
        runtime = folder / "runtime"
        runtime.mkdir(mode=0o700)
        home.mkdir()
        modules = [f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
                   "load-module module-null-sink sink_name=nullout", "set-default-sink nullout"]
        for rate in MIC_RATES:
            modules += [f"load-module module-null-sink sink_name={self.speaker(rate)} rate={rate} channels=1",
                        f"load-module module-remap-source source_name={self.microphone(rate)} "
                        f"master={self.speaker(rate)}.monitor"]
        modules.append(f"set-default-source {self.microphone(MIC_RATES[0])}")
        (folder / "default.pa").write_text("\n".join(modules) + "\n")
        daemon_env = os.environ | {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
        self.log = (folder / "pulseaudio.log").open("w")
        self.processes = [subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(folder / "default.pa"), "--daemonize=no", "--exit-idle-time=-1",
             "--use-pid-file=no", "--log-target=stderr"], stdout=self.log, stderr=subprocess.STDOUT, env=daemon_env)]
        self.env = os.environ | {"PULSE_SERVER": f"unix:{self.socket}"}
        self._wait_ready()
        # Something must play into each speaker all along, or a null sink hands its monitor's
        # audio over in 2 s blocks: silence, at a 20 ms latency.
        for rate in MIC_RATES:
            self.processes.append(subprocess.Popen(
                ["pacat", "--playback", f"--device={self.speaker(rate)}", "--latency-msec=20", "--raw",
                 "--format=s16le", f"--rate={rate}", "--channels=1", "/dev/zero"], env=self.env))

    @staticmethod
    def speaker(rate: int) -> str:
        return f"speaker{rate // 1000}k"

    @staticmethod
    def microphone(rate: int) -> str:
        return f"mic{rate // 1000}k"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
            if self.processes[0].poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"PulseAudio did not start: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.2)

    def client_env(self, rate: int) -> dict[str, str]:
        """The environment of a client whose default microphone is the one at ``rate``."""
        return self.env | {"PULSE_SOURCE": self.microphone(rate)}

    def play(self, wav: Path, rate: int) -> None:
        """Play ``wav`` into the microphone at ``rate`` (PulseAudio resamples), until it has played."""
        subprocess.run(["paplay", f"--device={self.speaker(rate)}", str(wav)], env=self.env, check=True,
                       timeout=60)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pulse]:
    missing = [tool for tool in PULSE_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install pulseaudio pulseaudio-utils "
                    "libportaudio2 libasound2-plugins; .ci/run does)")
    started = Pulse(tmp_path_factory.mktemp("pulse"))
    yield started
    started.stop()


# ---------------------------------------------------------------------- the mic client, as a person runs it
class MicRun:
    """``python -m clients.mic`` started in the background, its stdout a pipe or a terminal."""

    def __init__(self, args: list[str], env: dict[str, str], terminal: bool = False) -> None:
        self.listening = threading.Event()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        if terminal:
            reader, writer = pty.openpty()
        else:
            reader, writer = os.pipe()
        self.process = subprocess.Popen([sys.executable, "-m", "clients.mic", *args], stdout=writer,
                                        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        os.close(writer)
        self.threads = [threading.Thread(target=self._read_stdout, args=(reader,)),
                        threading.Thread(target=self._read_stderr)]
        for thread in self.threads:
            thread.start()

    def _read_stdout(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as out:
            while True:
                try:
                    data = out.read(4096)
                except OSError:  # a terminal's reading end fails (EIO) once the client has exited
                    break
                if not data:
                    break
                self.stdout.append(data.decode())

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            if line.startswith("listening to"):
                self.listening.set()

    def wait_listening(self) -> None:
        if not self.listening.wait(60):
            self.process.kill()
            pytest.fail(f"the mic client did not start listening: {''.join(self.stderr)}")

    def finish(self, interrupt: bool = True) -> int:
        """Ctrl-C (unless it ends by itself), then its exit status once its output is read."""
        if interrupt:
            self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(CLIENT_TIMEOUT_S)
        finally:
            self.process.kill()
            for thread in self.threads:
                thread.join()
        assert "Traceback" not in self.error_text, self.error_text
        return status

    @property
    def output(self) -> str:
        return "".join(self.stdout)

    @property
    def error_text(self) -> str:
        return "".join(self.stderr)


DEVICE_LINE = re.compile(r"(?P<default>[* ]) +(?P<index>\d+)  (?P<name>.+)  \((?P<channels>\d+) ch, (?P<rate>\d+) Hz\)")


def list_devices(pulse: Pulse) -> dict[str, dict[str, str]]:
    """``--list-devices``, parsed: each line's fields by device name."""
    proc = run_client("clients.mic", "--list-devices", env=pulse.env)
    assert proc.returncode == 0, proc.stderr
    lines = [DEVICE_LINE.fullmatch(line) for line in proc.stdout.splitlines()]
    assert all(lines), proc.stdout
    return {line["name"]: line.groupdict() for line in lines if line}


def test_mic_lists_the_inputs_portaudio_sees_and_marks_the_default(pulse: Pulse):
    devices = list_devices(pulse)
    assert {"pulse", "default"} <= devices.keys(), devices
    assert devices["default"]["default"] == "*" and devices["pulse"]["default"] == " "
    assert devices["pulse"]["rate"] == "44100"  # what PortAudio reports for ALSA's pulse plugin


@pytest.mark.parametrize("rate, chunk_ms, device, secure", [
    (16000, 160, "index", False),  # the model's own rate: no resampling anywhere
    (48000, 1120, "pulse", True),  # the server resamples; wss:// with a token
])
def test_mic_prints_the_letters_played_into_a_real_microphone_as_partials_and_finals(
        pulse: Pulse, request: pytest.FixtureRequest, cafile: Path, wavs: dict[str, Path],
        rate: int, chunk_ms: int, device: str, secure: bool):
    server: ServerProcess = request.getfixturevalue("idle_secure_server" if secure else "idle_server")
    chosen = list_devices(pulse)["pulse"]["index"] if device == "index" else device
    access = secure_args(cafile) if secure else []
    client = MicRun([server.url, "--json", "--device", chosen, "--rate", str(rate), "--chunk-ms", str(chunk_ms),
                     *access], pulse.client_env(rate))
    client.wait_listening()
    pulse.play(wavs["cafe"], rate)
    time.sleep(0.5)  # the last blocks leave PulseAudio
    assert client.finish() == 0, client.error_text
    messages = [json.loads(line) for line in client.output.splitlines()]
    assert messages[0]["type"] == "ready" and messages[-1]["type"] == "done"
    assert messages[0]["config"]["sample_rate"] == rate and messages[0]["config"]["chunk_ms"] == chunk_ms
    finals = {m["utterance"]: m["text"] for m in messages if m["type"] == "final"}
    assert " ".join(text for text in finals.values() if text) == spelled("cafe")
    partials = [m for m in messages if m["type"] == "partial"]
    assert partials and all(finals[p["utterance"]].startswith(p["text"]) for p in partials)
    assert messages[-2]["reason"] == "eof"  # Ctrl-C sent eof: the last final came, then done


def screen(output: str) -> list[str]:
    """The lines a terminal shows for ``output``: ``\\r`` returns to the line's start, ``ESC[K``
    clears the rest of it."""
    lines, line, column = [], "", 0
    for piece in re.split(r"(\r|\n|\x1b\[K)", output):
        if piece == "\r":
            column = 0
        elif piece == "\n":
            lines.append(line)
            line, column = "", 0
        elif piece == "\x1b[K":
            line = line[:column]
        else:
            line = line[:column] + piece + line[column + len(piece):]
            column += len(piece)
    return [*lines, line]


def test_mic_on_a_terminal_rewrites_the_partial_and_keeps_each_final_above_it(
        pulse: Pulse, idle_server: ServerProcess, wavs: dict[str, Path]):
    # The device's default rate (PortAudio's 44100 Hz for ALSA's pulse plugin, from the 16 kHz
    # microphone): PulseAudio and the server both resample. A pause longer than --endpoint-ms
    # between the two WAVs ends the first utterance.
    rate = MIC_RATES[0]
    client = MicRun([idle_server.url, "--chunk-ms", "560", "--endpoint-ms", "800"], pulse.client_env(rate),
                    terminal=True)
    client.wait_listening()
    pulse.play(wavs["bad"], rate)
    time.sleep(1.5)
    pulse.play(wavs["hg"], rate)
    time.sleep(0.5)
    assert client.finish() == 0, client.error_text
    assert "at 44100 Hz" in client.error_text
    assert screen(client.output) == [spelled("bad"), spelled("hg"), ""]
    rewritten = re.findall(r"\r\x1b\[K([^\r\n]+)(?=\r\x1b\[K|$)", client.output)  # partials: no newline follows
    assert rewritten, repr(client.output)
    assert all(spelled("bad").startswith(text) or spelled("hg").startswith(text) for text in rewritten)


def test_mic_reports_a_device_it_cannot_use(pulse: Pulse):
    # Checked before connecting: the URL has no server (that would be exit code 1).
    for args, message in ((["--device", "no-such-mic"], "no input device 'no-such-mic'"),
                          (["--rate", "1000000"], "cannot capture mono 16-bit audio at 1000000 Hz")):
        proc = run_client("clients.mic", "ws://127.0.0.1:9/", *args, env=pulse.env)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_mic_quits_at_once_on_a_second_ctrl_c(pulse: Pulse):
    # A server that takes the session and never answers: the first Ctrl-C's wait for the last
    # final would last for ever.
    configured = threading.Event()

    async def never_answers(connection: ServerConnection) -> None:
        async for _message in connection:
            configured.set()

    with websockets_server(never_answers) as port:
        client = MicRun([f"ws://127.0.0.1:{port}/"], pulse.client_env(MIC_RATES[0]))
        assert configured.wait(60), client.error_text
        client.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while "Ctrl-C again to quit" not in client.error_text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.finish() == 130, client.error_text  # the second Ctrl-C


def test_mic_reports_a_full_server(pulse: Pulse, idle_server: ServerProcess):
    with connect(idle_server.url):  # the server's one session
        proc = run_client("clients.mic", idle_server.url, env=pulse.env)
    assert proc.returncode == 1
    assert "the server is full (1 of 1 sessions open); try again in 1 s" in proc.stderr


async def source_that_fails() -> AsyncIterator[tuple[bytes, float]]:
    """Audio, then the failure of a microphone unplugged mid-stream."""
    yield bytes(3200), 0.1
    raise InputDeviceError("the microphone was unplugged")


def test_a_failing_audio_source_ends_the_session_and_its_error_surfaces(idle_server: ServerProcess):
    session = run_session(idle_server.url, {"sample_rate": 16000}, source_that_fails())
    with pytest.raises(InputDeviceError, match="unplugged"):
        asyncio.run(asyncio.wait_for(session, 30))  # the server would wait for more audio: no hang
    idle_server.wait_idle(10)  # the client closed its session


# ---------------------------------------------------------------------- token, TLS, refusals
def test_replay_over_wss_with_a_token_gets_the_transcript(idle_secure_server: ServerProcess,
                                                          cafile: Path, wavs: dict[str, Path]):
    assert idle_secure_server.url.startswith("wss://")
    proc = run_client("clients.replay", idle_secure_server.url, str(wavs["bad"]), "--fast", *secure_args(cafile))
    assert (proc.returncode, proc.stdout.strip()) == (0, spelled("bad")), proc.stderr


def test_latency_sweep_over_wss_with_a_token(idle_secure_server: ServerProcess, cafile: Path,
                                             wavs: dict[str, Path], tmp_path: Path):
    proc = run_client("clients.latency", idle_secure_server.url, str(wavs["bad"]), "--chunk-ms", "560",
                      "--out", str(tmp_path), *secure_args(cafile))
    assert proc.returncode == 0, proc.stderr
    (chunk,) = json.loads((tmp_path / "latency.json").read_text())["chunks"]
    assert chunk["texts"] == [spelled("bad")]


@pytest.mark.parametrize("token_args, token_env, expected", [
    ([], None, "error: the server requires a token: pass --token (or set $STREAMD_TOKEN)\n"),
    (["--token", "wrong"], None, "error: the server rejected the token (HTTP 401)\n"),
    ([], TOKEN, None),  # $STREAMD_TOKEN
])
def test_tokens_are_explained_or_taken_from_the_environment(
        idle_secure_server: ServerProcess, cafile: Path, wavs: dict[str, Path],
        token_args: list[str], token_env: str | None, expected: str | None):
    env = {name: value for name, value in os.environ.items() if name != "STREAMD_TOKEN"}
    if token_env:
        env["STREAMD_TOKEN"] = token_env
    proc = run_client("clients.replay", idle_secure_server.url, str(wavs["bad"]), "--fast", "--cafile",
                      str(cafile), *token_args, env=env)
    if expected is None:
        assert (proc.returncode, proc.stdout.strip()) == (0, spelled("bad")), proc.stderr
    else:
        assert (proc.returncode, proc.stderr) == (1, expected)


@pytest.mark.parametrize("scheme, cafile_args, exit_code, expected", [
    ("wss", False, 1, r"the TLS certificate of 127\.0\.0\.1:\d+ is not trusted \(.+\); for a self-signed server "
                      r"pass its CA certificate with --cafile"),
    ("ws", False, 1, r"127\.0\.0\.1:\d+ did not answer with a WebSocket handshake \(.+\); if it serves TLS, "
                     r"use wss://"),
    ("ws", True, 2, r"--cafile is for wss:// URLs, not ws://127\.0\.0\.1:\d+/"),
])
def test_tls_mistakes_are_explained(idle_secure_server: ServerProcess, cafile: Path,
                                    wavs: dict[str, Path], scheme: str, cafile_args: bool, exit_code: int,
                                    expected: str):
    url = f"{scheme}://127.0.0.1:{idle_secure_server.port}/"
    proc = run_client("clients.replay", url, str(wavs["bad"]), "--fast", "--token", TOKEN,
                      *(["--cafile", str(cafile)] if cafile_args else []))
    assert proc.returncode == exit_code and re.fullmatch(f"error: {expected}\n", proc.stderr), proc.stderr


def test_wss_to_a_plain_server_is_explained(idle_server: ServerProcess, wavs: dict[str, Path]):
    proc = run_client("clients.replay", f"wss://127.0.0.1:{idle_server.port}/", str(wavs["bad"]), "--fast")
    assert proc.returncode == 1
    assert proc.stderr == (f"error: the TLS handshake with 127.0.0.1:{idle_server.port} failed (the server closed "
                           "the connection); does the server serve TLS? (ws:// if it does not)\n")


def test_sessions_over_the_per_address_limit_are_explained(idle_secure_server: ServerProcess,
                                                           cafile: Path, wavs: dict[str, Path]):
    with connect(idle_secure_server.url, ssl=idle_secure_server.tls,
                 additional_headers={"Authorization": f"Bearer {TOKEN}"}):  # this address's one session
        proc = run_client("clients.replay", idle_secure_server.url, str(wavs["bad"]), "--fast", *secure_args(cafile))
    assert proc.returncode == 1
    assert proc.stderr == ("error: the server refused this client (HTTP 429): this address has max_sessions_per_ip=1 "
                           "sessions open; try again in 1 s\n")


# The refusals a real server gives that no client of ours can provoke: a browser page's origin, a
# model still loading, a drain under way (bodies as streamd/server/app.py writes them).
REFUSALS: dict[str, tuple[HTTPStatus, dict[str, Any], dict[str, str]]] = {
    "/forbidden": (HTTPStatus.FORBIDDEN, {"status": "forbidden", "message": "origin 'https://elsewhere.example' "
                                          "is not allowed (allowed_origins)"}, {}),
    "/loading": (HTTPStatus.SERVICE_UNAVAILABLE, {"status": "loading", "sessions": 0, "max_sessions": 4},
                 {"Retry-After": "5"}),
    "/draining": (HTTPStatus.SERVICE_UNAVAILABLE, {"status": "draining", "sessions": 2, "max_sessions": 4},
                  {"Retry-After": "1"}),
}


@contextlib.contextmanager
def websockets_server(handler: Callable[[ServerConnection], Awaitable[None]],
                      process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
                      ) -> Iterator[int]:
    """A ``websockets`` server on an event loop of its own (a thread); its port."""
    async def start() -> Server:
        return await serve(handler, "127.0.0.1", 0, process_request=process_request)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def refusing_server() -> Iterator[int]:
    """A server that answers every upgrade with the :data:`REFUSALS` answer of its path; its port."""
    def refuse(connection: ServerConnection, request: Request) -> Response:
        status, body, headers = REFUSALS[urlsplit(request.path).path]
        response = connection.respond(status, json.dumps(body))
        response.headers.update(headers)
        return response

    async def no_session(_connection: ServerConnection) -> None:
        raise AssertionError("every upgrade is refused")

    with websockets_server(no_session, refuse) as port:
        yield port


@pytest.mark.parametrize("path, expected", [
    ("/forbidden", "the server refused this client (HTTP 403): origin 'https://elsewhere.example' is not allowed "
                   "(allowed_origins)"),
    ("/loading", "the server is still loading its model; try again in 5 s"),
    ("/draining", "the server is shutting down; try again in 1 s"),
])
def test_refusals_are_explained(refusing_server: int, wavs: dict[str, Path], path: str, expected: str):
    proc = run_client("clients.replay", f"ws://127.0.0.1:{refusing_server}{path}", str(wavs["bad"]), "--fast")
    assert (proc.returncode, proc.stderr) == (1, f"error: {expected}\n")
