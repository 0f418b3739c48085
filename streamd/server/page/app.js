// The page's controls, transcript and messages. Testable contract: #transcript holds the text
// of all finals, #partial the current partial, and ?autostart=1 (with &chunk_ms=N) starts the
// microphone on load; ?token=T is the access token for a server that has tokens.

import { audioContext, Capture, FileSource, MicrophoneSource } from "./audio.js";
import { Session } from "./session.js";

const CHUNK_SIZES = ["80", "160", "560", "1120"];
const ENDPOINT_SILENCE_MS = 800;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  statusText: $("status-text"),
  device: $("device"),
  chunk: $("chunk"),
  endpointing: $("endpointing"),
  tokenField: $("token-field"),
  token: $("token"),
  start: $("start"),
  stop: $("stop"),
  level: $("level"),
  file: $("file"),
  fileName: $("file-name"),
  dropzone: $("dropzone"),
  alert: $("alert"),
  alertText: $("alert-text"),
  reconnect: $("reconnect"),
  finalize: $("finalize"),
  copy: $("copy"),
  download: $("download"),
  transcript: $("transcript"),
  partial: $("partial"),
  placeholder: $("placeholder"),
  latency: $("latency"),
  latencySummary: $("latency-summary"),
  utterances: $("utterances"),
  model: $("model"),
};

const params = new URLSearchParams(location.search);

// What the page is doing: idle (nothing open), starting (opening the source and the
// connection), live (audio flows), ending (eof sent, waiting for the last final).
let state = "idle";
let session = null;
let source = null; // a MicrophoneSource or FileSource; a FileSource survives for a reconnect
let capture = null;
let connections = 0; // sessions that reached ready: word times restart with each
let latencies = []; // this session's update latencies, ms

// ---------------------------------------------------------------------- status and messages
function setState(next, text) {
  state = next;
  ui.status.dataset.state = next;
  ui.statusText.textContent = text;
  const busy = next !== "idle";
  ui.start.disabled = busy;
  ui.file.disabled = busy;
  ui.device.disabled = busy;
  ui.chunk.disabled = busy;
  ui.endpointing.disabled = busy;
  ui.stop.disabled = next === "idle" || next === "ending";
  ui.finalize.disabled = next !== "live";
  ui.dropzone.classList.toggle("disabled", busy);
  if (next === "idle") {
    showLevel(0);
  }
}

function showAlert(text, canReconnect) {
  ui.alertText.textContent = text;
  ui.reconnect.hidden = !canReconnect;
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
}

function startError(kind, error) {
  if (error.name === "AutoplayError") {
    return kind === "microphone"
      ? "The browser starts audio only after a click on the page: press Start microphone."
      : "The browser starts audio only after a click on the page: click anywhere on it, then choose or drop the file again.";
  }
  return kind === "microphone" ? microphoneError(error) : `This file cannot be played: ${error.message || error.name}.`;
}

function microphoneError(error) {
  switch (error.name) {
    case "NotAllowedError":
      return "Microphone access was refused. Allow the microphone for this page in the browser " +
        "(the icon in the address bar), then start again, or stream an audio file instead.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found (or the chosen one is gone). Choose another, or stream an audio file.";
    case "NotReadableError":
      return "The microphone could not be opened: another program may be using it.";
    case "SecurityError":
      return "The browser allows the microphone only on a secure page: open it over https://, or as " +
        "http://localhost or http://127.0.0.1 on the server's own machine.";
    default:
      return `The microphone could not be started: ${error.message || error.name}.`;
  }
}

// A browser never sees why an upgrade was refused (only close 1006), so ask /readyz.
async function whyRefused(withToken) {
  let body;
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    body = await response.json();
  } catch {
    return "The connection to the server was refused, and the server does not answer: is it running?";
  }
  switch (body.status) {
    case "full":
      return `The server is full (${body.sessions} of ${body.max_sessions} sessions in use). Try again in a moment.`;
    case "loading":
      return "The server is still loading its model. Try again in a moment.";
    case "draining":
      return "The server is shutting down.";
    case "failed":
      return "The server's engine failed; the server is restarting.";
    default:
      if (body.token_required) {
        ui.tokenField.hidden = false;
        return withToken
          ? "The server refused the access token. Check it and try again."
          : "The server requires an access token: enter it above (or open the page with ?token=…), then try again.";
      }
      return "The server refused the connection: too many sessions from this address, or this page's " +
        "address is not among the server's allowed origins.";
  }
}

function serverError(error) {
  const known = {
    shutting_down: "The server is shutting down; the transcript so far is kept.",
    idle_timeout: "The session ended: the server received no audio for too long.",
    max_session: "The session reached the server's length limit.",
    internal_error: "The server failed while transcribing; the transcript so far is kept.",
  };
  return known[error.code] ?? `The server ended the session: ${error.message} (${error.code}).`;
}

// ---------------------------------------------------------------------- the transcript
function finalsText() {
  return [...ui.transcript.children].map((line) => line.textContent).join("\n");
}

