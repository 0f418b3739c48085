"""The browser page (``GET /``) in a real browser against a real ``streamd serve`` (tone model).

Debian's Chromium runs headless, driven by Selenium through Debian's chromedriver (no browser
download). Its fake capture device plays a tone WAV as the microphone
(``--use-file-for-fake-audio-capture``): the page captures it through getUserMedia and its
AudioWorklet, streams it to the server, and ``#transcript`` must show the letters the WAV
spells. A local file goes through the same path, chosen and dropped. Refusals (a full server,
a missing token, a refused microphone) must be said in words. Every test saves a screenshot
of the page, and prints where.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from streamd.models import tones
from streamd.server.protocols import native as protocol
from streamd.serverproc import ServerProcess, start_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="Chromium not installed (apt-get install chromium chromium-driver)")
if CHROMIUM is not None:  # selenium only where it can run (it is in the test extra)
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

TOKEN = "page-token"
WAIT_S = 30  # a step of the page: seconds of audio plus the server's answer, on a busy machine
T = TypeVar("T")


# ---------------------------------------------------------------------- audio, server, browser
def tone_wav(path: Path, letters: str, seed: int, trailing_s: float) -> tones.ToneSequence:
    """A 16 kHz WAV that spells ``letters`` after 0.5 s of quiet and ends with ``trailing_s`` of
    it (the fake microphone loops the file: the quiet keeps the second pass well after the
    first utterance's final)."""
    rng = np.random.default_rng(seed)
    sequence = tones.synthesize(letters, rng)

    def quiet(seconds: float) -> np.ndarray:
        return rng.normal(0.0, tones.NOISE_STD, int(seconds * tones.SAMPLE_RATE)).astype(np.float32)

    sf.write(path, np.concatenate([quiet(0.5), sequence.audio, quiet(trailing_s)]), tones.SAMPLE_RATE,
             subtype="PCM_16")
    return sequence


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tones.ToneSequence]:
    """What the fake microphone says, and its WAV."""
    path = tmp_path_factory.mktemp("microphone") / "microphone.wav"
    return path, tone_wav(path, "cafe", seed=21, trailing_s=8.0)


@pytest.fixture(scope="module")
def server(tone_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One session at a time (a second is refused as full), with a token."""
    folder = tmp_path_factory.mktemp("server")
    tokens = folder / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    started = start_server(tone_model_path, folder / "server.log", threads=1, max_sessions=1,
                           auth_tokens_file=tokens)
    yield started
    assert started.stop() == 0, started.log_tail()


@pytest.fixture
def idle_server(server: ServerProcess) -> ServerProcess:
    server.wait_idle()
    return server


def page_url(server: ServerProcess, **query: Any) -> str:
    return f"http://127.0.0.1:{server.port}/" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def chromium(profile: Path, microphone_wav: Path | None, *flags: str) -> webdriver.Chrome:
    """Headless Chromium with a fresh profile (downloads go to its ``downloads`` folder) and the
    fake capture device playing ``microphone_wav``. The network flags keep it from reaching for
    Google's services (a closed network answers those slowly, or not at all)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.add_experimental_option("prefs", {"download.default_directory": str(profile / "downloads")})
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1100,1150", "--use-fake-device-for-media-stream",
                 *flags):
        options.add_argument(flag)
    if microphone_wav is not None:
        options.add_argument("--use-fake-ui-for-media-stream")  # the microphone is allowed without asking
        options.add_argument(f"--use-file-for-fake-audio-capture={microphone_wav}")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture
def browser(microphone: tuple[Path, tones.ToneSequence], tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A fresh browser per test: its fake microphone starts the WAV from the beginning."""
    driver = chromium(tmp_path / "profile", microphone[0])
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """The test's artifact: where the page stood when it was checked."""
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


# ---------------------------------------------------------------------- reading the page
def text(driver: webdriver.Chrome, element_id: str) -> str:
    """An element's text, whitespace normalized (``#transcript`` holds one paragraph per final)."""
    return " ".join(driver.find_element(By.ID, element_id).text.split())


def finals(driver: webdriver.Chrome) -> list[str]:
    return [line.text for line in driver.find_elements(By.CSS_SELECTOR, "#transcript p")]


def wait(driver: webdriver.Chrome, condition: Callable[[], T], what: str) -> T:
    def describe() -> str:
        return (f"{what}: status {text(driver, 'status')!r}, alert {text(driver, 'alert-text')!r}, "
                f"partial {text(driver, 'partial')!r}, transcript {finals(driver)!r}")

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda _: condition())
    except TimeoutException as exc:
        raise AssertionError(describe()) from exc


def wait_finished(driver: webdriver.Chrome) -> None:
    """Stop, and wait for the last final and ``done``."""
    driver.find_element(By.ID, "stop").click()
    wait(driver, lambda: text(driver, "status") == "Finished", "finished after Stop")


def first_final_watching_partials(driver: webdriver.Chrome) -> tuple[str, list[str]]:
    """The first final's text, and every partial seen before it."""
    partials: list[str] = []

    def first_final() -> str | None:
        if partial := text(driver, "partial"):
            partials.append(partial)
        lines = finals(driver)
        return lines[0] if lines else None

    return wait(driver, first_final, "a first final"), partials


