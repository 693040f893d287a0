"""Command line: run | check | predict | snapshot | demo | watch."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

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

    watch = commands.add_parser("watch", help="print what devices publish (results, availability, state)")
    watch.add_argument("--config", type=Path, help="take broker and prefix from this agent config")
    watch.add_argument("--host", default=None)
    watch.add_argument("--port", type=int, default=None)
    watch.add_argument("--prefix", default=None)
    watch.add_argument("--device", default="+", help="one device id (default: all)")
    watch.set_defaults(handler=cmd_watch)
    return parser


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
    from agent.watch import Watcher

    host, port, prefix = args.host, args.port, args.prefix
    if args.config is not None:
        from agent.configload import load_config

        config = load_config(args.config)
        host, port, prefix = host or config.mqtt.host, port or config.mqtt.port, prefix or config.mqtt.topic_prefix
    watcher = Watcher(host or "localhost", port or 1883, prefix or "catdog", args.device, out=sys.stdout).start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    return EXIT_OK