function updatePlaceholder() {
  const empty = ui.transcript.childElementCount === 0 && ui.partial.textContent === "";
  ui.placeholder.hidden = !empty;
  ui.copy.disabled = ui.download.disabled = ui.transcript.childElementCount === 0;
}

function addLine(text, unconfirmed) {
  const line = document.createElement("p");
  line.textContent = text;
  if (unconfirmed) {
    line.className = "unconfirmed";
    line.title = "The connection was lost before this utterance's final: this is its last partial.";
  }
  ui.transcript.append(line);
}

function formatMs(ms) {
  return ms === null ? "–" : `${Math.round(ms)} ms`;
}

function showLatency(ms, kind) {
  if (ms === null) {
    return;
  }
  latencies.push(ms);
  ui.latency.textContent = `${formatMs(ms)} (${kind})`;
  const sorted = [...latencies].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  ui.latencySummary.textContent = `· median ${formatMs(median)} over ${latencies.length} updates`;
}

function addUtterance(final, latency) {
  const item = document.createElement("li");
  const head = document.createElement("div");
  head.className = "utterance-head";
  const span = document.createElement("span");
  span.textContent = `${final.start.toFixed(2)}–${final.end.toFixed(2)} s`;
  const meta = document.createElement("span");
  meta.className = "hint";
  meta.textContent = `${final.reason} · final after ${formatMs(latency)}` +
    (connections > 1 ? ` · connection ${connections}` : "");
  head.append(span, meta);

  const words = document.createElement("div");
  words.className = "words";
  for (const word of final.words ?? []) {
    const chip = document.createElement("span");
    chip.className = "word";
    if (word.confidence !== undefined) {
      chip.title = `${word.start.toFixed(2)}–${word.end.toFixed(2)} s · confidence ${Math.round(word.confidence * 100)}%`;
      chip.classList.toggle("uncertain", word.confidence < 0.6);
    }
    const text = document.createElement("span");
    text.className = "word-text";
    text.textContent = word.word;
    const time = document.createElement("span");
    time.className = "word-time";
    time.textContent = word.start.toFixed(2);
    chip.append(text, time);
    words.append(chip);
  }
  item.append(head, words);
  ui.utterances.prepend(item); // newest first: it is the one being checked
}

// ---------------------------------------------------------------------- the level meter
function showLevel(rms) {
  // -60 dBFS (silence) .. 0 dBFS (full scale) onto 0..100 %
  const db = rms > 0 ? 20 * Math.log10(rms) : -60;
  const percent = Math.round(Math.min(100, Math.max(0, ((db + 60) / 60) * 100)));
  ui.level.style.setProperty("--level", `${percent}%`);
  ui.level.setAttribute("aria-valuenow", String(percent));
}

// ---------------------------------------------------------------------- a session
function socketUrl() {
  const url = new URL(".", location.href); // the page's own server, under any proxy prefix
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const token = ui.token.value.trim();
  if (token) {
    url.searchParams.set("token", token); // a browser cannot send an Authorization header
  }
  return url.href;
}

async function start(kind, makeSource) {
  hideAlert();
  setState("starting", "Starting…");
  let ctx;
  try {
    // The microphone first: a page that is capturing may start its AudioContext without a
    // click (?autostart=1); a file needs the context to be decoded.
    if (kind === "microphone") {
      source = await makeSource();
      ctx = await audioContext();
    } else {
      ctx = await audioContext();
      source = await makeSource(ctx);
    }
  } catch (error) {
    source?.stop();
    source = null;
    setState("idle", "Not connected");
    showAlert(startError(kind, error), false);
    return;
  }
  if (kind === "microphone") {
    listDevices(); // labels are readable once the microphone is allowed
  }
  connect(ctx);
}

function connect(ctx) {
  setState("starting", "Connecting…");
  hideAlert();
  latencies = [];
  const withToken = ui.token.value.trim() !== "";
  const config = {
    sample_rate: ctx.sampleRate,
    encoding: "pcm_s16le",
    chunk_ms: Number(ui.chunk.value),
    endpointing: { enabled: ui.endpointing.checked, silence_ms: ENDPOINT_SILENCE_MS },
  };
  const current = new Session(socketUrl(), config, {
    onReady(ready) {
      connections += 1;
      ui.model.textContent = `streamd · model ${ready.model.name}`;
      setState("live", `${source.kind === "file" ? "Streaming" : "Listening"} · ${ready.config.chunk_ms} ms chunks`);
      if (source.kind === "file") {
        source.start(ctx, capture.node, () => stop()); // played from here: nothing to hold back
      }
    },
    onPartial(partial, latency) {
      ui.partial.textContent = partial.text;
      updatePlaceholder();
      showLatency(latency, "partial");
    },
    onFinal(final, latency) {
      ui.partial.textContent = "";
      if (final.text) {
        addLine(final.text, false);
        addUtterance(final, latency);
      }
      updatePlaceholder();
      showLatency(latency, "final");
    },
    onClose(outcome) {
      closed(current, outcome, withToken);
    },
  });
  session = current;
  capture = new Capture(ctx, (pcm, rms) => {
    current.sendAudio(pcm);
    showLevel(rms);
  });
  if (source.kind === "microphone") {
    source.start(ctx, capture.node); // heard from now on, sent once the server is ready
  }
}

