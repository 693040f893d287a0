"""The TF Serving stand-in over real HTTP: URL grammar, bodies, status codes and exact error texts.

Expected texts come from TF Serving's source (shared/reference/tfserving-protocol.md), so a client
that passes against the stand-in meets the same bytes as against tensorflow/serving.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from agent import devjson, devtensors
from agent.devjson import ApiError, parse_request_json
from agent.devmodels import make_model_base
from agent.devserver import DevServer, Fault
from agent.devtensors import predict_body
from agent.encode import PixelEncoder
from agent.encode import predict_body as agent_body

MODEL = "cat_dog_classifier"
SAMPLES = Path(__file__).resolve().parent.parent / "agent" / "samples"
PREDICT = f"/v1/models/{MODEL}:predict"
ROW = re.compile(r'\{\n    "predictions": \[\[([-+.e0-9]+)\]\n    \]\n\}')


def photo(name: str) -> list:
    """A sample photo as the model wants it: 150x150 RGB, bilinear, scaled to [0, 1]."""
    image = Image.open(SAMPLES / name).convert("RGB").resize((150, 150), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0).tolist()


@pytest.fixture(scope="module")
def cat() -> list:
    return photo("chelsea.png")


@pytest.fixture(scope="module")
def dog() -> list:
    return photo("dog.jpg")


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = make_model_base(tmp_path_factory.mktemp("models"), MODEL, versions=(1, 2))
    make_model_base(base, "softmax_model", versions=(1,), builtin={"head": "softmax"})
    make_model_base(base, "two_outputs", versions=(1,), builtin={"extra_outputs": True})
    make_model_base(base, "half_broken", versions=(1,))
    (base / "half_broken" / "2").mkdir()  # a version folder with no model: its load fails
    make_model_base(base, "bright", versions=(1,), builtin={"model": "mean_brightness"})
    jpeg_input = {"size": [150, 150], "scale": "unit"}
    make_model_base(base, "bright_jpeg", versions=(1,), builtin={"model": "mean_brightness"}, jpeg_input=jpeg_input)
    make_model_base(base, "cnn_jpeg", versions=(1,), jpeg_input=jpeg_input)  # seed 1: MODEL version 1 behind it
    make_model_base(base, "bad_signature", versions=(1, 2), jpeg_input=jpeg_input)
    (base / "bad_signature" / "2" / "signature.json").write_text('{"size": [150, 150], "scale": "percent"}')
    return base


@pytest.fixture
def server(model_base: Path):
    with DevServer(model_base, labels={MODEL: {"stable": 1}}) as running:
        yield running


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def post(http: requests.Session, server: DevServer, path: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(server.url + path, data=data, timeout=10, **kwargs)


def error_of(response: requests.Response) -> str:
    return json.loads(response.content)["error"]


def prediction(response: requests.Response) -> float:
    """The single score of a one-instance row reply, after checking TF's exact layout."""
    assert response.status_code == 200, response.content
    found = ROW.fullmatch(response.text)
    assert found, response.text
    return float(found.group(1))


# --- URL grammar ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        pytest.param("POST", PREDICT + "?x=1", 400, f"Malformed request: POST {PREDICT}?x=1", id="query-on-predict"),
        pytest.param("GET", PREDICT, 400, f"Malformed request: GET {PREDICT}", id="get-predict"),
        pytest.param("POST", f"/v1/models/{MODEL}:PREDICT", 400, None, id="method-is-case-sensitive"),
        pytest.param("POST", f"/v1/models/{MODEL}/version/1:predict", 400, None, id="singular-version"),
        pytest.param("POST", f"/v1/models/{MODEL}/versions/abc:predict", 400, None, id="version-not-digits"),
        pytest.param("POST", f"/v1/models/{MODEL}/versions/1/labels/x:predict", 400, None, id="version-and-label"),
        pytest.param("POST", f"/v1/models/{MODEL}/metadata", 400, None, id="post-metadata"),
        pytest.param("PUT", f"/v1/models/{MODEL}", 400, f"Malformed request: PUT /v1/models/{MODEL}", id="put"),
        pytest.param("DELETE", f"/v1/models/{MODEL}", 400, None, id="delete"),
        pytest.param("GET", "/v1/models", 400, "Missing model name in request.", id="no-model-name"),
        pytest.param("GET", "/v1/models/m?x=1", 404, "Could not find any versions of model m?x=1", id="query-in-name"),
        pytest.param("GET", "/v1/models/debug/model_name", 400, None, id="extra-segment"),
    ],
)
def test_url_grammar_answers_like_tf_serving(server, http, method, path, status, error):
    response = http.request(method, server.url + path, data=b"{}", timeout=10)

    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert error_of(response) == (error or f"Malformed request: {method} {path}")


def test_version_label_and_bare_paths_reach_the_same_servable(server, http, cat):
    bare = prediction(post(http, server, PREDICT, {"instances": [cat]}))
    latest = prediction(post(http, server, f"/v1/models/{MODEL}/versions/2:predict", {"instances": [cat]}))
    stable = prediction(post(http, server, f"/v1/models/{MODEL}/labels/stable:predict", {"instances": [cat]}))
    first = prediction(post(http, server, f"/v1/models/{MODEL}/versions/1:predict", {"instances": [cat]}))

    assert bare == latest
    assert stable == first
    assert first != latest


