// The AudioWorklet processor: runs on the browser's audio thread, so capture never waits for
// the page's main thread. It turns the 128-sample render quanta into frames of 16-bit PCM
// (pcm_s16le, at the AudioContext's rate; the server resamples) and measures each frame's
// level for the meter. The node is created with one input channel, so the browser has already
// down-mixed stereo sources to mono.

const SILENCE = new Float32Array(128); // one render quantum

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = options.processorOptions.frameSamples;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
    // "flush": the source has ended; send what is left of the frame, then say so (messages
    // keep their order, so the page has every frame when it reads "flushed").
    this.port.onmessage = ({ data }) => {
      if (data === "flush") {
        if (this.filled > 0) {
          this.flush();
        }
        this.port.postMessage("flushed");
      }
    };
  }

  process(inputs) {
    // No channel: the browser stopped a silent source's rendering (a muted track). It is still
    // time passing: send it as silence, so the server's clock and its endpointing keep going.
    const samples = inputs[0][0] ?? SILENCE;
    for (const sample of samples) {
      // Clipped to the 16-bit range: a float beyond ±1 (a resampler's overshoot) must not wrap.
      const clipped = Math.max(-1, Math.min(1, sample));
      this.frame[this.filled++] = Math.round(clipped * 32767);
      this.sumSquares += clipped * clipped;
      if (this.filled === this.frameSamples) {
        this.flush();
      }
    }
    return true;
  }

  flush() {
    const rms = Math.sqrt(this.sumSquares / this.filled);
    // The buffer is transferred, not copied (it is detached here): a fresh one takes its place.
    this.port.postMessage({ pcm: this.frame.buffer, samples: this.filled, rms },
      [this.frame.buffer]);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
  }
}

registerProcessor("streamd-capture", CaptureProcessor);