# ---------------------------------------------------------------------- the page's HTTP routes
def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_page_and_its_files_are_served_without_a_token_with_types_and_cache_headers(server: ServerProcess):
    status, headers, body = get(server, "/?autostart=1")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'id="transcript"' in body.decode() and 'id="partial"' in body.decode()
    assert headers["Cache-Control"] == "no-cache" and headers["Referrer-Policy"] == "no-referrer"
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    # Everything the page loads is its own (nothing from another host), and every file is served.
    assets = re.findall(r'(?:src|href)="([^"]+)"', body.decode())
    assert assets and not [url for url in assets if "//" in url]
    javascript = "text/javascript; charset=utf-8"
    for name, content_type in (("app.js", javascript), ("audio.js", javascript), ("session.js", javascript),
                               ("capture-worklet.js", javascript), ("style.css", "text/css; charset=utf-8"),
                               ("favicon.svg", "image/svg+xml")):
        status, headers, body = get(server, f"/page/{name}")
        assert (status, headers["Content-Type"]) == (200, content_type), name
        # unchanged: a bodiless 304 on revalidation
        revalidated = get(server, f"/page/{name}", {"If-None-Match": headers["ETag"]})
        assert (revalidated[0], revalidated[2]) == (304, b"")
    assert get(server, "/page/missing.js")[0] == 404
    assert get(server, "/page/../webpage.py")[0] == 404
    # /readyz tells the page that this server needs a token; an upgrade without one is refused
    assert server.get("/readyz")[2]["token_required"] is True
    with pytest.raises(InvalidStatus) as refused, connect(server.url):
        pass
    assert refused.value.response.status_code == 401


# ---------------------------------------------------------------------- the microphone
@pytest.mark.parametrize("chunk_ms", [160, 1120])
def test_the_microphone_is_transcribed_live_at_two_chunk_sizes(
        idle_server: ServerProcess, browser: webdriver.Chrome, microphone: tuple[Path, tones.ToneSequence],
        chunk_ms: int, tmp_path: Path):
    spoken = microphone[1]
    browser.get(page_url(idle_server, autostart=1, chunk_ms=chunk_ms, token=TOKEN))
    final, partials = first_final_watching_partials(browser)
    assert final == spoken.text
    # partials were provisional text of the same utterance: it only grows
    assert all(spoken.text.startswith(partial) for partial in partials), partials
    if chunk_ms == 160:
        assert partials, "a 160 ms chunk answers before the utterance ends"
    assert text(browser, "status") == f"Listening · {chunk_ms} ms chunks"
    assert re.fullmatch(r"\d+ ms \((partial|final)\)", text(browser, "latency"))
    # the final's words with their times, in order
    words = [w.text for w in browser.find_elements(By.CSS_SELECTOR, "#utterances .word-text")]
    times = [float(t.text) for t in browser.find_elements(By.CSS_SELECTOR, "#utterances .word-time")]
    assert words == list(spoken.letters) and times == sorted(times) and times[0] > 0.4, times  # after the quiet
    screenshot(browser, tmp_path / f"page-{chunk_ms}ms.png")
    wait_finished(browser)
    assert text(browser, "transcript") == spoken.text  # the letters once: eof's final is the quiet's, empty
    assert browser.find_element(By.ID, "alert").get_attribute("hidden") is not None


def test_a_full_server_is_said_in_words_and_a_reconnect_keeps_the_transcript(
        idle_server: ServerProcess, browser: webdriver.Chrome, microphone: tuple[Path, tones.ToneSequence],
        tmp_path: Path):
    spoken = microphone[1]
    browser.get(page_url(idle_server, autostart=1, chunk_ms=160, token=TOKEN))
    assert first_final_watching_partials(browser)[0] == spoken.text
    wait_finished(browser)
    idle_server.wait_idle()

    with connect(f"{idle_server.url}?token={TOKEN}") as held:  # the server's one session
        held.send(protocol.config())
        assert json.loads(held.recv(timeout=10))["type"] == "ready"
        browser.find_element(By.ID, "start").click()
        alert = wait(browser, lambda: text(browser, "alert-text"), "the refusal's message")
        assert alert == "The server is full (1 of 1 sessions in use). Try again in a moment."
        assert text(browser, "status") == "Not connected"
        assert finals(browser) == [spoken.text]  # kept
        screenshot(browser, tmp_path / "page-full.png")
    idle_server.wait_idle()

    browser.find_element(By.ID, "reconnect").click()
    wait(browser, lambda: len(finals(browser)) == 2, "a second final after reconnecting")
    assert finals(browser) == [spoken.text, spoken.text]
    wait_finished(browser)


