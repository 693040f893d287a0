"""rapidjson as TF Serving uses it: PrettyWriter layout, debug strings, number texts, parse errors.

Part of the TF Serving stand-in (agent.devserver); never imported by the daemon.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import struct
from collections import deque
from typing import Any

try:  # optional: ~4x faster on big bodies; every document it cannot take exactly goes to the parser below
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None  # type: ignore[assignment]

_MAX_DEBUG_BYTES = 256  # kMaxJsonDebugStringBytes
INT64 = (-(2**63), 2**63 - 1)


class ApiError(Exception):
    """A TF status: error-code name and message; ``bare`` errors are answered with an empty body."""

    def __init__(self, code: str, message: str, bare: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.bare = bare


def invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


# --- JSON writing, as rapidjson's PrettyWriter ------------------------------------------------

_ESCAPES = {i: f"\\u{i:04X}" for i in range(0x20)}
_ESCAPES.update({0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"})


def quote(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"'


def encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # raw bytes from the request go back verbatim
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


class _Truncated(Exception):
    """The debug writer reached its byte budget (or a number it cannot write)."""


class PrettyWriter:
    """rapidjson::PrettyWriter with 4-space indent; ``single_line_arrays`` is kFormatSingleLineArray."""

    def __init__(self, limit: int | None = None):
        self.single_line_arrays = False
        self._parts: list[str] = []
        self._size = 0
        self._levels: list[list[Any]] = []  # [is_array, value_count] per open container
        self._limit = limit

    def text(self) -> str:
        return "".join(self._parts)

    def value(self, token: str) -> None:
        self._check()
        self._prefix()
        self._put(token)

    def string(self, text: str) -> None:
        self.value(quote(text))

    def failed_number(self) -> None:
        """What Writer::Double() does with NaN/Inf: the separator is written, the number is not."""
        self._check()
        self._prefix()
        raise _Truncated

    def start(self, is_array: bool) -> None:
        self._check()
        self._prefix()
        self._put("[" if is_array else "{")
        self._levels.append([is_array, 0])

    def end(self) -> None:
        self._check()
        is_array, count = self._levels.pop()
        if count and not (is_array and self.single_line_arrays):
            self._put("\n" + "    " * len(self._levels))
        self._put("]" if is_array else "}")

    def _check(self) -> None:
        if self._limit is not None and self._size >= self._limit:
            raise _Truncated

    def _put(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(encode(text)) if self._limit is not None else 0

    def _prefix(self) -> None:
        if not self._levels:
            return
        level = self._levels[-1]
        indent = "    " * len(self._levels)
        if level[0]:
            if level[1] > 0:
                self._put(", " if self.single_line_arrays else ",")
            if not self.single_line_arrays:
                self._put("\n" + indent)
        elif level[1] == 0:
            self._put("\n" + indent)
        elif level[1] % 2 == 0:
            self._put(",\n" + indent)
        else:
            self._put(": ")
        level[1] += 1


def _dtoa(value: float) -> str:
    """rapidjson's shortest double text (Grisu digits, Prettify layout): 1.0, 1e21, 1e-7, 0.001."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    k = int(exponent or 0) - len(fraction)
    while digits.endswith("0"):
        digits, k = digits[:-1], k + 1
    length = len(digits)
    kk = length + k
    if 0 <= k and kk <= 21:
        return f"{sign}{digits}{'0' * k}.0"
    if 0 < kk <= 21:
        return f"{sign}{digits[:kk]}.{digits[kk:]}"
    if -6 < kk <= 0:
        return f"{sign}0.{'0' * -kk}{digits}"
    if length == 1:
        return f"{sign}{digits}e{kk - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{kk - 1}"


def _write_json_value(writer: PrettyWriter, value: Any) -> None:
    if isinstance(value, dict):
        writer.start(False)
        for key, item in value.items():
            writer.string(key)
            _write_json_value(writer, item)
        writer.end()
    elif isinstance(value, list):
        writer.start(True)
        for item in value:
            _write_json_value(writer, item)
        writer.end()
    elif isinstance(value, str):
        writer.string(value)
    elif value is None or isinstance(value, bool):
        writer.value({None: "null", True: "true", False: "false"}[value])
    elif isinstance(value, int) and INT64[0] <= value <= 2**64 - 1:
        writer.value(str(value))
    elif math.isfinite(value):
        writer.value(_dtoa(float(value)))
    else:
        writer.failed_number()


def debug_string(value: Any) -> str:
    """JsonValueToDebugString(): single-line arrays, cut at the first event past 256 bytes."""
    writer = PrettyWriter(limit=_MAX_DEBUG_BYTES)
    writer.single_line_arrays = True
    with contextlib.suppress(_Truncated):
        _write_json_value(writer, value)
    return writer.text()


def error_body(message: str) -> str:
    """MakeJsonFromStatus(): ``{\\n    "error": "..."\\n}`` with no trailing newline."""
    return "{\n    " + '"error": ' + quote(message) + "\n}"


