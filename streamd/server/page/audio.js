// Audio for a session: the microphone or a local file, both played into the same AudioWorklet
// node (capture-worklet.js), which hands out 16-bit PCM frames at the AudioContext's rate.

const FRAME_MS = 20; // a frame is sent as soon as it is full: small frames add little latency

let context = null;

// One AudioContext for the page's lifetime (browsers limit how many a page may create), at the
// rate the browser prefers: the server resamples, so nothing is resampled twice.
export async function audioContext() {
  if (context === null) {
    context = new AudioContext({ latencyHint: "interactive" });
    await context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
  }
  if (context.state === "suspended") {
    // A context made before any click on the page stays suspended (autoplay policy), and
    // resume() then never settles: give it a moment, then say what to do.
    await Promise.race([context.resume(), new Promise((resolve) => setTimeout(resolve, 1000))]);
    if (context.state === "suspended") {
      throw new DOMException("audio before a click on the page", "AutoplayError");
    }
  }
  return context;
}

// The worklet node and its frames: onFrame(pcm: Int16Array, rms: number) for each frame.
export class Capture {
  constructor(ctx, onFrame) {
    this.node = new AudioWorkletNode(ctx, "streamd-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0, // a sink: the browser pulls it without a connection to the speakers
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers", // stereo files are averaged to mono by the browser
      processorOptions: { frameSamples: Math.round((ctx.sampleRate * FRAME_MS) / 1000) },
    });
    this.flushed = null;
    this.node.port.onmessage = ({ data }) => {
      if (data === "flushed") {
        this.flushed?.();
      } else {
        onFrame(new Int16Array(data.pcm, 0, data.samples), data.rms);
      }
    };
  }

  // Resolves once every frame the worklet holds has been handed out.
  flush() {
    return new Promise((resolve) => {
      this.flushed = resolve;
      this.node.port.postMessage("flush");
    });
  }

  close() {
    this.node.port.onmessage = null;
    this.node.disconnect();
  }
}

// The microphone: getUserMedia's stream, without the browser's voice processing (echo
// cancellation, noise suppression and gain control change the signal the model was trained on).
export class MicrophoneSource {
  static async open(deviceId) {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new DOMException("no mediaDevices in an insecure context", "SecurityError");
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        deviceId: deviceId ? { exact: deviceId } : undefined,
        channelCount: 1,
        echoCancellation: false,
        noiseSuppression: false,
        autoGainControl: false,
      },
    });
    return new MicrophoneSource(stream);
  }

  constructor(stream) {
    this.stream = stream;
    this.node = null;
    const [track] = stream.getAudioTracks();
    this.label = track?.label || "microphone";
  }

  get kind() {
    return "microphone";
  }

  start(ctx, sink) {
    this.node = ctx.createMediaStreamSource(this.stream);
    this.node.connect(sink);
  }

  // The microphone is released (the browser's recording indicator goes off).
  stop() {
    this.node?.disconnect();
    this.node = null;
    for (const track of this.stream.getTracks()) {
      track.stop();
    }
  }
}

// A local file, decoded by the browser and played in real time into the same sink (and to the
// speakers, so you hear what is transcribed). It remembers where it stopped: a reconnect
// carries on from there.
export class FileSource {
  static async open(ctx, file) {
    const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
    return new FileSource(buffer, file.name);
  }

  constructor(buffer, name) {
    this.buffer = buffer;
    this.label = name;
    this.offset = 0; // seconds already played
    this.node = null;
  }

  get kind() {
    return "file";
  }

  get finished() {
    return this.offset >= this.buffer.duration;
  }

  // onEnded() once the whole file has been played.
  start(ctx, sink, onEnded) {
    const node = ctx.createBufferSource();
    node.buffer = this.buffer;
    node.connect(sink);
    node.connect(ctx.destination);
    const startedAt = ctx.currentTime - this.offset;
    node.onended = () => {
      this.offset = this.buffer.duration;
      onEnded();
    };
    node.start(0, this.offset);
    this.node = node;
    this.played = () => ctx.currentTime - startedAt;
  }

  stop() {
    if (this.node !== null) {
      this.node.onended = null;
      this.node.stop();
      this.node.disconnect();
      this.offset = Math.min(this.played(), this.buffer.duration);
      this.node = null;
    }
  }
}