def test_url_matching_ignores_case_but_keeps_the_model_name(server, http):
    response = http.get(f"{server.url}/V1/MODELS/{MODEL}/VERSIONS/1", timeout=10)

    assert response.status_code == 200
    assert json.loads(response.content)["model_version_status"][0]["version"] == "1"


def test_version_beyond_int64_gives_400_with_an_empty_body(server, http):
    response = post(http, server, f"/v1/models/{MODEL}/versions/18446744073709551615:predict", {"instances": [1]})

    assert response.status_code == 400
    assert response.content == b""
    assert response.headers["Content-Type"] == "application/json"


def test_paths_outside_v1_get_libevents_html_404_and_a_closed_connection(server, http):
    response = http.get(server.url + "/healthz", timeout=10)

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "text/html"
    assert response.headers["Connection"] == "close"
    assert (
        response.text
        == "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
    )


def test_a_request_target_libevent_cannot_parse_gets_its_html_400(server):
    connection = HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    try:
        connection.request("GET", f"/v1/models/{MODEL}%zz")  # http.client sends the bad escape as is
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()

    assert (response.status, response.getheader("Content-Type")) == (400, "text/html")
    assert b"<H1>Bad Request</H1>" in body


def test_cors_preflight_needs_an_origin_and_has_no_body(server, http):
    allowed = http.options(server.url + PREDICT, headers={"Origin": "http://ui.lan"}, timeout=10)
    refused = http.options(server.url + PREDICT, timeout=10)

    assert (allowed.status_code, allowed.content) == (200, b"")
    assert (refused.status_code, refused.content) == (400, b"")


# --- status and metadata ---------------------------------------------------------------------------


def test_status_lists_every_version_newest_first_in_protobuf_layout(server, http):
    response = http.get(f"{server.url}/v1/models/{MODEL}", timeout=10)

    entry = (
        '  {{\n   "version": "{}",\n   "state": "AVAILABLE",\n'
        '   "status": {{\n    "error_code": "OK",\n    "error_message": ""\n   }}\n  }}'
    )
    assert response.status_code == 200
    assert response.text == '{\n "model_version_status": [\n' + entry.format(2) + ",\n" + entry.format(1) + "\n ]\n}\n"


def test_status_ignores_a_label_and_lists_every_version(server, http):
    by_label = http.get(f"{server.url}/v1/models/{MODEL}/labels/no_such_label", timeout=10)

    assert [v["version"] for v in json.loads(by_label.content)["model_version_status"]] == ["2", "1"]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        (f"/v1/models/{MODEL}/versions/3", f"Could not find version 3 of model {MODEL}"),
        ("/v1/models/unknown_model", "Could not find any versions of model unknown_model"),
    ],
)
def test_status_of_unknown_model_or_version_is_404_with_tfs_text(server, http, path, error):
    response = http.get(server.url + path, timeout=10)

    assert response.status_code == 404
    assert response.text == '{\n    "error": "' + error + '"\n}'


def test_a_version_whose_load_failed_shows_as_end_with_an_error(server, http):
    statuses = json.loads(http.get(f"{server.url}/v1/models/half_broken", timeout=10).content)["model_version_status"]

    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in statuses] == [
        ("2", "END", "NOT_FOUND"),
        ("1", "AVAILABLE", "OK"),
    ]
    assert "Could not find model.onnx or builtin.json" in statuses[0]["status"]["error_message"]


def test_metadata_has_the_double_signature_def_and_the_served_version(server, http):
    response = http.get(f"{server.url}/v1/models/{MODEL}/metadata", timeout=10)
    metadata = json.loads(response.content)
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    conv_input = signatures["serving_default"]["inputs"]["conv2d_input"]

    assert response.text.startswith('{\n"model_spec":{\n "name": "cat_dog_classifier",\n')
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "2"}
    assert conv_input["dtype"] == "DT_FLOAT"
    assert conv_input["tensor_shape"] == {
        "dim": [{"size": s, "name": ""} for s in ("-1", "150", "150", "3")],
        "unknown_rank": False,
    }
    assert signatures["serving_default"]["outputs"]["dense_1"]["name"] == "StatefulPartitionedCall:0"
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert signatures["__saved_model_init_op"]["outputs"]["__saved_model_init_op"]["dtype"] == "DT_INVALID"


def test_label_metadata_reveals_the_labels_version_and_follows_a_change(server, http):
    def label_version() -> str:
        return json.loads(http.get(f"{server.url}/v1/models/{MODEL}/labels/stable/metadata", timeout=10).content)[
            "model_spec"
        ]["version"]

    before = label_version()
    server.set_label(MODEL, "stable", 2)

    assert (before, label_version()) == ("1", "2")


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        (f"/v1/models/{MODEL}/versions/3/metadata", 404, f"Servable not found for request: Specific({MODEL}, 3)"),
        ("/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        (f"/v1/models/{MODEL}/labels/canary/metadata", 400, "Unrecognized servable version label: canary"),
    ],
)
def test_metadata_lookup_errors_match_tf(server, http, path, status, error):
    response = http.get(server.url + path, timeout=10)

    assert (response.status_code, error_of(response)) == (status, error)


# --- predict -----------------------------------------------------------------------------------------


def test_builtin_predict_is_deterministic_and_a_probability(server, http, cat):
    first = prediction(post(http, server, PREDICT, {"instances": [cat]}))
    again = prediction(post(http, server, PREDICT, {"instances": [cat]}))

    assert 0.0 < first < 1.0
    assert first == again