def float_token(value: float, single: bool) -> str:
    """WriteDecimal(): %g if it round-trips (to float32 for DT_FLOAT), else %.9g / %.17g; '.0' added."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = format(value, "g")
    parsed = struct.unpack("f", struct.pack("f", float(text)))[0] if single else float(text)
    if parsed != value:
        text = format(value, ".9g" if single else ".17g")
    return text if ("." in text or "e" in text) else text + ".0"


# --- JSON parsing, with rapidjson's error texts -----------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_CONTAINERS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_LITERALS = {"t": "true", "f": "false", "n": "null", "N": "NaN", "I": "Infinity"}
_UTF8_BOM = b"\xef\xbb\xbf"


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """rapidjson's FindMember() sees the first of duplicate keys: keep it, in document order."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_first_wins)


def _open_container(text: str, pos: int) -> str:
    stack: list[str] = []
    for match in _CONTAINERS.finditer(text, 0, pos):
        token = match.group()
        if token in "[{":
            stack.append(token)
        elif token in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _invalid_value_offset(text: str, pos: int) -> int:
    """Where rapidjson stops in a bad token: after the part of true/false/null/NaN that matched."""
    start = pos + 1 if text.startswith("-", pos) else pos
    word = _LITERALS.get(text[start : start + 1])
    if word is None:
        return start
    matched = 0
    while matched < len(word) and text.startswith(word[matched], start + matched):
        matched += 1
    return start + matched


def _parse_error(text: str, exc: json.JSONDecodeError) -> tuple[str, int]:
    """Python's JSON error -> rapidjson's GetParseError_En() text and offset (in characters)."""
    message, pos = exc.msg, exc.pos
    if message.startswith("Expecting value"):
        return "Invalid value.", _invalid_value_offset(text, pos)
    if message.startswith("Expecting property name"):
        return "Missing a name for object member.", pos
    if message.startswith("Expecting ':'"):
        return "Missing a colon after a name of object member.", pos
    if message.startswith("Expecting ','"):
        if _open_container(text, pos) == "{":
            return "Missing a comma or '}' after an object member.", pos
        return "Missing a comma or ']' after an array element.", pos
    if message.startswith("Unterminated string"):
        return "Missing a closing quotation mark in string.", len(text)
    if message.startswith("Invalid control character"):
        return "Invalid encoding in string.", pos
    if message.startswith("Invalid \\uXXXX"):
        return "Incorrect hex digit after \\u escape in string.", pos - 1
    if message.startswith("Invalid \\escape"):
        return "Invalid escape character in string.", pos
    return "Invalid value.", pos


_DIGIT_MARKS = bytes(48 if 48 <= code <= 57 else 120 for code in range(256))  # digit -> "0", other -> "x"
_LONG_RUN = b"0" * 19  # the shortest integer beyond int64 (orjson reads those as floats, Python as ints)


def _has_long_integer(text: bytes) -> bool:
    """Whether ``text`` may hold an integer token of 19 digits or more (fractions and exponents are fine)."""
    marks = text.translate(_DIGIT_MARKS)
    start = marks.find(_LONG_RUN)
    while start >= 0:  # ``start`` begins a run of digits: a longer run would have been found before
        end = marks.find(b"x", start)
        end = len(marks) if end < 0 else end
        if text[start - 1 : start] != b"." and text[end : end + 1] not in (b".", b"e", b"E"):
            return True
        start = marks.find(_LONG_RUN, end)
    return False


def _member_count_reaches(doc: Any, colons: int) -> bool:
    """True when the objects in ``doc`` hold ``colons`` members: then no key was a duplicate.

    Every member of an object has exactly one ``:`` in the text (others sit in strings), and orjson keeps
    only the last of duplicate keys, so a document with duplicates (or colons in strings) falls short.
    Objects are visited breadth first and the walk stops once the count is reached, before the big
    lists of numbers of a typical request.
    """
    count, pending = 0, deque([doc])
    while pending and count < colons:
        node = pending.popleft()
        items = node.values() if isinstance(node, dict) else node
        count += len(node) if isinstance(node, dict) else 0
        pending.extend(item for item in items if isinstance(item, (dict, list)))
    return count >= colons


def _fast_parse(text: bytes) -> dict[str, Any] | None:
    """orjson's parse when it equals the faithful one below, else None (NaN, errors, duplicates...)."""
    if orjson is None or _has_long_integer(text):
        return None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN/Infinity, trailing garbage, bad UTF-8, syntax errors
        return None
    if not isinstance(doc, dict) or not _member_count_reaches(doc, text.count(b":")):
        return None
    return doc


def parse_request_json(body: bytes) -> dict[str, Any]:
    """ParseJson(): NaN/Infinity accepted, trailing garbage ignored, the top level must be an object.

    orjson (when installed) parses the documents it reads exactly as this parser does; anything else
    (non-finite numbers, trailing garbage, duplicate keys, huge integers, every error) is parsed here.
    """
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    bom = len(_UTF8_BOM) if body.startswith(_UTF8_BOM) else 0
    fast = _fast_parse(body[bom:] if bom else body)
    if fast is not None:
        return fast
    text = body[bom:].decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        if start == len(text):
            raise json.JSONDecodeError("The document is empty.", text, start)
        doc, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        message, pos = (exc.msg, exc.pos) if start == len(text) else _parse_error(text, exc)
        offset = bom + len(encode(text[:pos]))
        raise invalid(f"JSON Parse error: {message} at offset: {offset}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {debug_string(doc)} Is not object")
    return doc
