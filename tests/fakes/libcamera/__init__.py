"""A fake of the parts of libcamera's Python bindings (apt python3-libcamera) that picamera2 users touch.

Only importable when tests/fakes is put first on sys.path; see tests/fakes/picamera2 for the camera itself.
"""

from __future__ import annotations


class Transform:
    """libcamera.Transform(rotation=0, hflip=False, vflip=False, transpose=False): flips done by the ISP."""

    def __init__(self, rotation: int = 0, hflip: bool = False, vflip: bool = False, transpose: bool = False):
        if rotation not in (0, 180):
            # The real binding also accepts 90/270 (as a transpose); the Pi ISP cannot do them.
            raise ValueError(f"fake libcamera: rotation {rotation} is not supported here")
        flip = rotation == 180
        self.hflip = bool(hflip) != flip
        self.vflip = bool(vflip) != flip
        self.transpose = bool(transpose)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Transform)
                and (self.hflip, self.vflip, self.transpose) == (other.hflip, other.vflip, other.transpose))

    def __hash__(self) -> int:
        return hash((self.hflip, self.vflip, self.transpose))

    def __repr__(self) -> str:
        names = [name for name in ("hflip", "vflip", "transpose") if getattr(self, name)]
        return f"<libcamera.Transform '{'/'.join(names) or 'identity'}'>"


class ColorSpace:
    """libcamera.ColorSpace; only the named presets picamera2's configurations use."""

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def Sycc() -> ColorSpace:
        return ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> ColorSpace:
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace("Rec709")

    @staticmethod
    def Raw() -> ColorSpace:
        return ColorSpace("RAW")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ColorSpace) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"