def test_builtin_model_is_not_saturated_on_real_photos(server, http, cat, dog):
    scores = [
        prediction(post(http, server, f"/v1/models/{MODEL}/versions/{version}:predict", {"instances": [image]}))
        for version in (1, 2)
        for image in (cat, dog)
    ]

    assert all(0.02 < score < 0.98 for score in scores), scores
    assert len(set(scores)) == 4


def test_a_batch_gives_one_prediction_per_instance_equal_to_single_ones(server, http, cat, dog):
    batch = json.loads(post(http, server, PREDICT, {"instances": [cat, dog]}).content)["predictions"]
    singles = [prediction(post(http, server, PREDICT, {"instances": [image]})) for image in (cat, dog)]

    assert batch == [[singles[0]], [singles[1]]]


def test_columnar_inputs_get_outputs_with_every_element_on_its_own_line(server, http, cat):
    row = prediction(post(http, server, PREDICT, {"instances": [cat]}))
    response = post(http, server, PREDICT, {"signature_name": "serving_default", "inputs": [cat]})

    assert response.status_code == 200
    assert re.fullmatch(
        r'\{\n    "outputs": \[\n        \[\n            [-.e0-9]+\n        \]\n    \]\n\}', response.text
    )
    assert json.loads(response.content) == {"outputs": [[row]]}


def test_named_instances_and_named_inputs_reach_the_single_input(server, http, cat):
    plain = prediction(post(http, server, PREDICT, {"instances": [cat]}))
    named = prediction(post(http, server, PREDICT, {"instances": [{"conv2d_input": cat}]}))
    columnar = json.loads(post(http, server, PREDICT, {"inputs": {"conv2d_input": [cat], "ignored": 1}}).content)

    assert named == plain
    assert columnar == {"outputs": [[plain]]}


def test_softmax_head_gives_one_score_per_label(server, http, cat):
    response = post(http, server, "/v1/models/softmax_model:predict", {"instances": [cat]})
    scores = json.loads(response.content)["predictions"][0]

    assert len(scores) == 2
    assert math.isclose(sum(scores), 1.0, rel_tol=1e-6)
    assert re.fullmatch(r'\{\n    "predictions": \[\[[-.e0-9]+, [-.e0-9]+\]\n    \]\n\}', response.text)


def test_two_outputs_make_rows_objects_and_columns_an_object(server, http, cat):
    rows = post(http, server, "/v1/models/two_outputs:predict", {"instances": [cat, cat]})
    columns = json.loads(post(http, server, "/v1/models/two_outputs:predict", {"inputs": [cat]}).content)

    predictions = json.loads(rows.content)["predictions"]
    assert [sorted(p) for p in predictions] == [["dense_1", "logits"]] * 2
    assert rows.text.startswith('{\n    "predictions": [\n        {\n            "dense_1": [')
    assert sorted(columns["outputs"]) == ["dense_1", "logits"]
    assert 1 / (1 + math.exp(-columns["outputs"]["logits"][0][0])) == pytest.approx(columns["outputs"]["dense_1"][0][0])


def test_nan_input_is_accepted_and_nan_output_written_as_a_bare_token(server, http):
    body = '{"instances": [' + json.dumps(np.full((150, 150, 3), np.nan).tolist()) + "]}"

    response = post(http, server, PREDICT, body.encode())

    assert response.text == '{\n    "predictions": [[NaN]\n    ]\n}'


def test_trailing_garbage_after_the_json_is_ignored(server, http, cat):
    response = post(http, server, PREDICT, json.dumps({"instances": [cat]}).encode() + b" trailing")

    assert 0 < prediction(response) < 1


