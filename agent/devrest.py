"""TF Serving's REST handler (http_rest_api_handler.cc): routes, status, metadata, predict, errors.

Part of the TF Serving stand-in (agent.devserver); pure: (method, path, body) -> Reply, no I/O.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from agent.devjson import INT64, ApiError, debug_string, encode, error_body, invalid, parse_request_json, quote
from agent.devmodels import ModelRepository, VersionStatus
from agent.devmodeltypes import ModelError, ServedModel, TensorSpec
from agent.devtensors import json_type, predict_body, request_tensors, signature_name

logger = logging.getLogger(__name__)

# gRPC/absl code -> HTTP status, as ToHTTPStatusCode() in TF Serving's http_server.cc.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}  # fmt: skip
_V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_POST_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE | re.ASCII,
)
_GET_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?",
    re.IGNORECASE | re.ASCII,
)
# evhttp_uri_parse() refuses request targets with other characters: libevent answers 400 itself.
_URI_PART = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})"
_URI_CHARS = re.compile(rf"{_URI_PART}*(?:\?(?:{_URI_PART}|\?)*)?")
_LIBEVENT_PAGE = "<HTML><HEAD>\n<TITLE>{0} {1}</TITLE>\n</HEAD><BODY>\n<H1>{1}</H1>\n</BODY></HTML>\n"

# --- status and metadata (protobuf JSON) -------------------------------------------------------


def _proto_json(value: Any, depth: int = 0) -> str:
    """protobuf's MessageToJsonString(add_whitespace=true): one space of indent per level."""
    inner = " " * (depth + 1)
    if isinstance(value, dict) and value:
        members = [f"{inner}{quote(key)}: {_proto_json(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + " " * depth + "}"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(inner + _proto_json(item, depth + 1) for item in value) + "\n" + " " * depth + "]"
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote(value) if isinstance(value, str) else str(value)


