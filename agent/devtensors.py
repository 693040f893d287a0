"""TF Serving's json_tensor.cc: request JSON -> input tensors, output tensors -> reply JSON.

Part of the TF Serving stand-in (agent.devserver); never imported by the daemon.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from agent.devjson import INT64, ApiError, PrettyWriter, debug_string, float_token, invalid
from agent.devmodeltypes import TensorSpec

# --- JSON -> tensors (FillPredictRequestFromJson) ----------------------------------------------


@dataclass(frozen=True)
class _DType:
    name: str  # TF's DataTypeString(): float, int32, ...
    carrier: Any  # numpy dtype the JSON values are collected in
    target: Any  # numpy dtype of the tensor
    accepts: Callable[[Any], bool]
    fast_types: frozenset[type] = frozenset()  # leaf types the vectorised path may take as they are


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= high


_INT32 = _int_in(-(2**31), 2**31 - 1)  # rapidjson IsInt(): no range check for int8/int16/uint8
_DTYPES = {
    "DT_FLOAT": _DType("float", np.float64, np.float32, _is_number, frozenset({int, float})),
    "DT_DOUBLE": _DType("double", np.float64, np.float64, _is_number, frozenset({int, float})),
    "DT_INT32": _DType("int32", np.int64, np.int32, _INT32),
    "DT_INT16": _DType("int16", np.int64, np.int16, _INT32),
    "DT_INT8": _DType("int8", np.int64, np.int8, _INT32),
    "DT_UINT8": _DType("uint8", np.int64, np.uint8, _INT32),
    "DT_INT64": _DType("int64", np.int64, np.int64, _int_in(*INT64)),
    "DT_UINT32": _DType("uint32", np.uint64, np.uint32, _int_in(0, 2**32 - 1)),
    "DT_UINT64": _DType("uint64", np.uint64, np.uint64, _int_in(0, 2**64 - 1)),
    "DT_BOOL": _DType("bool", np.bool_, np.bool_, lambda value: type(value) is bool, frozenset({bool})),
    "DT_STRING": _DType("string", object, object, lambda value: isinstance(value, str)),
}


def _type_name(dtype: str) -> str:
    return dtype.removeprefix("DT_").lower() if dtype in _DTYPES or dtype.startswith("DT_") else dtype


def json_type(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "Null", True: "True", False: "False"}[value]
    if isinstance(value, (dict, list, str)):
        return {dict: "Object", list: "Array", str: "String"}[type(value)]
    return "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _type_error(value: Any, dtype: str) -> ApiError:
    return invalid(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: {_type_name(dtype)}"
    )


def _leaf(value: Any, dtype: str) -> Any:
    """AddValueToTensor() for one JSON leaf (objects are b64 strings or type errors)."""
    if isinstance(value, dict):
        if dtype != "DT_STRING":
            raise _type_error(value, dtype)
        if not _is_b64(value):
            raise invalid(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
        text = value["b64"]
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except ValueError:
            raise invalid("Unable to base64 decode") from None
    kind = _DTYPES.get(dtype)
    if kind is None:
        message = f"Conversion of JSON Value: {debug_string(value)} to type: {_type_name(dtype)}"
        raise ApiError("UNIMPLEMENTED", message)
    if not kind.accepts(value):
        raise _type_error(value, dtype)
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _dense_shape(value: Any) -> tuple[int, ...]:
    """GetDenseTensorShape(): the shape read from the first child at every level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _regular_leaves(value: Any, shape: tuple[int, ...]) -> list[Any] | None:
    """The leaves of a value whose every list has the size ``shape`` says, at C speed; else None.

    Only lengths are checked level by level. In parsed JSON, a string or an object standing where a list
    belongs passes that check only when it is not empty (every size is > 0 here), and then puts strings
    into the level below, down to the leaves, where the callers' type checks refuse them.
    """
    if 0 in shape:
        return None
    level = [value]
    try:
        for size in shape:
            if set(map(len, level)) != {size}:
                return None
            level = list(chain.from_iterable(level))
    except TypeError:  # a number, a bool or null where a list belongs
        return None
    return level