def test_gzip_request_bodies_are_accepted_and_corrupt_ones_are_an_empty_document(server, http, cat):
    packed = gzip.compress(json.dumps({"instances": [cat]}).encode())
    plain = prediction(post(http, server, PREDICT, {"instances": [cat]}))

    unpacked = post(http, server, PREDICT, packed, headers={"Content-Encoding": "gzip"})
    seen = server.last_body()
    corrupt = post(http, server, PREDICT, b"not gzip", headers={"Content-Encoding": "gzip"})

    assert prediction(unpacked) == plain
    assert seen == gzip.decompress(packed)
    assert (corrupt.status_code, error_of(corrupt)) == (400, "JSON Parse error: The document is empty")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"  \n", "JSON Parse error: The document is empty. at offset: 3"),
        (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
        (b'{"instances": [1, 2}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 19"),
        (
            b'{"instances": [1] "x": 2}',
            "JSON Parse error: Missing a comma or '}' after an object member. at offset: 18",
        ),
        (b"[1, 2]", "JSON Value: [1, 2] Is not object"),
        (
            b'{"signature_name": 100}',
            'JSON Value: {\n    "signature_name": 100\n} not formatted correctly. '
            "'signature_name' key must be a string value.",
        ),
        (b'{"signature_name": "nope", "instances": [1]}', 'Serving signature name: "nope" not found in signature def'),
        (
            b'{"signature_name": "__saved_model_init_op", "instances": [1]}',
            "Failed to get input map for signature: __saved_model_init_op",
        ),
        (b'{"examples": [1]}', "Missing 'inputs' or 'instances' key"),
        (
            b'{"instances": [1], "inputs": [1]}',
            'JSON Value: {\n    "instances": [1],\n    "inputs": [1]\n} Not formatted correctly expecting only '
            "one of 'inputs' or 'instances' keys to exist ",
        ),
        (b'{"instances": 5}', "JSON Value: {\n    \"instances\": 5\n} Expecting 'instances' to be an list/array"),
        (b'{"instances": []}', "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
        (
            b'{"instances": ["x", "y"]}',
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            'JSON Value: "x" Type: String is not of expected type: float',
        ),
        (
            b'{"instances": [{"b64": "aGk="}]}',
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            'JSON Value: {\n    "b64": "aGk="\n} Type: Object is not of expected type: float',
        ),
        (
            b'{"instances": [{"image": [1]}]}',
            "Failed to process element: 0 key: image of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON object: does not have named input: image",
        ),
        (
            b'{"instances": [[1, 2], [3, 4], [5, 6, 7]]}',
            "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting tensor size: 2 but got: 3",
        ),
        (
            b'{"instances": [[1, 2], [3, 4], [[5, 6]]]}',
            "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting shape [2] but got: [1,2]",
        ),
        (
            b'{"instances": [1, [1]]}',
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting shape [] but got: [1]",
        ),
        (
            b'{"instances": [[1, 2], [3, [4]]]}',
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Encountered list at unexpected level: 1 expected < 1",
        ),
        (
            b'{"instances": [[[1], 2]]}',
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        (b'{"instances": [[1], {"conv2d_input": [1]}]}', "Expecting value/list but got object at item 1 of input list"),
        (b'{"instances": [{"conv2d_input": [1]}, [1]]}', "Expecting object but got list at item 1 of input list"),
        (b'{"inputs": {"image": [1]}}', "Missing named input: conv2d_input in 'inputs' object."),
        (b'{"inputs": [[1, 2], [3]]}', "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        (b'{"instances": [[1, 2]]}', "input must be 4-dimensional[1,2]\n\t [[{{node sequential/conv2d/Conv2D}}]]"),
    ],
)
def test_request_body_errors_are_400_with_tfs_exact_text(server, http, body, error):
    response = post(http, server, PREDICT, body)

    assert response.status_code == 400
    assert error_of(response) == error
    assert response.text == '{\n    "error": ' + json.dumps(error) + "\n}"


def test_a_malformed_body_to_an_unknown_model_is_400_not_404(server, http):
    response = post(http, server, "/v1/models/nope:predict", b"{")

    assert response.status_code == 400
    assert error_of(response).startswith("JSON Parse error:")


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        (f"/v1/models/{MODEL}/versions/3:predict", 404, f"Servable not found for request: Specific({MODEL}, 3)"),
        (f"/v1/models/{MODEL}/labels/canary:predict", 400, "Unrecognized servable version label: canary"),
        ("/v1/models/half_broken/versions/2:predict", 404, "Servable not found for request: Specific(half_broken, 2)"),
    ],
)
def test_unknown_model_version_or_label_on_predict(server, http, path, status, error):
    response = post(http, server, path, {"instances": [1]})

    assert (response.status_code, error_of(response)) == (status, error)


def test_classify_on_a_predict_only_model_fails_like_tf(server, http):
    response = post(http, server, f"/v1/models/{MODEL}:classify", {"examples": [{"x": 1.0}]})

    assert response.status_code == 400
    assert error_of(response) == (
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict"
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32),
         "[[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]"),
        (np.array([[0.1, 1 / 3, 100.0], [1435774380, 123456789, -0.0]], np.float32),
         "[[0.1, 0.333333343, 100.0], [1.43577434e+09, 123456792.0, -0.0]"),
        (np.array([[np.nan, np.inf], [3, -np.inf]], np.float32), "[[NaN, Infinity], [3.0, -Infinity]"),
        (np.array([[1 / 3, 1e21]], np.float64), "[[0.33333333333333331, 1e+21]"),
        (np.array([[1, 2], [3, 4]], np.int32), "[[1, 2], [3, 4]"),
    ],
)  # fmt: skip
def test_numbers_are_written_like_tf_serving(values, expected):
    assert predict_body({"y": values}, row=True) == '{\n    "predictions": ' + expected + "\n    ]\n}"


def test_reply_layout_matches_the_half_plus_three_example():
    outputs = {"y": np.array([3.5, 4.0, 5.5], np.float32)}

    assert predict_body(outputs, row=True) == '{\n    "predictions": [3.5, 4.0, 5.5\n    ]\n}'
    assert predict_body(outputs, row=False) == '{\n    "outputs": [\n        3.5,\n        4.0,\n        5.5\n    ]\n}'


# --- mean_brightness: the zero-cost model ---------------------------------------------------------------------


def b64_of(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def serving_signature(http: requests.Session, server: DevServer, path: str) -> dict:
    metadata = json.loads(http.get(f"{server.url}{path}/metadata", timeout=10).content)
    return metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]


def test_mean_brightness_has_the_tutorial_cnns_signature(server, http):
    bright = serving_signature(http, server, "/v1/models/bright")
    tutorial = serving_signature(http, server, f"/v1/models/{MODEL}")

    assert bright == tutorial


@pytest.mark.parametrize(("value", "expected"), [(1.0, 1.0), (0.0, 0.0), (0.25, 0.25), (3.0, 1.0)])
def test_mean_brightness_scores_the_clipped_mean(server, http, value, expected):
    response = post(http, server, "/v1/models/bright:predict", {"instances": [np.full((150, 150, 3), value).tolist()]})

    assert prediction(response) == expected


