"""camera.skip_unchanged's gate (agent/scene.py) on the real sample photos, with a fake clock."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from helpers_media import SAMPLES
from PIL import Image

from agent.config import SkipUnchangedConfig
from agent.scene import CELL_DELTA, ChangeGate, EveryFrame, scene_gate

SIZE = (640, 480)  # width, height


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def photo(name: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB").resize(size, Image.BILINEAR))


CAT, DOG, PERSON = photo("chelsea.png"), photo("dog.jpg"), photo("person.jpg")


class Camera:
    """A camera's view of a still scene: new Gaussian sensor noise in every frame.

    The noise fields are drawn once and picked at random per frame (drawing 0.9 million normals a
    frame would make these tests slow); no two frames in a row share one.
    """

    def __init__(self, sigma: float, seed: int = 20261201, fields: int = 16):
        self.rng = np.random.default_rng(seed)
        shape = (SIZE[1], SIZE[0], 3)
        self.fields = [self.rng.normal(0.0, sigma, shape).astype(np.float32) for _ in range(fields)]
        self.last = -1

    def __call__(self, rgb: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """``rgb`` with this frame's noise, plus a brightness offset (levels)."""
        pick = (self.last + 1 + int(self.rng.integers(len(self.fields) - 1))) % len(self.fields)
        self.last = pick
        return np.clip(rgb + self.fields[pick] + np.float32(offset), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def noisy() -> Camera:
    return Camera(sigma=3.0)


def classified_indices(gate: ChangeGate, clock: FakeClock, frames: Iterable[np.ndarray],
                       step_s: float = 0.1) -> list[int]:
    """Feed frames ``step_s`` apart as the daemon does (each classification succeeds); which were sent."""
    sent = []
    for index, rgb in enumerate(frames):
        if gate.should_classify(rgb):
            gate.classified()
            sent.append(index)
        clock.now += step_s
    return sent


def with_object(scene: np.ndarray, thing: np.ndarray, top: int, left: int, share: float = 0.05) -> np.ndarray:
    """``scene`` with ``thing`` scaled to ``share`` of the picture pasted at (top, left)."""
    height, width = scene.shape[:2]
    patch_h, patch_w = round(height * share ** 0.5), round(width * share ** 0.5)
    patch = np.asarray(Image.fromarray(thing).resize((patch_w, patch_h), Image.BILINEAR))
    out = scene.copy()
    out[top:top + patch_h, left:left + patch_w] = patch
    return out


def positions(share: float = 0.05) -> list[tuple[int, int]]:
    """Places all over the picture, deliberately not aligned with the thumbnail's cells."""
    width, height = SIZE
    patch_h, patch_w = round(height * share ** 0.5), round(width * share ** 0.5)
    return [(top, left) for top in range(0, height - patch_h + 1, 67) for left in range(0, width - patch_w + 1, 71)]


def test_a_static_noisy_scene_is_classified_once_then_skipped(noisy):
    clock = FakeClock()
    gate = ChangeGate(threshold=0.02, max_interval_s=60, clock=clock)

    sent = classified_indices(gate, clock, (noisy(CAT) for _ in range(300)))  # 30 s at 10 fps

    assert sent == [0]
    assert gate.change == 0.0


def test_stronger_sensor_noise_still_changes_no_cell():
    low_light = Camera(sigma=8.0)
    gate = ChangeGate(clock=FakeClock())
    assert gate.should_classify(low_light(DOG))
    gate.classified()
    assert not any(gate.should_classify(low_light(DOG)) for _ in range(20))
    assert gate.change == 0.0


def test_max_interval_forces_a_classification_of_a_static_scene(noisy):
    clock = FakeClock()
    gate = ChangeGate(max_interval_s=5, clock=clock)

    sent = classified_indices(gate, clock, (noisy(CAT) for _ in range(21)), step_s=1.0)

    assert sent == [0, 5, 10, 15, 20]


@pytest.mark.parametrize(("scene", "thing"), [(CAT, DOG), (CAT, PERSON), (DOG, CAT), (DOG, PERSON), (PERSON, CAT)],
                         ids=["dog-on-cat", "person-on-cat", "cat-on-dog", "person-on-dog", "cat-on-person"])
def test_an_object_covering_5_percent_of_the_picture_is_detected_wherever_it_appears(noisy, scene, thing):
    for top, left in positions():
        gate = ChangeGate(threshold=0.02, max_interval_s=3600, clock=FakeClock())
        assert gate.should_classify(noisy(scene))
        gate.classified()
        assert not gate.should_classify(noisy(scene))

        assert gate.should_classify(noisy(with_object(scene, thing, top, left))), (top, left, gate.change)
        gate.classified()
        assert gate.should_classify(noisy(scene)), "it leaving again is a change too"


def test_a_few_percent_of_brightness_drift_does_not_trigger(noisy):
    clock = FakeClock()
    gate = ChangeGate(max_interval_s=3600, clock=clock)
    drifting = (noisy(CAT, offset=0.1 * index) for index in range(100))  # 10 levels: 4 % of the range

    assert classified_indices(gate, clock, drifting) == [0]


def test_a_slow_drift_adds_up_against_the_last_classified_frame_and_triggers_about_once_per_delta(noisy):
    clock = FakeClock()
    gate = ChangeGate(max_interval_s=3600, clock=clock)
    drifting = (noisy(CAT, offset=0.2 * index) for index in range(300))  # 60 levels in all

    sent = classified_indices(gate, clock, drifting)

    assert len(sent) == 3 and sent[0] == 0, sent
    gaps_in_levels = [0.2 * (later - earlier) for earlier, later in zip(sent, sent[1:])]
    assert all(CELL_DELTA - 3 <= gap <= CELL_DELTA + 1 for gap in gaps_in_levels), gaps_in_levels


def test_a_cat_to_dog_switch_is_detected_on_its_first_frame_and_back_again(noisy):
    clock = FakeClock()
    gate = ChangeGate(max_interval_s=3600, clock=clock)
    frames = [noisy(CAT) for _ in range(10)] + [noisy(DOG) for _ in range(10)] + [noisy(CAT)] * 5

    assert classified_indices(gate, clock, frames) == [0, 10, 20]


def test_a_frame_whose_classification_failed_never_becomes_the_reference(noisy):
    clock = FakeClock()
    gate = ChangeGate(max_interval_s=10, clock=clock)
    assert gate.should_classify(noisy(CAT))
    gate.classified()

    clock.now += 1
    assert gate.should_classify(noisy(DOG))  # ... and its request fails: no classified()
    clock.now += 1
    assert gate.should_classify(noisy(DOG)), "still compared with the cat"
    gate.classified()
    clock.now += 1
    assert not gate.should_classify(noisy(DOG))


def test_the_first_frame_is_classified_until_one_succeeds(noisy):
    gate = ChangeGate(clock=FakeClock())
    assert gate.should_classify(noisy(CAT)) and gate.change is None
    assert gate.should_classify(noisy(CAT)), "no classification yet: nothing to compare with"


def test_max_interval_counts_from_the_last_classified_frame_not_the_last_one_asked_about(noisy):
    clock = FakeClock()
    gate = ChangeGate(max_interval_s=10, clock=clock)
    assert gate.should_classify(noisy(CAT))
    gate.classified()
    clock.now += 6
    assert gate.should_classify(noisy(DOG))  # fails
    clock.now += 3
    assert not gate.should_classify(noisy(CAT))
    clock.now += 1
    assert gate.should_classify(noisy(CAT)), "10 s since the last classified frame"


def test_a_frame_of_another_size_is_a_change(noisy):
    gate = ChangeGate(clock=FakeClock())
    assert gate.should_classify(noisy(CAT))
    gate.classified()
    assert gate.should_classify(photo("chelsea.png", size=(1280, 720)))


@pytest.mark.parametrize(("width", "height", "cells"), [(640, 480, (24, 32)), (1280, 720, (18, 32)),
                                                        (451, 300, (21, 32)), (64, 48, (24, 32)), (40, 2, (2, 32))])
def test_thumbnail_keeps_the_aspect_ratio_and_averages_each_colour(width, height, cells):
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[...] = (10, 128, 250)

    thumb = ChangeGate().thumbnail(rgb)

    assert thumb.shape == (*cells, 3)
    assert np.allclose(thumb, (10, 128, 250))


def test_a_change_is_a_colour_mean_moving_by_more_than_the_delta():
    gate = ChangeGate(threshold=0.5, clock=FakeClock())
    base = np.full((48, 64, 3), 100, dtype=np.uint8)
    assert gate.should_classify(base)
    gate.classified()
    assert not gate.should_classify(base + np.uint8(CELL_DELTA))  # exactly the delta: not more
    assert gate.should_classify(base + np.uint8(CELL_DELTA + 1)) and gate.change == 1.0
    same_brightness = base.copy()
    same_brightness[..., 0], same_brightness[..., 2] = 70, 130  # as bright, another colour
    assert gate.should_classify(same_brightness) and gate.change == 1.0


def test_threshold_is_the_share_of_cells_that_must_change():
    gate = ChangeGate(threshold=0.25, clock=FakeClock())
    base = np.zeros((48, 64, 3), dtype=np.uint8)  # 24 x 32 cells of 2 x 2 pixels
    assert gate.should_classify(base)
    gate.classified()
    quarter = base.copy()
    quarter[:24, :32] = 255
    assert gate.should_classify(quarter) and gate.change == 0.25
    less = base.copy()
    less[:22, :32] = 255
    assert not gate.should_classify(less) and gate.change < 0.25


def test_scene_gate_follows_the_config():
    assert isinstance(scene_gate(None), EveryFrame)
    assert EveryFrame().should_classify(CAT) and EveryFrame().change is None
    gate = scene_gate(SkipUnchangedConfig(threshold=0.1, max_interval_s=5))
    assert isinstance(gate, ChangeGate) and (gate.threshold, gate.max_interval_s) == (0.1, 5)
