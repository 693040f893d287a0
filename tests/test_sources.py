"""Frame sources on real files: PIL-written images, OpenCV-written videos, the shipped photos."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_media import (
    BLUE,
    GREEN,
    PHOTOS,
    RED,
    VIDEO_FORMATS,
    WHITE,
    frame_index,
    numbered_frames,
    quadrant_colours,
    quadrants,
    save_image,
    write_video,
)
from PIL import Image

from agent.config import CameraConfig
from agent.errors import FrameDecodeError, SourceError, SourceUnavailable
from agent.sources import open_source, source_kind
from agent.sources.base import FrameSource, redact
from agent.sources.color import to_rgb
from agent.sources.files import FolderSource, ImageSource
from agent.sources.video import VideoFileSource

CODEC_TOLERANCE = 40  # JPEG/MPEG-4 chroma subsampling blurs saturated colours a little


def read_all(source: FrameSource, limit: int = 1000) -> list:
    """Every frame of an opened finite source, stopping at None."""
    frames = []
    for _ in range(limit):
        frame = source.read()
        if frame is None:
            return frames
        frames.append(frame)
    raise AssertionError(f"source did not end within {limit} reads")


def opened(camera: CameraConfig) -> FrameSource:
    source = open_source(camera)
    source.open()
    return source


def assert_colour(actual: np.ndarray, expected: tuple, tolerance: int = 0) -> None:
    assert np.abs(actual - np.array(expected)).max() <= tolerance, f"{actual.tolist()} is not ~{expected}"


def assert_quadrants(rgb: np.ndarray, tolerance: int, swapped: bool = False) -> None:
    colours = quadrant_colours(rgb)
    assert_colour(colours["top_left"], BLUE if swapped else RED, tolerance)
    assert_colour(colours["top_right"], GREEN, tolerance)
    assert_colour(colours["bottom_left"], RED if swapped else BLUE, tolerance)
    assert_colour(colours["bottom_right"], WHITE, tolerance)


# --- classification and the registry -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "kind"), [
    ("picamera2", "picamera2"),
    ("picamera2:1", "picamera2"),
    ("csi://0", "csi"),
    ("/dev/video0", "v4l2"),
    ("v4l2:///dev/video2", "v4l2"),
    ("/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920-video-index0", "v4l2"),
    ("rtsp://user:pw@cam.lan:554/stream1", "stream"),
    ("rtsps://cam.lan/live", "stream"),
    ("http://cam.lan/mjpg/video.mjpg", "stream"),
    ("https://cam.lan/video", "stream"),
    ("/nonexistent/clip.MP4", "video"),
    ("/nonexistent/clip.h264", "video"),
    ("/nonexistent/snap.JPG", "image"),
    ("/nonexistent/snap.webp", "image"),
])
def test_source_kind_classifies_cameras_urls_and_file_names(value: str, kind: str) -> None:
    assert source_kind(value) == kind


def test_source_kind_classifies_existing_paths_by_what_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "looks-like.jpg"
    folder.mkdir()
    unknown = tmp_path / "recording.bin"
    unknown.write_bytes(b"\x00" * 16)
    assert source_kind(str(folder)) == "folder"
    assert source_kind(str(tmp_path)) == "folder"
    assert source_kind(str(unknown)) == "video"


def test_source_kind_rejects_an_empty_value() -> None:
    with pytest.raises(ValueError, match="camera.source is empty"):
        source_kind("  ")


@pytest.mark.parametrize("value", ["picamera2:0", "csi://0", "/dev/video0", "rtsp://cam.lan/s"])
def test_camera_kinds_build_live_sources_without_touching_the_device(value: str) -> None:
    source = open_source(CameraConfig(source=value))
    assert source.live is True
    source.close()  # never opened: closing is harmless


def test_stream_description_and_open_error_hide_credentials() -> None:
    source = open_source(CameraConfig(source="rtsp://admin:hunter2@127.0.0.1:9/live?token=abc", timeout_s=1))
    with pytest.raises(SourceUnavailable) as raised:
        source.open()  # real OpenCV/FFmpeg against a closed port
    for text in (str(raised.value), source.description):
        assert "hunter2" not in text and "abc" not in text
        assert "127.0.0.1:9/live" in text


def test_redact_keeps_plain_paths_and_urls_without_secrets() -> None:
    assert redact("/srv/frames") == "/srv/frames"
    assert redact("http://cam.lan/video.mjpg") == "http://cam.lan/video.mjpg"
    assert redact("rtsp://u:p@cam.lan:554/s") == "rtsp://***@cam.lan:554/s"


@pytest.mark.parametrize("name", ["missing-folder", "missing.jpg", "missing.mp4"])
def test_missing_path_is_unavailable_and_named(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(SourceUnavailable, match="no such file or directory") as raised:
        open_source(CameraConfig(source=str(path)))
    assert str(path) in str(raised.value)


def test_open_source_builds_each_file_kind(tmp_path: Path) -> None:
    image = save_image(quadrants(), tmp_path / "q.png")
    video = write_video(tmp_path / "q.avi", [quadrants()] * 3)
    assert isinstance(open_source(CameraConfig(source=str(tmp_path))), FolderSource)
    assert isinstance(open_source(CameraConfig(source=str(image))), ImageSource)
    assert isinstance(open_source(CameraConfig(source=str(video))), VideoFileSource)


# --- colour order ------------------------------------------------------------------------------------------


def test_to_rgb_reverses_bgr_and_swap_rb_reverses_again() -> None:
    bgr = np.array([[[1, 2, 3]]], dtype=np.uint8)
    assert to_rgb(bgr, "BGR").tolist() == [[[3, 2, 1]]]
    assert to_rgb(bgr, "BGR", swap_rb=True).tolist() == [[[1, 2, 3]]]
    assert to_rgb(bgr, "RGB", swap_rb=True).tolist() == [[[3, 2, 1]]]


def test_to_rgb_expands_gray_drops_alpha_and_returns_contiguous_uint8() -> None:
    gray = np.array([[7, 8]], dtype=np.uint8)
    bgra = np.array([[[1, 2, 3, 255]]], dtype=np.uint8)
    assert to_rgb(gray, "RGB").tolist() == [[[7, 7, 7], [8, 8, 8]]]
    assert to_rgb(gray[:, :, np.newaxis], "BGR").shape == (1, 2, 3)
    converted = to_rgb(bgra, "BGR")
    assert converted.tolist() == [[[3, 2, 1]]]
    assert converted.flags["C_CONTIGUOUS"] and converted.dtype == np.uint8


def test_to_rgb_rejects_unknown_order_and_non_uint8() -> None:
    with pytest.raises(ValueError, match="colour order 'YUV'"):
        to_rgb(np.zeros((2, 2, 3), np.uint8), "YUV")
    with pytest.raises(ValueError, match="uint8"):
        to_rgb(np.zeros((2, 2, 3), np.float32), "RGB")


@pytest.mark.parametrize(("suffix", "tolerance"), [(".png", 0), (".jpg", CODEC_TOLERANCE)])
def test_image_file_yields_red_where_red_was_drawn(tmp_path: Path, suffix: str, tolerance: int) -> None:
    path = save_image(quadrants(), tmp_path / f"quadrants{suffix}")
    frame = opened(CameraConfig(source=str(path))).read()
    assert frame is not None and frame.rgb.shape == (64, 64, 3) and frame.rgb.dtype == np.uint8
    assert_quadrants(frame.rgb, tolerance)


@pytest.mark.parametrize(("fourcc", "suffix"), VIDEO_FORMATS)
def test_video_file_yields_red_where_red_was_drawn(tmp_path: Path, fourcc: str, suffix: str) -> None:
    path = write_video(tmp_path / f"quadrants{suffix}", [quadrants()] * 5, fourcc=fourcc)
    frame = opened(CameraConfig(source=str(path), fps=0)).read()
    assert frame is not None and frame.rgb.shape == (64, 64, 3) and frame.rgb.flags["C_CONTIGUOUS"]
    assert_quadrants(frame.rgb, CODEC_TOLERANCE)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".avi"])
def test_swap_rb_flips_red_and_blue_for_every_file_kind(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"quadrants{suffix}"
    if suffix == ".avi":
        write_video(path, [quadrants()] * 3)
    else:
        save_image(quadrants(), path)
    frame = opened(CameraConfig(source=str(path), fps=0, swap_rb=True)).read()
    assert frame is not None
    assert_quadrants(frame.rgb, CODEC_TOLERANCE, swapped=True)


# --- folders and single images ------------------------------------------------------------------------------


def make_folder(folder: Path, names: list) -> Path:
    folder.mkdir(exist_ok=True)
    for level, name in enumerate(names, start=1):
        save_image(np.full((8, 8, 3), level * 10, np.uint8), folder / name)
    return folder


def test_folder_yields_images_in_name_order_with_any_case_extension(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "frames", ["10.png", "02.JPG", "01.jpeg", "03.BMP", "04.webp"])
    frames = read_all(opened(CameraConfig(source=str(folder))))
    assert [f.origin for f in frames] == ["01.jpeg", "02.JPG", "03.BMP", "04.webp", "10.png"]
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]


def test_folder_ignores_non_images_hidden_files_and_subfolders(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "frames", ["a.png", ".hidden.png"])
    (folder / "notes.txt").write_text("not an image")
    (folder / "clip.mp4").write_bytes(b"\x00")
    (folder / "nested.jpg").mkdir()
    assert [f.origin for f in read_all(opened(CameraConfig(source=str(folder))))] == ["a.png"]


def test_folder_raises_decode_error_for_a_corrupt_file_then_continues(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "frames", ["01.png", "03.png"])
    (folder / "02.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    source = opened(CameraConfig(source=str(folder)))
    first = source.read()
    with pytest.raises(FrameDecodeError, match=r"02\.jpg: cannot decode image"):
        source.read()
    third = source.read()
    assert first is not None and third is not None
    assert (first.origin, third.origin) == ("01.png", "03.png")
    assert (first.seq, third.seq) == (1, 2)
    assert source.read() is None


def test_folder_truncated_jpeg_is_a_decode_error(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    whole = save_image(quadrants(), tmp_path / "whole.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FrameDecodeError, match="cut.jpg"):
        opened(CameraConfig(source=str(folder))).read()


def test_folder_loop_rescans_and_keeps_counting(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "frames", ["a.png", "b.png"])
    source = opened(CameraConfig(source=str(folder), loop=True))
    first_pass = [source.read(), source.read()]
    make_folder(folder, ["c.png"])
    second_pass = [source.read(), source.read(), source.read()]
    frames = [f for f in first_pass + second_pass if f is not None]
    assert [f.origin for f in frames] == ["a.png", "b.png", "a.png", "b.png", "c.png"]
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]


def test_folder_without_images_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(SourceUnavailable) as raised:
        opened(CameraConfig(source=str(tmp_path)))
    assert str(raised.value) == f"no images in {tmp_path} (looked for .jpg .jpeg .png .bmp .webp)"


def test_folder_frames_are_the_real_photos_as_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        (folder / photo.name).write_bytes(photo.read_bytes())
    frames = read_all(opened(CameraConfig(source=str(folder))))
    for frame, photo in zip(frames, sorted(PHOTOS)):
        expected = np.asarray(Image.open(photo).convert("RGB"))
        assert frame.origin == photo.name
        assert np.array_equal(frame.rgb, expected)


def test_image_source_gives_one_frame_then_ends(tmp_path: Path) -> None:
    path = save_image(quadrants(), tmp_path / "one.png")
    frames = read_all(opened(CameraConfig(source=str(path))))
    assert [(f.seq, f.origin) for f in frames] == [(1, "one.png")]


def test_image_source_with_loop_repeats_and_sees_a_rewritten_file(tmp_path: Path) -> None:
    path = save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "snapshot.png")
    source = opened(CameraConfig(source=str(path), loop=True))
    first = source.read()
    save_image(np.full((4, 4, 3), 200, np.uint8), path)
    second = source.read()
    assert first is not None and second is not None
    assert (first.seq, second.seq) == (1, 2)
    assert first.rgb.max() == 0 and second.rgb.min() == 200


def test_image_source_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.fromarray(quadrants(32, 64))  # wide
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif)
    frame = opened(CameraConfig(source=str(path))).read()
    assert frame is not None and frame.rgb.shape == (64, 32, 3)  # stood upright
    assert_colour(frame.rgb[8, 24].astype(int), RED, CODEC_TOLERANCE)  # red top-left went to top-right


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "LA"])
def test_image_source_converts_any_mode_to_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.fromarray(quadrants()).convert(mode)
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    if mode == "P":
        image.info["transparency"] = 0
    image.save(path)
    frame = opened(CameraConfig(source=str(path))).read()
    assert frame is not None and frame.rgb.shape == (64, 64, 3) and frame.rgb.dtype == np.uint8


def test_closing_a_source_twice_is_harmless(tmp_path: Path) -> None:
    save_image(quadrants(), tmp_path / "a.png")
    video = write_video(tmp_path / "clip.avi", [quadrants()] * 2)
    for value in (tmp_path, tmp_path / "a.png", video):
        source = opened(CameraConfig(source=str(value)))
        source.close()
        source.close()


def test_sources_describe_themselves_for_logs(tmp_path: Path) -> None:
    save_image(quadrants(), tmp_path / "a.png")
    source = open_source(CameraConfig(source=str(tmp_path)))
    assert source.description == f"folder {tmp_path}" and source.live is False


# --- video files --------------------------------------------------------------------------------------------


@pytest.fixture
def numbered_video(tmp_path: Path) -> Path:
    """A 2-second 30-fps MJPG video whose frame i has gray level 4*i."""
    return write_video(tmp_path / "numbered.avi", numbered_frames(60), fps=30.0)


@pytest.mark.parametrize(("fps", "expected"), [
    (5, list(range(0, 60, 6))),
    (0, list(range(60))),
    (1, [0, 30]),
    (100, list(range(60))),
])
def test_video_is_sampled_at_fps_in_video_time(numbered_video: Path, fps: float, expected: list) -> None:
    frames = read_all(opened(CameraConfig(source=str(numbered_video), fps=fps)))
    assert [f.origin for f in frames] == [f"numbered.avi#{i}" for i in expected]
    assert [frame_index(f.rgb) for f in frames] == expected  # the pixels are those of the named frame
    assert [f.seq for f in frames] == list(range(1, len(expected) + 1))


def test_video_loop_starts_over_and_keeps_counting(numbered_video: Path) -> None:
    source = opened(CameraConfig(source=str(numbered_video), fps=5, loop=True))
    frames = [source.read() for _ in range(25)]
    origins = [f.origin.split("#")[1] for f in frames if f is not None]
    assert origins == [str(i) for i in list(range(0, 60, 6)) * 2 + list(range(0, 30, 6))]
    assert [f.seq for f in frames if f is not None] == list(range(1, 26))
    source.close()


def test_video_that_opencv_cannot_open_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"definitely not a video container" * 10)
    with pytest.raises(SourceUnavailable, match="OpenCV cannot open this video") as raised:
        opened(CameraConfig(source=str(path)))
    assert str(path) in str(raised.value)


def test_video_without_opencv_tells_how_to_install_it(numbered_video: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # what `import cv2` sees on a device without OpenCV
    with pytest.raises(SourceUnavailable, match=r"python3-opencv.*catdog-agent\[opencv\]"):
        opened(CameraConfig(source=str(numbered_video)))


def test_single_frame_video_loops_over_its_frame(tmp_path: Path) -> None:
    video = write_video(tmp_path / "one.avi", numbered_frames(1))
    source = opened(CameraConfig(source=str(video), fps=0, loop=True))
    frames = [source.read(), source.read(), source.read()]
    assert [(f.seq, f.origin) for f in frames if f is not None] == [(1, "one.avi#0"), (2, "one.avi#0"),
                                                                     (3, "one.avi#0")]


def test_empty_video_ends_at_once_and_refuses_to_loop(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "empty.avi"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48)).release()
    assert opened(CameraConfig(source=str(path))).read() is None
    with pytest.raises(SourceError, match="video has no frames"):
        opened(CameraConfig(source=str(path), loop=True)).read()


def test_an_image_too_large_for_a_small_board_is_a_decode_error_read_from_its_header(tmp_path):
    from PIL import Image

    from agent.errors import FrameDecodeError
    from agent.sources.files import MAX_PIXELS, decode_image

    huge = tmp_path / "huge.png"
    Image.new("L", (8000, MAX_PIXELS // 8000 + 1)).save(huge)  # small file, 40+ Mpx when decoded
    with pytest.raises(FrameDecodeError, match="more than 40 megapixels"):
        decode_image(huge)