def test_mean_brightness_of_a_photo_is_its_mean_value(server, http, dog, cat):
    scores = json.loads(post(http, server, "/v1/models/bright:predict", {"instances": [dog, cat]}).content)

    expected = [np.mean(np.asarray(image, np.float32), dtype=np.float64) for image in (dog, cat)]
    assert [row[0] for row in scores["predictions"]] == pytest.approx(expected, abs=1e-6)


def test_mean_brightness_refuses_a_wrong_shape_with_a_tf_matmul_error(server, http):
    response = post(http, server, "/v1/models/bright:predict", {"instances": [np.zeros((10, 10, 3)).tolist()]})

    assert response.status_code == 400
    assert error_of(response) == (
        "Matrix size-incompatible: In[0]: [1,300], In[1]: [67500,1]\n\t [[{{node sequential/dense_1/MatMul}}]]"
    )


# --- signature.json: encoded images in front of the model ----------------------------------------------------


def test_an_encoded_image_signature_has_one_dt_string_input_of_any_length(server, http):
    response = http.get(f"{server.url}/v1/models/cnn_jpeg/metadata", timeout=10)
    serving = serving_signature(http, server, "/v1/models/cnn_jpeg")

    assert serving["inputs"] == {
        "image_bytes": {
            "dtype": "DT_STRING",
            "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
            "name": "serving_default_image_bytes:0",
        }
    }
    assert serving["outputs"] == serving_signature(http, server, f"/v1/models/{MODEL}")["outputs"]
    assert (
        '   "inputs": {\n    "image_bytes": {\n     "dtype": "DT_STRING",\n     "tensor_shape": {\n'
        '      "dim": [\n       {\n        "size": "-1",\n        "name": ""\n       }\n      ],\n'
        '      "unknown_rank": false\n     },\n     "name": "serving_default_image_bytes:0"\n    }\n   },\n'
    ) in response.text


@pytest.mark.parametrize(("wrapped", "unwrapped"), [("cnn_jpeg", f"{MODEL}/versions/1"), ("bright_jpeg", "bright")])
@pytest.mark.parametrize("form", ["plain", "named"])
@pytest.mark.parametrize("name", ["dog.jpg", "chelsea.png"])
def test_an_encoded_photo_scores_as_its_resized_tensor_does(server, http, wrapped, unwrapped, form, name):
    value = b64_of((SAMPLES / name).read_bytes())
    instance = value if form == "plain" else {"image_bytes": value}

    from_bytes = prediction(post(http, server, f"/v1/models/{wrapped}:predict", {"instances": [instance]}))
    from_tensor = prediction(post(http, server, f"/v1/models/{unwrapped}:predict", {"instances": [photo(name)]}))

    assert from_bytes == pytest.approx(from_tensor, abs=1e-6)


def test_encoded_images_batch_in_columnar_form(server, http):
    images = [b64_of((SAMPLES / name).read_bytes()) for name in ("dog.jpg", "chelsea.png")]

    path = "/v1/models/bright_jpeg:predict"
    batch = json.loads(post(http, server, path, {"inputs": {"image_bytes": images}}).content)
    singles = [prediction(post(http, server, path, {"instances": [image]})) for image in images]

    assert batch == {"outputs": [[singles[0]], [singles[1]]]}


@pytest.mark.parametrize(
    ("instance", "error"),
    [
        (b64_of(b"garbage, not an image"), "Unknown image file format. One of JPEG, PNG, GIF, BMP required."),
        ("a raw JSON string", "Unknown image file format. One of JPEG, PNG, GIF, BMP required."),
        (
            b64_of((SAMPLES / "dog.jpg").read_bytes()[:5000]),
            "jpeg::Uncompress failed. Invalid JPEG data or crop window.",
        ),
        (b64_of(b""), "Input is empty."),
    ],
    ids=["garbage", "raw-string", "truncated-jpeg", "empty"],
)
def test_undecodable_images_are_400_with_tfs_decode_error(server, http, instance, error):
    response = post(http, server, "/v1/models/bright_jpeg:predict", {"instances": [instance]})

    assert response.status_code == 400
    assert error_of(response) == error + "\n\t [[{{node map/while/decode_image/DecodeImage}}]]"


def test_a_float_tensor_sent_to_an_encoded_image_signature_is_a_type_error(server, http, cat):
    response = post(http, server, "/v1/models/bright_jpeg:predict", {"instances": [cat]})

    assert response.status_code == 400
    assert error_of(response).startswith("Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: ")
    assert error_of(response).endswith("is not of expected type: string")


def test_a_bad_signature_json_leaves_its_version_in_end(server, http):
    status = json.loads(http.get(f"{server.url}/v1/models/bad_signature", timeout=10).content)
    entries = status["model_version_status"]

    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in entries] == [
        ("2", "END", "INVALID_ARGUMENT"),
        ("1", "AVAILABLE", "OK"),
    ]
    message = entries[0]["status"]["error_message"]
    assert "signature.json: scale must be one of unit, symmetric, raw, not 'percent'" in message


# --- the fast paths: orjson, vectorised tensors ----------------------------------------------------------------

