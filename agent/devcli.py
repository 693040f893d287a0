"""Command line of the TF Serving stand-in: ``python -m agent.devserver --builtin | --onnx F | --model-base D``."""

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
    parser.add_argument("--versions", type=_versions_arg, default=(1, 2), help="versions for --builtin/--onnx (1,2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--label", type=_label_arg, action="append", default=[], metavar="MODEL:LABEL=VERSION")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG logs every request")
    return parser.parse_args(argv)


def _summary(server: DevServer) -> str:
    models = server.repository.models()
    versions = sorted({version for entries in models.values() for version, _ in entries})
    kinds = sorted({kind for entries in models.values() for _, kind in entries})
    return f"model={','.join(models)} versions={','.join(map(str, versions))} kind={','.join(kinds)}"


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
            make_model_base(base, args.model_name, args.versions, onnx=args.onnx)
        try:
            server = stack.enter_context(DevServer(base, labels, args.host, args.port))
        except OSError as exc:
            print(f"error: devserver: cannot serve {base} on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"devserver listening on {server.url} {_summary(server)}", flush=True)
        while not stop.wait(0.2):
            pass
    return 0
