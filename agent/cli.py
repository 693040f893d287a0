"""Command line: run | check | predict | snapshot | demo | watch | assign."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.config import Config
from agent.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    AgentError,
    ConfigError,
    SourceUnavailable,
)

if TYPE_CHECKING:
    from agent.fleet import Target
    from agent.fleetclient import BrokerAddress

logger = logging.getLogger("agent")



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # `run` stops on SIGINT by itself (exit 0); anything else was cut short
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one-line reason the contract promises for exit 1
        logging.getLogger("agent").critical("unexpected failure: %s: %s", type(exc).__name__, exc, exc_info=True)
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catdog-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"catdog-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent (the systemd service runs this)")
    _config_args(run)
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check", help="validate the config and try server, model, broker and camera once")
    _config_args(check)
    check.set_defaults(handler=cmd_check)

    predict = commands.add_parser("predict", help="classify image files through the server (no broker needed)")
    _config_args(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.set_defaults(handler=cmd_predict)

    snapshot = commands.add_parser("snapshot", help="save what the model would see from the camera (to aim it "
                                                    "and check colours)")
    _config_args(snapshot)
    snapshot.add_argument("out", type=Path, metavar="OUT.jpg", help="picture to write (.jpg or .png)")
    snapshot.set_defaults(handler=cmd_snapshot)

    demo = commands.add_parser("demo", help="the whole pipeline on this machine: photos, stand-in server, mosquitto")
    demo.add_argument("--onnx", metavar="FILE", help="serve this ONNX model (default: $CATDOG_ONNX_MODEL, "
                                                      "else the built-in model with meaningless outputs)")
    demo.add_argument("--loop", action="store_true", help="replay the photos until Ctrl-C")
    demo.add_argument("--fps", type=float, default=2.0, help="frames classified per second (default 2)")
    demo.set_defaults(handler=cmd_demo)

    watch = commands.add_parser("watch", help="a live table of every device (--lines: one line per message)")
    watch.add_argument("--config", type=Path, help="take broker, prefix, user and TLS from this agent config")
    watch.add_argument("--broker", type=_broker, metavar="HOST[:PORT]", help="the MQTT broker (or --host/--port)")
    watch.add_argument("--host", default=None)
    watch.add_argument("--port", type=int, default=None)
    watch.add_argument("--prefix", type=_prefix, default=None, help="topic prefix (default catdog)")
    watch.add_argument("--device", default="+", help="one device id (default: all)")
    watch.add_argument("--lines", action="store_true", help="one line per message instead of the table")
    watch.add_argument("--interval", type=_seconds, default=5.0, metavar="S",
                       help="stdout not a terminal: print the table every S seconds if it changed (default 5)")
    _broker_auth_args(watch)
    watch.set_defaults(handler=cmd_watch, parser=watch)

    assign = commands.add_parser("assign", help="pin a model version or label on a device or a group:NAME")
    assign.add_argument("--broker", type=_broker, metavar="HOST[:PORT]", required=True, help="the MQTT broker")
    assign.add_argument("--prefix", type=_prefix, default="catdog", help="topic prefix (default catdog)")
    assign.add_argument("--timeout", type=_seconds, default=20.0, metavar="S",
                        help="wait at most S seconds for the online devices' answers (default 20)")
    assign.add_argument("--retain", action="store_true",
                        help="retain the command on the broker: offline devices apply it when they come back")
    assign.add_argument("--retained-wait", type=_seconds, default=1.5, metavar="S",
                        help="collect the devices' retained state for S seconds (group, unknown device; default 1.5)")
    _broker_auth_args(assign)
    assign.add_argument("target", type=_target, metavar="TARGET", help="a device id, or group:NAME")
    change = assign.add_mutually_exclusive_group(required=True)
    change.add_argument("--version", type=_model_version, metavar="N", help="pin model version N (1 or more)")
    change.add_argument("--label", type=_model_label, metavar="L", help="pin the version label L (e.g. canary)")
    change.add_argument("--clear", action="store_true", help="drop the assigned pin: back to the configured one")
    assign.set_defaults(handler=cmd_assign)
    return parser


def _broker_auth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--username", metavar="U", help="broker user name")
    parser.add_argument("--password-file", metavar="F", help="file holding the broker password (needs --username)")
    parser.add_argument("--ca-certs", metavar="FILE", help="TLS with this CA bundle (default port 8883)")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's CAs (default port 8883)")


def _broker(text: str) -> BrokerAddress:
    from agent.fleetclient import BrokerAddress

    try:
        return BrokerAddress.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _target(text: str) -> Target:
    from agent.fleet import Target

    try:
        return Target.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prefix(text: str) -> str:
    if not text.strip("/") or any(c in text for c in "+#\0"):
        raise argparse.ArgumentTypeError(f"not a topic prefix (no wildcards): {text!r}")
    return text.strip("/")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return value


def _model_version(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a model version is a whole number of 1 or more, not {text!r}")
    return int(text)


def _model_label(text: str) -> str:
    from agent.fleet import Change

    try:
        return Change(label=text).label or ""
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, required=True, help="the device's YAML file")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override the config's log_level")


def load(args: argparse.Namespace) -> Config:
    from agent.configload import load_config
    from agent.logsetup import configure_logging

    config = load_config(args.config)
    configure_logging(args.log_level or config.log_level)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import run

    return run(load(args))


def cmd_check(args: argparse.Namespace) -> int:
    from agent.checks import Checker, CheckLine
    from agent.daemon import make_serving_client

    try:
        config = load(args)
    except ConfigError:
        print(f"✗ config: {args.config} is invalid", flush=True)
        raise
    print(CheckLine(True, "config", f"{config.path} is valid (device {config.device.id})").render(), flush=True)
    serving = make_serving_client(config, threading.Event())
    failed = 0
    for line in Checker(config, serving).run():
        print(line.render(), flush=True)
        failed += not line.ok
    serving.close()
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from agent.predictcmd import predict_files

    config = load(args)
    failures = 0
    for line, ok in predict_files(config, [Path(p) for p in args.images]):
        print(line, flush=True)
        failures += not ok
    return EXIT_FAILURE if failures else EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    from agent.snapshot import take_snapshot

    config = load(args)
    try:
        print(take_snapshot(config, args.out).describe(), flush=True)
    except SourceUnavailable as exc:  # like `run`: a missing camera is 69, not a crash
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(onnx=args.onnx, loop=args.loop, fps=args.fps)


def cmd_watch(args: argparse.Namespace) -> int:
    from agent.watch import watch

    try:
        return watch(args)
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        return EXIT_OK


def cmd_assign(args: argparse.Namespace) -> int:
    from agent.fleet import Change, assign
    from agent.fleetclient import Credentials

    change = Change(version=args.version, label=args.label, clear=args.clear)
    credentials = Credentials(username=args.username, password_file=args.password_file, tls=args.tls,
                              ca_certs=args.ca_certs)
    report = assign(args.broker, args.target, change, prefix=args.prefix, timeout=args.timeout, retain=args.retain,
                    credentials=credentials, retained_wait=args.retained_wait)
    for message in report.messages:
        print(message, file=sys.stderr, flush=True)
    for line in report.lines:
        print(line, flush=True)
    return report.code
