"""Where our frame path spends its CPU: cProfile of the agent's stages on 640x480 frames.

Run: .venv/bin/python bench/profile_frame.py [--frames 300] [--encoding json|b64_jpeg] [--top 25]

Same set-up as ``frame_path.py`` (private mosquitto, the stand-in with a zero-cost model, the agent's
own stages wired as the daemon wires them); profiles the frame loop's thread with cProfile and prints
the top functions by own time, then the CPU split between the loop's thread and the rest of the
process (paho's network thread and the outbox sender).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frame_path  # noqa: E402  (the bench folder is not a package)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--encoding", choices=("json", "b64_jpeg"), default="json")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from agent.devbroker import LocalBroker
    from agent.devserver import make_model_base

    work = Path(tempfile.mkdtemp(prefix="catdog-profile-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        base = work / "models"
        make_model_base(base, frame_path.MODEL, (1,), builtin={"model": "mean_brightness"})
        make_model_base(base, frame_path.JPEG_MODEL, (1,), builtin={"model": "mean_brightness"},
                        jpeg_input={"input": "image_bytes", "size": [150, 150], "scale": "unit"})
        devserver, url = frame_path.start_devserver(base)
        stack.callback(devserver.wait, 10)
        stack.callback(devserver.terminate)
        broker = stack.enter_context(LocalBroker().start())
        frames = frame_path.load_frames(frame_path.make_frames(work / "frames"))
        config = frame_path.agent_config(work / "profile.yaml", url=url, port=broker.port, source=work / "frames",
                                         state_dir=work / "state", encoding=args.encoding, device="profile")
        ours = frame_path.Ours(config)
        stack.callback(ours.close)
        for seq in range(20):  # warm-up: connections, caches, the outbox's first pages
            ours.frame(frames[seq % len(frames)], seq)
        ours.settle()

        profiler = cProfile.Profile()
        process_0, thread_0 = time.process_time(), time.thread_time()
        profiler.enable()
        for seq in range(args.frames):
            ours.frame(frames[seq % len(frames)], seq)
        profiler.disable()
        thread_ms = (time.thread_time() - thread_0) * 1000.0 / args.frames
        ours.settle()
        process_ms = (time.process_time() - process_0) * 1000.0 / args.frames

        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
        print(f"CPU per frame under the profiler: {process_ms:.2f} ms for the process, {thread_ms:.2f} ms of it "
              f"on the frame loop's thread, {process_ms - thread_ms:.2f} ms on the others (paho, outbox sender)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
