"""``streamd model create``: build an untrained architecture or train the tone model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from omegaconf import OmegaConf

from streamd.engine.loading import UNTRAINED_WARNING, parameter_count
from streamd.models.architectures import ARCHITECTURES, build_model
from streamd.offline.untrained import GENERATED_TOKENS_MAX, architecture_names

CALIBRATION_AUDIO_S = 60.0
# What each --train task trains.
TRAINED_ARCH = {"tones": "tiny", "digits": "tiny"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="create models (untrained architectures, the tone model)")
    actions = parser.add_subparsers(dest="model_action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="build a model of a named architecture and save it as .nemo",
        description=(
            "Build a cache-aware FastConformer-RNNT. Without --train the weights are UNTRAINED: "
            "its transcripts are meaningless; use it for shape, memory and speed benchmarks. "
            "--train tones trains the tiny architecture on the synthetic tone alphabet "
            "(letters a-h as sine tones) in about five minutes on a CPU. --train digits trains the tiny "
            "architecture on spoken digit strings synthesized by espeak-ng, flite, festival and piper "
            "voices (docs/models.md; about 20 minutes on 2 CPU cores). --tokens-per-second "
            "calibrates an untrained model to emit about that many tokens per second of speech-like "
            "audio, as a trained model does (an untrained one emits its maximum on every frame), so "
            "that its speed benchmarks count a realistic decoder cost (streamd.models.token_rate)."
        ),
    )
    create.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    create.add_argument("--out", required=True, help="output .nemo file")
    create.add_argument("--seed", type=int, default=0, help="same seed, same weights (default 0)")
    create.add_argument("--train", choices=sorted(TRAINED_ARCH), help="train on a task instead of random weights")
    create.add_argument("--steps", type=int, default=1500,
                        help="maximum training steps; stops early at 100%% held-out accuracy (default 1500)")
    create.add_argument("--tokens-per-second", type=float,
                        help="untrained only: calibrate the blank output per chunk size to emit about "
                             "this many tokens per second (a trained English model: 3-5)")
    create.set_defaults(func=run_create)
    offline = actions.add_parser(
        "create-offline",
        help="build an untrained Whisper or forced-aligner directory of a real architecture",
        description=(
            "Build a transformers Whisper (with the tokenizer, log-mel and generation settings of "
            "--like, an existing Whisper directory; its weights are not read) or an MMS-style CTC "
            "forced aligner, with UNTRAINED weights: the same cost per forward and per generated "
            "token as the real model, for `streamd bench offline` where the weights cannot be "
            "downloaded. Its outputs are meaningless. Whisper's generation stops at "
            f"{GENERATED_TOKENS_MAX} tokens (an untrained decoder never ends on its own)."
        ),
    )
    offline.add_argument("--arch", required=True, choices=architecture_names())
    offline.add_argument("--out", required=True, help="output directory")
    offline.add_argument("--like", help="Whisper only: a Whisper directory to take the tokenizer and settings from")
    offline.add_argument("--seed", type=int, default=0, help="same seed, same weights (default 0)")
    offline.set_defaults(func=run_create_offline)


def run_create(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.train and args.tokens_per_second is not None:
        print("--tokens-per-second calibrates untrained models only", file=sys.stderr)
        return 2
    if args.tokens_per_second is not None and args.tokens_per_second <= 0:
        print("--tokens-per-second must be positive", file=sys.stderr)
        return 2
    token_rate = None
    if args.train:
        if args.arch != TRAINED_ARCH[args.train]:
            print(f"--train {args.train} trains the {TRAINED_ARCH[args.train]} architecture only", file=sys.stderr)
            return 2
        model = _train(args.train, args.seed, args.steps)
        trained = dict(model.cfg.streamd.trained)
    else:
        model = build_model(args.arch, seed=args.seed)
        trained = None
        if args.tokens_per_second is not None:
            from streamd.models.token_rate import calibrate_token_rate, calibration_audio

            calibrate_token_rate(model, args.tokens_per_second, calibration_audio(CALIBRATION_AUDIO_S))
            token_rate = OmegaConf.to_container(model.cfg.streamd.token_rate)
    model.save_to(args.out)
    summary = {
        "out": args.out,
        "arch": args.arch,
        "parameters": parameter_count(model),
        "seed": args.seed,
        "trained": trained,
        "token_rate": token_rate,
        "seconds": round(time.monotonic() - started, 1),
    }
    _print_summary(summary, untrained=trained is None)
    return 0


def _train(task: str, seed: int, steps: int) -> Any:
    if task == "tones":
        from streamd.models.training import train_tone_model

        return train_tone_model(seed=seed, steps=steps)
    from streamd.models.digits_training import train_digits_model

    return train_digits_model(seed=seed, steps=steps)


def run_create_offline(args: argparse.Namespace) -> int:
    from streamd.offline import untrained

    started = time.monotonic()
    if args.arch in untrained.WHISPER_ARCHITECTURES:
        if not args.like:
            print(f"--arch {args.arch} needs --like WHISPER_DIR (its tokenizer and settings)", file=sys.stderr)
            return 2
        try:
            parameters = untrained.build_whisper(args.like, args.out, untrained.WHISPER_ARCHITECTURES[args.arch],
                                                 args.seed)
        except OSError as exc:  # transformers: no config.json / tokenizer there
            print(f"--like {args.like}: not a Whisper directory ({exc})", file=sys.stderr)
            return 2
    else:
        if args.like:
            print(f"--like is for Whisper architectures, not {args.arch}", file=sys.stderr)
            return 2
        parameters = untrained.build_aligner(args.out, untrained.ALIGNER_ARCHITECTURES[args.arch], args.seed)
    _print_summary({"out": args.out, "arch": args.arch, "parameters": parameters, "seed": args.seed,
                    "seconds": round(time.monotonic() - started, 1)}, untrained=True)
    return 0


def _print_summary(summary: dict[str, object], untrained: bool) -> None:
    """The JSON summary on stdout; an untrained model's warning goes into it (for scripts) and to
    stderr (for the person at the terminal, who may not read the JSON)."""
    if untrained:
        summary["warning"] = UNTRAINED_WARNING
    print(json.dumps(summary))
    if untrained:
        print(f"note: {UNTRAINED_WARNING}", file=sys.stderr)