PARSED_ALIKE = [
    b'{"instances": [1.0, 1, -0, -0.0, 1e2, 1E-2, 0.1, 123456789012345678]}',
    b'{"a": 1, "a": 2, "b": {"c": [1], "c": [2]}}',
    b'{"instances": [{"x": 1, "x": 2}, {"y": 3}]}',
    b'{"k:ey": 1, "k:ey": 2}',
    b'{"big": [18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809]}',
    b'{"x": NaN, "y": [Infinity, -Infinity]}',
    b'{"instances": [1]} trailing garbage',
    b'\xef\xbb\xbf{"bom": true}',
    b' \t\n{"s": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 a:b \\" \\\\"}\n',
    b'{"s": "\xff\xfe"}',
    b'{"s": "\\ud800"}',
    b'{"n": null, "t": true, "f": false, "e": {}, "l": [], "m": 1.7976931348623157e308, "u": 5e-324, "o": 1e400}',
    b'{"d": 0.30000000000000004, "e": 1234567890123456789012.5}',
    b'{"s": ["caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 \\" \\\\ \\/ \\n", ""], "n": null, "t": [true, false], "e": [{}, []]}',
    b'{"m": 1.7976931348623157e308, "u": 5e-324, "f": [2.5e-8, -1.5E+30, 0.1, 1.0000001]}',
]


@pytest.mark.parametrize("body", PARSED_ALIKE)
def test_the_fast_parse_gives_exactly_what_the_faithful_parser_gives(monkeypatch, body):
    fast = parse_request_json(body)
    monkeypatch.setattr(devjson, "orjson", None)
    faithful = parse_request_json(body)

    assert repr(fast) == repr(faithful)  # repr tells 1 from 1.0 and -0.0 from 0.0, and keeps key order


def test_orjson_takes_the_agents_pixel_body_and_leaves_nan_to_the_fallback():
    pytest.importorskip("orjson")
    pixels = np.asarray(Image.open(SAMPLES / "dog.jpg").convert("RGB").resize((150, 150)))
    body = agent_body(pixels, PixelEncoder("unit", 4), input_name="conv2d_input", signature="serving_default")

    assert devjson._fast_parse(body) == parse_request_json(body)
    assert devjson._fast_parse(b'{"instances": [NaN]}') is None
    assert math.isnan(parse_request_json(b'{"instances": [NaN]}')["instances"][0])


def test_the_fast_parse_reads_every_float_text_to_the_same_double(monkeypatch):
    pytest.importorskip("orjson")
    rng = np.random.default_rng(7)
    values = rng.standard_normal(3000) * 10.0 ** rng.integers(-300, 300, 3000)
    texts = [repr(float(v)) for v in values] + [f"{v:.4f}" for v in rng.random(1000)]
    body = ('{"instances": [' + ", ".join(texts + [f"{v:.9g}" for v in values[:999]]) + "]}").encode()

    fast = devjson._fast_parse(body)
    monkeypatch.setattr(devjson, "orjson", None)

    assert fast is not None
    assert fast["instances"] == parse_request_json(body)["instances"]


TENSOR_VALUES = [
    [[1.0, 2], [3, 4.5]], 0.5, [0.0, 1.0, 1], [[1.0, True]], [[0.0, False]], [True, False], [[1.0, None]],
    [["1.5", 2.0]], [[1.0, {}]], [[1.0], "x"], [[1.0, 2.0], "ab"], [[1.0, 2.0], {"a": 1, "b": 2}], [[], []],
    [[1.0, [2.0]]], [[1.0, 2.0], [3.0]], [1e39, -1e39, float("nan")], [2**70, -(2**63)], [[{"b64": "aGk="}]],
    ["aGk=", "x"], [[1, 2], [3, 2**31]], [{}, {}], [[[1.0]], [[2.0]]],
]  # fmt: skip


@pytest.mark.parametrize("dtype", ["DT_FLOAT", "DT_DOUBLE", "DT_BOOL", "DT_INT32", "DT_STRING", "DT_HALF"])
@pytest.mark.parametrize("value", TENSOR_VALUES, ids=range(len(TENSOR_VALUES)))
def test_the_vectorised_tensor_path_equals_the_exact_one(monkeypatch, value, dtype):
    def outcome() -> tuple:
        try:
            array = devtensors._tensor_from_json(value, dtype)
        except ApiError as exc:
            return exc.code, exc.message
        return array.dtype.str, array.shape, repr(array.tolist())

    fast = outcome()
    monkeypatch.setattr(devtensors, "_fast_array", lambda *args: None)

    assert outcome() == fast


# --- states, labels, versions -----------------------------------------------------------------------


def test_a_loading_version_is_not_served_and_latest_falls_back(server, http, cat):
    server.set_state(MODEL, 2, "LOADING")

    pinned = post(http, server, f"/v1/models/{MODEL}/versions/2:predict", {"instances": [cat]})
    latest = json.loads(http.get(f"{server.url}/v1/models/{MODEL}/metadata", timeout=10).content)
    status = json.loads(http.get(f"{server.url}/v1/models/{MODEL}", timeout=10).content)

    assert (pinned.status_code, error_of(pinned)) == (404, f"Servable not found for request: Specific({MODEL}, 2)")
    assert latest["model_spec"]["version"] == "1"
    assert [s["state"] for s in status["model_version_status"]] == ["LOADING", "AVAILABLE"]


def test_no_available_version_means_latest_is_not_found(server, http):
    server.set_state(MODEL, 1, "UNLOADING")
    server.set_state(MODEL, 2, "START")

    response = post(http, server, PREDICT, {"instances": [1]})

    assert (response.status_code, error_of(response)) == (404, f"Servable not found for request: Latest({MODEL})")


