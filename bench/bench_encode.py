"""Frame-path costs on this machine: tutorial JSON vs predict_body, and fit() on camera-sized frames.

Run: .venv/bin/python bench/bench_encode.py [--repeat N]
Medians over N runs; the alternatives alternate inside one loop so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from agent.encode import PixelEncoder, predict_body
from agent.preprocess import InputSpec, fit, normalize
from agent.sources.files import decode_image

SAMPLES = Path(__file__).resolve().parent.parent / "agent" / "samples"
PHOTOS = ["chelsea.png", "dog.jpg", "person.jpg"]
MODEL_SPEC = InputSpec(150, 150)


def tutorial_body(pixels: np.ndarray) -> bytes:
    """The classic client: float64 /255, tolist, json.dumps."""
    batch = np.expand_dims(pixels / 255.0, 0)
    return json.dumps({"signature_name": "serving_default", "instances": batch.tolist()}).encode()


def median_ms(runs: list[float]) -> float:
    return statistics.median(runs) * 1000


def timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def fast_body(pixels: np.ndarray, encoder: PixelEncoder) -> bytes:
    return predict_body(pixels, encoder, input_name="conv2d_input", signature="serving_default")


def bench_encoding(repeat: int) -> None:
    encoder = PixelEncoder("unit")
    print(f"\nrequest body for one 150x150x3 frame (median of {repeat})")
    print(f"{'photo':<12} {'tutorial ms':>12} {'bytes':>10} {'predict_body ms':>16} {'bytes':>10} "
          f"{'speed-up':>9} {'max abs err':>12}")
    for name in PHOTOS:
        pixels = fit(decode_image(SAMPLES / name), MODEL_SPEC)
        slow_runs, fast_runs = [], []
        for _ in range(repeat):
            slow_runs.append(timed(tutorial_body, pixels))
            fast_runs.extend(timed(fast_body, pixels, encoder) for _ in range(10))
        body = fast_body(pixels, encoder)
        decoded = np.array(json.loads(body)["instances"][0]["conv2d_input"])
        error = float(np.abs(decoded - normalize(pixels, "unit")).max())
        slow_ms, fast_ms = median_ms(slow_runs), median_ms(fast_runs)
        print(f"{name:<12} {slow_ms:>12.2f} {len(tutorial_body(pixels)):>10,} {fast_ms:>16.3f} {len(body):>10,} "
              f"{slow_ms / fast_ms:>8.0f}x {error:>12.2e}")


def bench_fit(repeat: int) -> None:
    photo = Image.open(SAMPLES / "dog.jpg").convert("RGB")
    print(f"\nfit() to 150x150 (median of {repeat}, ms)")
    modes = [("stretch", "bilinear"), ("stretch", "bicubic"), ("stretch", "area"), ("letterbox", "bilinear"),
             ("crop", "bilinear")]
    print(f"{'frame':<10}" + "".join(f"{m + '/' + i:>20}" for m, i in modes))
    for width, height in [(640, 480), (1280, 720)]:
        frame = np.asarray(photo.resize((width, height), Image.BICUBIC))
        specs = [InputSpec(150, 150, resize=m, interpolation=i) for m, i in modes]
        runs: list[list[float]] = [[] for _ in specs]
        for _ in range(repeat):
            for spec, spec_runs in zip(specs, runs):
                spec_runs.append(timed(fit, frame, spec))
        print(f"{width}x{height:<5}" + "".join(f"{median_ms(r):>20.2f}" for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per measurement")
    args = parser.parse_args()
    bench_encoding(args.repeat)
    bench_fit(args.repeat * 4)


if __name__ == "__main__":
    main()
