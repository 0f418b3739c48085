"""In-memory fixes for third-party packages, applied by :mod:`streamd.shims` only when needed."""
