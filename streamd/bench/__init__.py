"""Benchmarks behind ``streamd bench``: the engine stepped directly (:mod:`.engine`), a real
server with real clients (:mod:`.server`), the offline Whisper and aligner models
(:mod:`.offline`), and what their results record about the machine (:mod:`.machine`)."""
