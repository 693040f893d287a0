"""Model outputs -> Classification(label, score, scores).

A reply is checked before it is believed: a server that answers with the wrong shape, NaN or a
value that is not a probability is a BadReplyError, never a "cat" (style habit 9).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import BadReplyError

# Probabilities from float32 softmax/sigmoid can stray a hair outside [0, 1].
_EPS = 1e-4


@dataclass(frozen=True)
class Classification:
    label: str
    score: float
    scores: Mapping[str, float]


def first_output(reply: Any, output_name: str | None) -> list[float]:
    """The first instance's output values from a row (``predictions``) or columnar (``outputs``) reply."""
    if not isinstance(reply, dict):
        raise BadReplyError(f"reply is not a JSON object: {_short(reply)}")
    if "predictions" in reply:
        rows = reply["predictions"]
        if not isinstance(rows, list) or not rows:
            raise BadReplyError(f"'predictions' is not a non-empty list: {_short(rows)}")
        return _values(_named(rows[0], output_name))
    if "outputs" in reply:
        tensor = _named(reply["outputs"], output_name)
        if not isinstance(tensor, list) or not tensor:
            raise BadReplyError(f"'outputs' is not a non-empty list: {_short(tensor)}")
        return _values(tensor[0])
    keys = ", ".join(map(str, reply)) or "none"
    raise BadReplyError(f"reply has neither 'predictions' nor 'outputs' (keys: {keys})")


def classify(values: Sequence[float], labels: Sequence[str], threshold: float = 0.5) -> Classification:
    """One sigmoid value = p(labels[1]); otherwise one softmax score per label."""
    for value in values:
        if not math.isfinite(value) or not -_EPS <= value <= 1 + _EPS:
            raise BadReplyError(f"output {value!r} is not a probability in [0, 1] (values: {_short(values)})")
    probs = [min(max(v, 0.0), 1.0) for v in values]
    if len(probs) == 1 and len(labels) == 2:
        probs = [1.0 - probs[0], probs[0]]
    elif len(probs) != len(labels):
        raise BadReplyError(f"model returned {len(values)} values but model.labels has {len(labels)} "
                            f"({', '.join(labels)})")
    scores = {label: round(p, 4) for label, p in zip(labels, probs)}
    if len(labels) == 2:
        winner = labels[1] if probs[1] >= threshold else labels[0]
    else:
        winner = labels[max(range(len(probs)), key=probs.__getitem__)]
    return Classification(winner, scores[winner], scores)


def _named(row: Any, output_name: str | None) -> Any:
    """Several outputs come as an object keyed by output name; one output comes bare."""
    if not isinstance(row, dict):
        return row
    if output_name is None:
        if len(row) == 1:
            return next(iter(row.values()))
        raise BadReplyError(f"reply has several outputs ({', '.join(map(str, row))}); set model.output")
    if output_name not in row:
        raise BadReplyError(f"reply lacks output {output_name!r} (has: {', '.join(map(str, row))})")
    return row[output_name]


def _values(value: Any) -> list[float]:
    """Flatten one instance's output ([p], [[p]], [p0, p1] or a bare number) to floats."""
    flat: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    if not flat or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise BadReplyError(f"output is not a list of numbers: {_short(value)}")
    try:
        return [float(v) for v in flat]
    except OverflowError as exc:  # a JSON integer too large for a float
        raise BadReplyError(f"output value out of range: {_short(value)}") from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