def status_body(statuses: list[VersionStatus]) -> str:
    entries = [
        {
            "version": str(s.version),
            "state": s.state,
            "status": {"error_code": s.error_code, "error_message": s.error_message},
        }
        for s in statuses
    ]
    return _proto_json({"model_version_status": entries}) + "\n"


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    dims = [{"size": str(size), "name": ""} for size in spec.shape]
    return {"dtype": spec.dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": spec.tensor_name}


def signature_defs(model: ServedModel) -> dict[str, Any]:
    """The SignatureDefMap of a TF2 SavedModel: serving_default plus the init-op entry."""
    init_op = {"dtype": "DT_INVALID", "tensor_shape": {"dim": [], "unknown_rank": True}, "name": "NoOp"}
    return {
        "__saved_model_init_op": {
            "inputs": {},
            "outputs": {"__saved_model_init_op": init_op},
            "method_name": "",
            "defaults": {},
        },
        "serving_default": {
            "inputs": {spec.alias: _tensor_info(spec) for spec in model.inputs},
            "outputs": {spec.alias: _tensor_info(spec) for spec in model.outputs},
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        },
    }


def metadata_body(name: str, version: int, model: ServedModel) -> str:
    """ToJsonString(GetModelMetadataResponse): two protobuf dumps glued by hand, as TF Serving does."""
    spec = _proto_json({"name": name, "signature_name": "", "version": str(version)}) + "\n"
    defs = _proto_json({"signature_def": signature_defs(model)}) + "\n"
    return "{\n" + '"model_spec":' + spec + ",\n" + '"metadata": {' + '"signature_def": ' + defs + "}\n" + "}\n"


# --- the REST handler (HttpRestApiHandler::ProcessRequest) -------------------------------------

_JSON_HEADERS = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, body, headers (Content-Length is added on sending)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = _JSON_HEADERS
    close: bool = False


def _libevent_error(status: int, reason: str) -> Reply:
    """evhttp_send_error(): an HTML page and a closed connection, for requests TF never sees."""
    page = _LIBEVENT_PAGE.format(status, reason).encode("ascii")
    return Reply(status, page, (("Content-Type", "text/html"),), close=True)


@dataclass(frozen=True)
class _Route:
    model: str
    version: int | None
    label: str | None
    verb: str  # predict/classify/regress as typed (POST), "metadata" or "" (GET)


def _decode_arg(text: str | None) -> str | None:
    """DecodeArg(): curl_easy_unescape, %XX only ('+' stays '+')."""
    return None if text is None else unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _route(method: str, path: str) -> _Route | None:
    """ParseModelInfo(): RE2 FullMatch of the path (with its ?query); None = malformed."""
    pattern = {"POST": _POST_PATH, "GET": _GET_PATH}.get(method)
    match = pattern.fullmatch(path) if pattern else None
    if match is None:
        return None
    name, version, label, verb = match.groups()
    if version is not None and int(version) > INT64[1]:
        raise ApiError("INVALID_ARGUMENT", f"Failed to convert version: {version} to numeric.", bare=True)
    return _Route(_decode_arg(name) or "", None if version is None else int(version), _decode_arg(label), verb or "")


def _check_examples(doc: dict[str, Any]) -> None:
    """FillClassifyRegressRequestFromJson(): context and examples must be (lists of) objects."""
    examples = doc.get("examples")
    problem = (
        "When method is classify, key 'examples' is expected and was not found" if "examples" not in doc
        else "Expecting 'examples' value to be an list/array" if not isinstance(examples, list)
        else "'examples' value is an empty array" if not examples
        else ""
    )  # fmt: skip
    if "context" in doc and not isinstance(doc["context"], dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(doc['context'])}")
    if problem:
        raise invalid(f"JSON Value: {debug_string(doc)} {problem}")
    for example in examples or []:
        if not isinstance(example, dict):
            raise invalid(f"Example must be JSON object but got JSON {json_type(example)}")


class RestApi:
    """TF Serving's REST API over a ModelRepository: (method, path, body) -> Reply, no I/O."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def handle(self, method: str, path: str, body: bytes, origin: str = "") -> Reply:
        if not _URI_CHARS.fullmatch(path):
            return _libevent_error(400, "Bad Request")
        if not _V1_PATH.fullmatch(path):
            return _libevent_error(404, "Not Found")
        if method == "OPTIONS":  # CORS preflight: answered before the handler, with no body
            ok = re.search(r"https?://", origin) is not None
            return Reply(200 if ok else 400, headers=(("Content-Type", "text/html; charset=ISO-8859-1"),))
        try:
            return Reply(200, encode(self._dispatch(method, path, body)))
        except ApiError as exc:
            body_text = "" if exc.bare else error_body(exc.message)
            return Reply(HTTP_STATUS.get(exc.code, 500), encode(body_text))
        except Exception as exc:  # a devserver bug: answer 500 (TF's INTERNAL) rather than hang up
            logger.exception("devserver failed method=%s path=%s", method, path)
            return Reply(500, encode(error_body(f"devserver internal error: {exc!r}")))

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        route = _route(method, path)
        if route is not None and method == "POST" and route.verb == "predict":
            return self._predict(route, body)
        if route is not None and method == "POST" and route.verb in ("classify", "regress"):
            return self._classify_or_regress(route, body)
        if route is not None and method == "GET":
            return self._metadata(route) if route.verb == "metadata" else self._status(route)
        raise invalid(f"Malformed request: {method} {path}")

    def _servable(self, route: _Route) -> tuple[int, ServedModel]:
        version = route.version
        if route.label is not None:
            version = self.repository.label_version(route.model, route.label)
            if version is None:
                raise invalid(f"Unrecognized servable version label: {route.label}")
        found = self.repository.servable(route.model, version)
        if found is None:
            request = f"Latest({route.model})" if version is None else f"Specific({route.model}, {version})"
            raise ApiError("NOT_FOUND", f"Servable not found for request: {request}")
        return found

    def _predict(self, route: _Route, body: bytes) -> str:
        doc = parse_request_json(body)
        signature = signature_name(doc)
        _, model = self._servable(route)
        name = signature or "serving_default"
        if name not in ("serving_default", "__saved_model_init_op"):
            raise invalid(f'Serving signature name: "{name}" not found in signature def')
        specs = {spec.alias: spec for spec in model.inputs} if name == "serving_default" else {}
        row, tensors = request_tensors(doc, specs, signature)
        try:
            outputs = model.predict(tensors)
        except ModelError as exc:
            raise ApiError(exc.code, exc.message) from None
        if not outputs:
            raise invalid("Cannot convert empty tensor map to JSON")
        return predict_body({name: outputs[name] for name in sorted(outputs)}, row)

    def _classify_or_regress(self, route: _Route, body: bytes) -> str:
        """Enough of classify/regress to fail like TF does on a predict-only SavedModel."""
        doc = parse_request_json(body)
        signature = signature_name(doc) or "serving_default"
        _check_examples(doc)
        _, model = self._servable(route)
        signatures = signature_defs(model)
        if signature not in signatures:
            raise invalid(f"No signature was found with the name: {signature}")
        kind = "classification" if route.verb == "classify" else "regression"
        raise invalid(
            f"Expected {kind} signature method_name to be tensorflow/serving/{route.verb}. "
            f"Was: {signatures[signature]['method_name']}"
        )

    def _status(self, route: _Route) -> str:
        if not route.model:
            raise invalid("Missing model name in request.")
        statuses = self.repository.statuses(route.model)  # a label is ignored here, as in TF
        if route.version is not None:
            statuses = [s for s in statuses if s.version == route.version]
            if not statuses:
                raise ApiError("NOT_FOUND", f"Could not find version {route.version} of model {route.model}")
        elif not statuses:
            raise ApiError("NOT_FOUND", f"Could not find any versions of model {route.model}")
        return status_body(statuses)

    def _metadata(self, route: _Route) -> str:
        if not route.model:
            raise invalid("Missing model name in request.")
        version, model = self._servable(route)
        return metadata_body(route.model, version, model)
