// One WebSocket session of streamd's native protocol (docs/protocol.md):
// config -> ready -> binary audio -> partial/final ... -> eof -> final -> done -> close 1000.
// It also measures the latency of every update, as clients/common.py does: from sending the
// audio that an update covers to receiving the update.

export class Session {
  // handlers: onReady(ready), onPartial(partial, latencyMs), onFinal(final, latencyMs),
  // onClose(outcome) with outcome {opened, done, error, code, reason, byPage}.
  constructor(url, config, handlers) {
    this.config = config;
    this.handlers = handlers;
    this.sentSeconds = 0; // audio sent so far, in seconds
    this.sent = []; // [seconds of audio sent including a frame, when it was sent]; oldest first
    this.requestedAt = null; // when finalize or eof was sent: a final it asked for counts from here
    this.outcome = { opened: false, done: false, error: null, code: null, reason: "", byPage: false };
    this.ready = false;
    this.queue = []; // audio captured before ready (the microphone runs from the start)

    this.socket = new WebSocket(url);
    this.socket.binaryType = "arraybuffer";
    this.socket.onopen = () => {
      this.outcome.opened = true;
      this.socket.send(JSON.stringify({ type: "config", ...config }));
    };
    this.socket.onmessage = (event) => this.receive(event.data);
    // A refused upgrade (HTTP 503, 401, ...) and a lost connection both end here: the browser
    // says no more than close code 1006, so the page asks /readyz why.
    this.socket.onclose = (event) => {
      this.outcome.code = event.code;
      this.outcome.reason = event.reason;
      this.handlers.onClose(this.outcome);
    };
  }

  receive(data) {
    if (typeof data !== "string") {
      return; // the server sends no binary frames
    }
    const message = JSON.parse(data);
    switch (message.type) {
      case "ready":
        this.ready = true;
        this.handlers.onReady(message);
        for (const pcm of this.queue.splice(0)) {
          this.sendAudio(pcm);
        }
        break;
      case "partial":
        this.handlers.onPartial(message, this.latencySince(message.audio_seconds));
        break;
      case "final": {
        const asked = message.reason === "finalize" || message.reason === "eof";
        const latency = asked && this.requestedAt !== null
          ? performance.now() - this.requestedAt
          : this.latencySince(message.end);
        this.requestedAt = null;
        this.handlers.onFinal(message, latency);
        break;
      }
      case "done":
        this.outcome.done = true;
        break;
      case "error":
        this.outcome.error = message;
        break;
      default:
        break; // a newer server's message this page does not know: ignore it
    }
  }

  // Milliseconds since the frame that brought the sent audio to `seconds` went out (null if
  // the update covers audio this session never sent, e.g. after a reconnect).
  latencySince(seconds) {
    const covering = this.sent.findIndex(([sentSeconds]) => sentSeconds >= seconds - 0.001);
    if (covering < 0) {
      return null;
    }
    const latency = performance.now() - this.sent[covering][1];
    this.sent.splice(0, covering); // later updates cover later audio
    return latency;
  }

  get open() {
    return this.socket.readyState === WebSocket.OPEN;
  }

  sendAudio(pcm) {
    if (!this.ready) {
      // Held until the server is ready, so the first words are not lost to the connection's
      // set-up; a server that never answers is noticed long before this grows large.
      this.queue.push(pcm);
      return;
    }
    if (!this.open) {
      return;
    }
    this.socket.send(pcm);
    this.sentSeconds += pcm.length / this.config.sample_rate;
    this.sent.push([this.sentSeconds, performance.now()]);
  }

  finalize() {
    if (this.open) {
      this.requestedAt = performance.now();
      this.socket.send(JSON.stringify({ type: "finalize" }));
    }
  }

  // No more audio: the server sends the last final and done, then closes.
  end() {
    if (this.open) {
      this.requestedAt = performance.now();
      this.socket.send(JSON.stringify({ type: "eof" }));
    }
  }

  close() {
    this.outcome.byPage = true;
    this.socket.close(1000);
  }
}