def _float_array(leaves: list[Any]) -> np.ndarray | None:
    """float64 values of leaves that are all JSON numbers, else None.

    sum() refuses strings, null, lists and objects at C speed (np.fromiter would take "1.5" and null);
    bools pass both as 0/1, so the leaves where a 0 or a 1 landed have their type checked.
    """
    try:
        sum(leaves)
        array = np.fromiter(leaves, np.float64, len(leaves))
    except (TypeError, OverflowError):  # OverflowError: an integer beyond float range
        return None
    suspects = np.flatnonzero((array == 0) | (array == 1)).tolist()
    return None if bool in {type(leaves[i]) for i in suspects} else array


def _fast_array(value: Any, shape: tuple[int, ...], kind: _DType) -> np.ndarray | None:
    """The carrier array of a regular, well-typed value, vectorised; None sends it to the exact slow path."""
    leaves = _regular_leaves(value, shape) if kind.fast_types else None
    if leaves is None:
        return None
    if kind.carrier is np.float64:
        return _float_array(leaves)
    return np.array(leaves, dtype=kind.carrier) if kind.fast_types.issuperset(map(type, leaves)) else None


def _collect(value: Any, level: int, shape: tuple[int, ...], dtype: str, out: list[Any]) -> list[Any]:
    """FillTensorProto(): depth first, so the first error is the one TF reports."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        out.append(_leaf(value, dtype))
        return out
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _collect(item, level + 1, shape, dtype, out)
    return out


def _tensor_from_json(value: Any, dtype: str) -> np.ndarray:
    shape = _dense_shape(value)
    kind = _DTYPES.get(dtype)
    if kind is None:  # an unsupported dtype: only an empty tensor gets through _collect
        _collect(value, 0, shape, dtype, [])
        return np.zeros(shape, np.float32)
    carried = _fast_array(value, shape, kind)
    if carried is None:
        carried = np.array(_collect(value, 0, shape, dtype, []), dtype=kind.carrier)
    with np.errstate(all="ignore"):  # float32 overflow becomes inf, as rapidjson's GetFloat()
        return carried.astype(kind.target, copy=False).reshape(shape)


def _add_item(value: Any, name: str, specs: dict[str, TensorSpec], items: dict[str, list[np.ndarray]]) -> None:
    """AddInstanceItem(): one instance of one input; every instance must match the first."""
    if name not in specs:
        raise invalid(f"JSON object: does not have named input: {name}")
    array = _tensor_from_json(value, specs[name].dtype)
    seen = items.setdefault(name, [])
    if seen and seen[0].size != array.size:
        raise invalid(f"Expecting tensor size: {seen[0].size} but got: {array.size}")
    if seen and seen[0].shape != array.shape:
        raise invalid(f"Expecting shape {_shape_text(seen[0].shape)} but got: {_shape_text(array.shape)}")
    seen.append(array)


def _add_named_instance(index: int, element: Any, specs: dict[str, TensorSpec], items: dict[str, Any]) -> None:
    if not _is_element_object(element):
        raise invalid(f"Expecting object but got list at item {index} of input list")
    for key, value in element.items():
        try:
            _add_item(value, key, specs, items)
        except ApiError as exc:
            message = f"Failed to process element: {index} key: {key} of 'instances' list. Error: {exc.code}: {exc}"
            raise invalid(message) from None
    if set(element) != set(specs):
        raise invalid(
            f"Failed to process element: {index} of 'instances' list. JSON object: {debug_string(element)} "
            f"keys must be equal to: {','.join(sorted(specs))}"
        )


def _instances_tensors(instances: list[Any], specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList(): element 0 decides between plain values and named objects."""
    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    named = _is_element_object(instances[0])
    items: dict[str, list[np.ndarray]] = {}
    for index, element in enumerate(instances):
        if named:
            _add_named_instance(index, element, specs, items)
            continue
        if _is_element_object(element):
            raise invalid(f"Expecting value/list but got object at item {index} of input list")
        try:
            _add_item(element, sorted(specs)[0], specs, items)
        except ApiError as exc:
            raise invalid(f"Failed to process element: {index} of 'instances' list. Error: {exc.code}: {exc}") from None
    return {name: np.stack(arrays) for name, arrays in items.items()}


