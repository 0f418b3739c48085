"""The model shipped inside the package: what `streamd serve`, `streamd transcribe` and the browser
page use when no model is named, so that a new user hears something work in seconds.

It is the tone model (`streamd model create --arch tiny --train tones --seed 0`: letters a-h
spoken as sine tones, see :mod:`streamd.models.tones` and README's quick start).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "tones.nemo"


def default_model_path() -> Path:
    """The bundled model's file (inside the installed package)."""
    return Path(str(resources.files("streamd.models").joinpath("data", DEFAULT_MODEL)))


def model_or_default(name_or_path: str | None) -> str:
    """``name_or_path``, or the bundled model's path when none is named."""
    return name_or_path or str(default_model_path())