def test_a_missing_token_is_asked_for_and_the_field_connects(
        idle_server: ServerProcess, browser: webdriver.Chrome, microphone: tuple[Path, tones.ToneSequence],
        tmp_path: Path):
    browser.get(page_url(idle_server, autostart=1, chunk_ms=560))
    alert = wait(browser, lambda: text(browser, "alert-text"), "the refusal's message")
    assert alert.startswith("The server requires an access token")
    field = browser.find_element(By.ID, "token")
    assert field.is_displayed()
    screenshot(browser, tmp_path / "page-token.png")
    field.send_keys(TOKEN)
    browser.find_element(By.ID, "reconnect").click()
    assert first_final_watching_partials(browser)[0] == microphone[1].text
    wait_finished(browser)


def test_finalize_ends_the_utterance_and_the_transcript_downloads(
        idle_server: ServerProcess, browser: webdriver.Chrome, microphone: tuple[Path, tones.ToneSequence],
        tmp_path: Path):
    spoken = microphone[1]
    browser.get(page_url(idle_server, chunk_ms=560, token=TOKEN))
    browser.find_element(By.ID, "endpointing").click()  # off: only Finalize ends the utterance
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda: text(browser, "partial") == spoken.text, "the whole partial")
    assert finals(browser) == []
    browser.find_element(By.ID, "finalize").click()
    wait(browser, lambda: finals(browser), "the final Finalize asked for")
    assert finals(browser) == [spoken.text] and text(browser, "partial") == ""
    assert "finalize · final after" in text(browser, "utterances")
    wait_finished(browser)
    browser.find_element(By.ID, "download").click()
    downloads = tmp_path / "profile" / "downloads"
    saved = wait(browser, lambda: [p for p in downloads.glob("transcript-*.txt")], "the downloaded transcript")
    assert saved[0].read_text() == f"{spoken.text}\n"


def test_a_lost_connection_is_said_in_words_and_keeps_the_transcript(
        tone_model_path: Path, browser: webdriver.Chrome, microphone: tuple[Path, tones.ToneSequence],
        tmp_path: Path):
    doomed = start_server(tone_model_path, tmp_path / "server.log", threads=1)
    try:
        browser.get(page_url(doomed, autostart=1, chunk_ms=160))
        assert first_final_watching_partials(browser)[0] == microphone[1].text
        doomed.process.kill()  # gone without a word: no close frame, as a network failure
        doomed.process.wait()
        alert = wait(browser, lambda: text(browser, "alert-text"), "the lost connection's message")
        assert alert == "The connection to the server was lost."
        assert finals(browser) == [microphone[1].text] and text(browser, "status") == "Disconnected"
        screenshot(browser, tmp_path / "page-lost.png")
        browser.find_element(By.ID, "reconnect").click()
        wait(browser, lambda: "does not answer" in text(browser, "alert-text"), "the refusal of a server that is gone")
        assert finals(browser) == [microphone[1].text]
    finally:
        doomed.stop()


def test_a_refused_microphone_is_said_in_words(idle_server: ServerProcess, tmp_path: Path):
    driver = chromium(tmp_path / "profile", None, "--use-fake-ui-for-media-stream=deny")
    try:
        driver.get(page_url(idle_server, autostart=1, token=TOKEN))
        alert = wait(driver, lambda: text(driver, "alert-text"), "the refusal's message")
        assert alert.startswith("Microphone access was refused.")
        assert text(driver, "status") == "Not connected"
        screenshot(driver, tmp_path / "page-microphone-refused.png")
    finally:
        driver.quit()
    assert idle_server.get("/readyz")[2]["sessions"] == 0  # no connection was opened


# ---------------------------------------------------------------------- a local file
DROP_FILE = """
const [data, name] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "audio/wav" }));
document.getElementById("dropzone").dispatchEvent(
  new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
"""


def test_a_chosen_and_a_dropped_file_are_streamed_in_real_time(idle_server: ServerProcess,
                                                               browser: webdriver.Chrome, tmp_path: Path):
    chosen = tone_wav(tmp_path / "chosen.wav", "hedge", seed=1, trailing_s=0.3)
    dropped = tone_wav(tmp_path / "dropped.wav", "bad", seed=2, trailing_s=0.3)
    dropped_wav = base64.b64encode((tmp_path / "dropped.wav").read_bytes()).decode()
    browser.get(page_url(idle_server, chunk_ms=560, token=TOKEN))
    # Browsers start audio only after a click on the page (a drop is none): the page says so.
    browser.execute_script(DROP_FILE, dropped_wav, "dropped.wav")
    alert = wait(browser, lambda: text(browser, "alert-text"), "the autoplay rule's message")
    assert alert.startswith("The browser starts audio only after a click on the page: click anywhere")
    browser.find_element(By.ID, "transcript-title").click()
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "chosen.wav"))
    wait(browser, lambda: text(browser, "status").startswith("Streaming"), "streaming the chosen file")
    wait(browser, lambda: text(browser, "status") == "Finished", "the file's end")
    assert finals(browser) == [chosen.text]

    idle_server.wait_idle()
    browser.execute_script(DROP_FILE, dropped_wav, "dropped.wav")
    wait(browser, lambda: text(browser, "status").startswith("Streaming"), "streaming the dropped file")
    wait(browser, lambda: text(browser, "status") == "Finished", "the file's end")
    assert finals(browser) == [chosen.text, dropped.text]
    screenshot(browser, tmp_path / "page-files.png")