def _inputs_tensors(value: Any, specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap(): one value for a single input, else an object by input name."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(specs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        name = next(iter(specs))
        return {name: _tensor_from_json(value, specs[name].dtype)}
    tensors = {}
    for name in sorted(specs):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor_from_json(value[name], specs[name].dtype)
    return tensors


def signature_name(doc: dict[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def request_tensors(
    doc: dict[str, Any], specs: dict[str, TensorSpec], signature: str
) -> tuple[bool, dict[str, np.ndarray]]:
    """The request's input tensors, and True for the row format (``instances``)."""
    if not specs:
        raise invalid(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    if "instances" in doc and "inputs" in doc:
        raise invalid(
            f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return True, _instances_tensors(instances, specs)
    if "inputs" in doc:
        return False, _inputs_tensors(doc["inputs"], specs)
    raise invalid("Missing 'inputs' or 'instances' key")


# --- tensors -> JSON (MakeJsonFromTensors) -----------------------------------------------------

_Emit = Callable[[PrettyWriter, Any], None]


def _string_emitter(as_b64: bool) -> _Emit:
    def emit(writer: PrettyWriter, value: Any) -> None:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        if not as_b64:
            writer.string(data.decode("utf-8", "surrogateescape"))
            return
        writer.start(False)
        writer.string("b64")
        writer.string(base64.b64encode(data).decode("ascii"))
        writer.end()

    return emit


def _emitter(dtype: np.dtype, name: str) -> _Emit:
    """AddSingleValueAndAdvance() for one output dtype; ``*_bytes`` strings are written as b64."""
    if dtype == np.float32 or dtype == np.float64:
        single = dtype == np.float32
        return lambda writer, value: writer.value(float_token(value, single))
    if dtype.kind in "iu":
        return lambda writer, value: writer.value(str(value))
    if dtype.kind == "b":
        return lambda writer, value: writer.value("true" if value else "false")
    if dtype.kind in "OSU":
        return _string_emitter(name.endswith("_bytes"))
    type_name = {"float16": "half", "complex64": "complex64"}.get(dtype.name, dtype.name)
    raise invalid(f"Failed to write JSON value for tensor type: {type_name}")


def _write_tensor(writer: PrettyWriter, array: np.ndarray, emit: _Emit) -> None:
    if array.ndim == 0:
        emit(writer, array.item())
        return
    writer.start(True)
    if array.ndim == 1:
        for value in array.tolist():
            emit(writer, value)
    else:
        for part in array:
            _write_tensor(writer, part, emit)
    writer.end()


def _write_rows(writer: PrettyWriter, outputs: dict[str, np.ndarray]) -> None:
    batch = -1
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and batch != array.shape[0]:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    emitters = {name: _emitter(array.dtype, name) for name, array in outputs.items()}
    named = len(outputs) > 1
    writer.string("predictions")
    writer.start(True)
    for row in range(batch):
        if named:
            writer.start(False)
        writer.single_line_arrays = True  # as TF: each row on one line, the rows list is not
        for name, array in outputs.items():
            if named:
                writer.string(name)
            _write_tensor(writer, array[row], emitters[name])
        writer.single_line_arrays = False
        if named:
            writer.end()
    writer.end()


def predict_body(outputs: dict[str, np.ndarray], row: bool) -> str:
    """The predict reply: ``predictions`` (row format) or ``outputs`` (columnar), laid out as TF."""
    writer = PrettyWriter()
    writer.start(False)
    if row:
        _write_rows(writer, outputs)
    else:
        writer.string("outputs")
        named = len(outputs) > 1
        if named:
            writer.start(False)
        for name, array in outputs.items():
            if named:
                writer.string(name)
            _write_tensor(writer, array, _emitter(array.dtype, name))
        if named:
            writer.end()
    writer.end()
    return writer.text()