def test_versions_can_be_added_and_removed_at_runtime(http, tmp_path):
    base = make_model_base(tmp_path, "runtime_model", versions=(1,))
    runtime = DevServer(base).start()
    try:
        make_model_base(base, "runtime_model", versions=(5,))
        runtime.add_version("runtime_model", 5)
        served = json.loads(http.get(f"{runtime.url}/v1/models/runtime_model/metadata", timeout=10).content)
        runtime.remove_version("runtime_model", 5)
        status = json.loads(http.get(f"{runtime.url}/v1/models/runtime_model", timeout=10).content)
    finally:
        runtime.stop()

    assert served["model_spec"]["version"] == "5"
    assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [("5", "END"), ("1", "AVAILABLE")]


def test_a_missing_onnxruntime_leaves_the_version_in_end_with_a_hint(tmp_path, monkeypatch, http):
    fake_model = tmp_path / "fake.onnx"
    fake_model.write_bytes(b"not read: onnxruntime is missing")
    base = make_model_base(tmp_path / "models", "onnx_model", versions=(1,), onnx=fake_model)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError

    with DevServer(base) as without_runtime:
        status = json.loads(http.get(f"{without_runtime.url}/v1/models/onnx_model", timeout=10).content)

    assert status["model_version_status"][0]["state"] == "END"
    assert status["model_version_status"][0]["status"] == {
        "error_code": "UNKNOWN",
        "error_message": "onnxruntime is not installed (pip install onnxruntime)",
    }


# --- faults, the request log, connections -------------------------------------------------------------


def test_fault_503_twice_then_the_real_reply(server, http, cat):
    server.inject(Fault(status=503, count=2))

    statuses = [post(http, server, PREDICT, {"instances": [cat]}) for _ in range(3)]

    assert [r.status_code for r in statuses] == [503, 503, 200]
    assert error_of(statuses[0]) == "HTTP 503 (injected by devserver)"


def test_fault_delay_outlasts_a_client_timeout_then_the_server_recovers(server, http, cat):
    server.inject(Fault(delay_s=0.5))

    with pytest.raises(requests.Timeout):
        http.post(server.url + PREDICT, data=json.dumps({"instances": [cat]}), timeout=0.1)
    assert 0 < prediction(post(http, server, PREDICT, {"instances": [cat]})) < 1


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "body"),
    [
        (Fault(body=b'{"predictions": [[0.5'), 200, "application/json", b'{"predictions": [[0.5'),
        (Fault(body=b'{"predictions": [[NaN]]}'), 200, "application/json", b'{"predictions": [[NaN]]}'),
        (Fault(status=502, body=b"<html>Bad Gateway</html>"), 502, "text/html", b"<html>Bad Gateway</html>"),
    ],
)
def test_fault_bodies_are_sent_as_given(server, http, fault, status, content_type, body):
    server.inject(fault)

    response = post(http, server, PREDICT, {"instances": [1]})

    assert (response.status_code, response.headers["Content-Type"], response.content) == (status, content_type, body)


def test_fault_drop_connection_closes_without_a_reply(server, http):
    server.inject(Fault(drop_connection=True))

    with pytest.raises(requests.ConnectionError):
        post(http, server, PREDICT, {"instances": [1]})
    assert server.recorded()[-1].status == 0


def test_faults_match_only_their_path(server, http):
    server.inject(Fault(status=500, path_regex=r"/metadata$"))

    predict = post(http, server, PREDICT, {"instances": [1]})
    metadata = http.get(f"{server.url}/v1/models/{MODEL}/metadata", timeout=10)

    assert (predict.status_code, metadata.status_code) == (400, 500)


def test_requests_are_recorded_in_order_with_status_and_size(server, http):
    http.get(f"{server.url}/v1/models/{MODEL}", timeout=10)
    post(http, server, f"/v1/models/{MODEL}/versions/1:predict", b'{"instances": [1]}')

    recorded = server.recorded()

    assert [(r.method, r.path, r.status, r.body_bytes) for r in recorded] == [
        ("GET", f"/v1/models/{MODEL}", 200, 0),
        ("POST", f"/v1/models/{MODEL}/versions/1:predict", 400, 18),
    ]
    assert recorded[1].headers["Content-Length"] == "18"
    assert recorded[0].at <= recorded[1].at


def test_keep_alive_serves_several_requests_over_one_connection(server, http):
    for _ in range(3):
        http.get(f"{server.url}/v1/models/{MODEL}", timeout=10)

    assert server.connection_count == 1
    assert len({r.client_port for r in server.recorded()}) == 1


def test_stop_cuts_open_connections_and_start_serves_again_on_the_same_port(server, http):
    http.get(f"{server.url}/v1/models/{MODEL}", timeout=10)
    url = server.url

    server.stop()
    server.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        http.get(f"{url}/v1/models/{MODEL}", timeout=10)
    server.start()

    assert server.url == url
    assert http.get(f"{url}/v1/models/{MODEL}", timeout=10).status_code == 200


