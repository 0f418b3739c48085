"""Stand-ins for packages NeMo imports but streamd never uses (installed by :mod:`streamd.shims`)."""
