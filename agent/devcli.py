"""Command line of the TF Serving stand-in: ``python -m agent.devserver --builtin | --onnx F | --model-base D``.

``--builtin-model mean_brightness`` serves the zero-cost model instead of the tutorial CNN; ``--jpeg-input``
puts an image-decoding signature (DT_STRING ``image_bytes``) in front of the --builtin/--onnx model.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from agent.devmodels import make_model_base
from agent.devserver import DevServer

# --- command line --------------------------------------------------------------------------------


def _versions_arg(text: str) -> tuple[int, ...]:
    try:
        versions = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"versions must be numbers like 1,2, not {text!r}") from None
    if not versions or min(versions) < 0:
        raise argparse.ArgumentTypeError(f"versions must be non-negative numbers like 1,2, not {text!r}")
    return versions


def _label_arg(text: str) -> tuple[str, str, int]:
    match = re.fullmatch(r"([^:=]+):([^:=]+)=([0-9]+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"a label is MODEL:LABEL=VERSION (e.g. cat_dog_classifier:stable=1), not {text!r}"
        )
    return match.group(1), match.group(2), int(match.group(3))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m agent.devserver", description="TF Serving REST stand-in for the demo and the tests."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base", type=Path, help="folder laid out as MODEL/VERSION/{model.onnx|builtin.json}")
    source.add_argument(
        "--builtin", action="store_true", help="serve the built-in CNN (random weights) from a temp folder"
    )
    source.add_argument("--onnx", type=Path, help="serve this ONNX file from a temporary model base")
    parser.add_argument("--model-name", default="cat_dog_classifier", help="model name for --builtin/--onnx")
    parser.add_argument(
        "--builtin-model",
        choices=("tutorial_cnn", "mean_brightness"),
        default="tutorial_cnn",
        help="model for --builtin: the tutorial CNN (random weights, ~9 ms/image) or mean_brightness (free)",
    )
    parser.add_argument(
        "--jpeg-input",
        nargs="?",
        const="unit",
        choices=("unit", "symmetric", "raw"),
        metavar="SCALE",
        help="serve the --builtin/--onnx model behind a 150x150 encoded-image input 'image_bytes' (DT_STRING); "
        "SCALE of the decoded pixels: unit (default), symmetric or raw",
    )
    parser.add_argument("--versions", type=_versions_arg, default=(1, 2), help="versions for --builtin/--onnx (1,2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--label", type=_label_arg, action="append", default=[], metavar="MODEL:LABEL=VERSION")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG logs every request")
    args = parser.parse_args(argv)
    if args.model_base is not None and (args.jpeg_input or args.builtin_model != "tutorial_cnn"):
        parser.error("--builtin-model and --jpeg-input apply to --builtin/--onnx; a --model-base has its own files")
    if args.onnx is not None and args.builtin_model != "tutorial_cnn":
        parser.error("--builtin-model applies to --builtin, not --onnx")
    return args


def _summary(server: DevServer) -> str:
    models = server.repository.models()
    versions = sorted({version for entries in models.values() for version, _ in entries})
    kinds = sorted({kind for entries in models.values() for _, kind in entries})
    return f"model={','.join(models)} versions={','.join(map(str, versions))} kind={','.join(kinds)}"


def _fill_model_base(base: Path, args: argparse.Namespace) -> None:
    """The temporary model base of --builtin/--onnx (with --builtin-model and --jpeg-input)."""
    builtin = None if args.onnx else {"model": args.builtin_model}
    jpeg_input = {"size": [150, 150], "scale": args.jpeg_input} if args.jpeg_input else None
    make_model_base(base, args.model_name, args.versions, onnx=args.onnx, builtin=builtin, jpeg_input=jpeg_input)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print one ``devserver listening on URL ...`` line once ready."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    labels: dict[str, dict[str, int]] = {}
    for model, label, version in args.label:
        labels.setdefault(model, {})[label] = version
    with contextlib.ExitStack() as stack:
        base = args.model_base
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="catdog-devserver-"))
            stack.callback(shutil.rmtree, base, True)
            _fill_model_base(base, args)
        try:
            server = stack.enter_context(DevServer(base, labels, args.host, args.port))
        except OSError as exc:
            print(f"error: devserver: cannot serve {base} on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"devserver listening on {server.url} {_summary(server)}", flush=True)
        while not stop.wait(0.2):
            pass
    return 0