async function closed(ended, outcome, withToken) {
  if (ended !== session) {
    return;
  }
  session = null;
  capture?.close();
  capture = null;
  source?.stop();
  if (source?.kind === "file") {
    ui.fileName.textContent = `${source.finished ? "Streamed" : "Stopped"} ${source.label}`;
  }
  if (outcome.done && !outcome.error) {
    setState("idle", "Finished");
    return;
  }
  if (outcome.byPage) {
    setState("idle", "Not connected"); // stopped before the server was ready
    return;
  }
  // Whatever was provisional stays readable: the server never finalized it.
  if (ui.partial.textContent) {
    addLine(ui.partial.textContent, true);
    ui.partial.textContent = "";
    updatePlaceholder();
  }
  const canResume = !(source?.kind === "file" && source.finished);
  let message;
  if (outcome.error) {
    message = serverError(outcome.error);
  } else if (!outcome.opened) {
    setState("starting", "Checking the server…");
    message = await whyRefused(withToken);
  } else {
    message = outcome.code === 1006
      ? "The connection to the server was lost."
      : `The server closed the connection (code ${outcome.code}${outcome.reason ? `: ${outcome.reason}` : ""}).`;
  }
  setState("idle", outcome.opened ? "Disconnected" : "Not connected");
  showAlert(message, canResume);
}

async function stop() {
  if (state === "starting" && session !== null) {
    session.close();
    return;
  }
  if (state !== "live") {
    return;
  }
  setState("ending", "Finishing…");
  source.stop();
  await capture.flush(); // every frame sent before eof
  session.end();
}

// ---------------------------------------------------------------------- the controls
async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) {
    return;
  }
  const chosen = ui.device.value;
  const inputs = (await navigator.mediaDevices.enumerateDevices())
    .filter((device) => device.kind === "audioinput" && device.deviceId !== "default" && device.deviceId);
  ui.device.replaceChildren(new Option("Default microphone", ""));
  inputs.forEach((device, index) => {
    ui.device.append(new Option(device.label || `Microphone ${index + 1}`, device.deviceId));
  });
  ui.device.value = [...ui.device.options].some((option) => option.value === chosen) ? chosen : "";
}

function startMicrophone() {
  start("microphone", () => MicrophoneSource.open(ui.device.value));
}

function startFile(file) {
  if (state !== "idle" || !file) {
    return;
  }
  ui.fileName.textContent = `Streaming ${file.name}`;
  ui.fileName.hidden = false;
  start("file", (ctx) => FileSource.open(ctx, file));
}

// The transcript stays; a file carries on from where it stopped, a microphone opens afresh.
async function reconnect() {
  if (source?.kind === "file") {
    connect(await audioContext());
  } else {
    startMicrophone();
  }
}

function download() {
  const blob = new Blob([`${finalsText()}\n`], { type: "text/plain" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().slice(0, 19).replaceAll(":", "-");
  link.download = `transcript-${stamp}.txt`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function copy() {
  try {
    await navigator.clipboard.writeText(finalsText());
    ui.copy.textContent = "Copied";
  } catch {
    ui.copy.textContent = "Copy failed";
  }
  setTimeout(() => { ui.copy.textContent = "Copy"; }, 1500);
}

function setUpDropping() {
  // Anywhere on the page: a file dropped beside the zone must not make the browser open it.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    ui.dropzone.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) {
      ui.dropzone.classList.remove("over");
    }
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropzone.classList.remove("over");
    startFile(event.dataTransfer?.files[0]);
  });
}

async function init() {
  const chunk = params.get("chunk_ms");
  if (CHUNK_SIZES.includes(chunk)) {
    ui.chunk.value = chunk;
  }
  const token = params.get("token");
  if (token) {
    ui.token.value = token;
  }
  ui.start.addEventListener("click", startMicrophone);
  ui.stop.addEventListener("click", stop);
  ui.finalize.addEventListener("click", () => session?.finalize());
  ui.reconnect.addEventListener("click", reconnect);
  ui.copy.addEventListener("click", copy);
  ui.download.addEventListener("click", download);
  ui.file.addEventListener("change", () => {
    startFile(ui.file.files[0]);
    ui.file.value = ""; // the same file can be chosen again
  });
  setUpDropping();
  navigator.mediaDevices?.addEventListener?.("devicechange", listDevices);
  listDevices();
  updatePlaceholder();
  setState("idle", "Not connected");

  if (params.get("autostart") === "1") {
    startMicrophone();
  }
  // Whether this server wants a token: ask before the first refusal.
  try {
    const ready = await (await fetch("readyz", { cache: "no-store" })).json();
    if (ready.token_required && !token) {
      ui.tokenField.hidden = false;
    }
  } catch {
    // the first connection says what is wrong
  }
}

init();