def test_control_surface_drives_faults_labels_and_the_log_over_http(server, http):
    queued = http.post(f"{server.url}/_dev/faults", json=[{"status": 429, "count": 1}], timeout=10)
    throttled = post(http, server, PREDICT, {"instances": [1]})
    labelled = http.post(
        f"{server.url}/_dev/labels", json={"model": MODEL, "label": "canary", "version": 2}, timeout=10
    )
    canary = http.get(f"{server.url}/v1/models/{MODEL}/labels/canary/metadata", timeout=10)
    log = http.get(f"{server.url}/_dev/requests", timeout=10).json()
    cleared = http.delete(f"{server.url}/_dev/requests", timeout=10).json()
    bad = http.post(f"{server.url}/_dev/faults", json=[{"colour": "red"}], timeout=10)

    assert (queued.json(), throttled.status_code, labelled.status_code) == ({"queued": 1}, 429, 200)
    assert json.loads(canary.content)["model_spec"]["version"] == "2"
    assert [(r["path"], r["status"]) for r in log] == [
        (PREDICT, 429),
        (f"/v1/models/{MODEL}/labels/canary/metadata", 200),
    ]
    assert cleared == {"cleared": 2}
    assert bad.status_code == 400


def test_cli_prints_one_listening_line_and_exits_cleanly_on_sigterm(http):
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.devserver", "--builtin", "--label", f"{MODEL}:stable=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        found = re.fullmatch(
            rf"devserver listening on (http://127\.0\.0\.1:\d+) model={MODEL} versions=1,2 kind=builtin\n", line
        )
        assert found, line
        status = http.get(f"{found.group(1)}/v1/models/{MODEL}/labels/stable/metadata", timeout=10)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        process.kill()
        process.communicate()

    assert json.loads(status.content)["model_spec"]["version"] == "1"
    assert code == 0


def test_cli_serves_mean_brightness_behind_an_encoded_image_input(http):
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.devserver", "--builtin", "--builtin-model", "mean_brightness",
         "--jpeg-input", "symmetric", "--versions", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        found = re.fullmatch(rf"devserver listening on (http://[0-9.:]+) model={MODEL} versions=3 kind=builtin\n", line)
        assert found, line
        url = found.group(1)
        metadata = json.loads(http.get(f"{url}/v1/models/{MODEL}/metadata", timeout=10).content)
        grey = io.BytesIO()
        Image.new("RGB", (20, 20), (191, 191, 191)).save(grey, "PNG")
        body = {"instances": [b64_of(grey.getvalue())]}
        score = prediction(http.post(f"{url}/v1/models/{MODEL}:predict", data=json.dumps(body), timeout=10))
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        process.kill()
        process.communicate()

    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert [(name, spec["dtype"]) for name, spec in inputs.items()] == [("image_bytes", "DT_STRING")]
    assert score == pytest.approx(191 / 127.5 - 1, abs=1e-6)  # symmetric scale: [-1, 1]
    assert code == 0


def test_cli_refuses_model_options_with_a_model_base(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "agent.devserver", "--model-base", str(tmp_path), "--jpeg-input"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip

    assert process.returncode == 2
    assert "--builtin-model and --jpeg-input apply to --builtin/--onnx" in process.stderr


# --- the real model (ONNX), where available --------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory: pytest.TempPathFactory):
    path = os.environ.get("CATDOG_ONNX_MODEL")
    if not path or not Path(path).is_file():
        pytest.skip("CATDOG_ONNX_MODEL is not set to the ONNX model file")
    base = make_model_base(tmp_path_factory.mktemp("onnx"), MODEL, versions=(1,), onnx=Path(path))
    make_model_base(base, "onnx_jpeg", versions=(1,), onnx=Path(path), jpeg_input={"size": [150, 150]})
    with DevServer(base) as running:
        yield running


def test_onnx_model_says_cat_for_chelsea_and_dog_for_the_dog(onnx_server, http, cat, dog):
    cat_score = prediction(post(http, onnx_server, PREDICT, {"instances": [cat]}))
    dog_score = prediction(post(http, onnx_server, PREDICT, {"instances": [dog]}))

    assert cat_score < 0.1
    assert dog_score > 0.9


def test_onnx_metadata_comes_from_the_session(onnx_server, http):
    metadata = json.loads(http.get(f"{onnx_server.url}/v1/models/{MODEL}/metadata", timeout=10).content)
    serving = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]

    assert [d["size"] for d in serving["inputs"]["conv2d_input"]["tensor_shape"]["dim"]] == ["-1", "150", "150", "3"]
    assert [d["size"] for d in serving["outputs"]["dense_1"]["tensor_shape"]["dim"]] == ["-1", "1"]


def test_onnx_shape_errors_are_400_with_the_runtimes_text(onnx_server, http):
    response = post(http, onnx_server, PREDICT, {"instances": [[[[0.5, 0.5, 0.5]]]]})

    assert response.status_code == 400
    assert "Got invalid dimensions for input: conv2d_input" in error_of(response)


def test_onnx_model_behind_an_encoded_image_signature_scores_photos_as_their_tensors(onnx_server, http, cat, dog):
    scores = {}
    for name, tensor in (("chelsea.png", cat), ("dog.jpg", dog)):
        value = b64_of((SAMPLES / name).read_bytes())
        from_bytes = prediction(post(http, onnx_server, "/v1/models/onnx_jpeg:predict", {"instances": [value]}))
        from_tensor = prediction(post(http, onnx_server, PREDICT, {"instances": [tensor]}))
        assert from_bytes == pytest.approx(from_tensor, abs=1e-6)
        scores[name] = from_bytes

    assert scores["chelsea.png"] < 0.1 < 0.9 < scores["dog.jpg"]
