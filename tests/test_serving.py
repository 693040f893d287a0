"""The TF Serving client against the stand-in over real HTTP: URLs, status, metadata, retries, error mapping."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import numpy as np
import pytest
from conftest import MODEL

from agent.config import ModelConfig
from agent.devserver import Fault
from agent.encode import PixelEncoder, predict_body
from agent.errors import BadReplyError, ModelNotAvailable, PermanentServerError, TransientServerError
from agent.model import fetch_served_model
from agent.serving import Endpoint, RetryPolicy, ServingClient

FAST_RETRY = RetryPolicy(attempts=3, initial_s=0.01, max_s=0.05)


def client_for(server, *, version=2, label=None, timeout_s=5.0, retry=FAST_RETRY) -> ServingClient:
    return ServingClient(Endpoint(server.url, MODEL, version, label), timeout_s=timeout_s, retry=retry)


def body_for_one_frame() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, size=(150, 150, 3), dtype=np.uint8)
    return predict_body(pixels, PixelEncoder("unit"), input_name="conv2d_input", signature="serving_default")


@pytest.mark.parametrize(
    ("version", "label", "url"),
    [
        (2, None, "http://h:8501/v1/models/m/versions/2:predict"),
        (None, "stable", "http://h:8501/v1/models/m/labels/stable:predict"),
        (None, None, "http://h:8501/v1/models/m:predict"),
    ],
)
def test_endpoint_urls_follow_the_tf_serving_grammar(version, label, url):
    assert Endpoint("http://h:8501/", "m", version, label).predict_url == url


def test_status_and_metadata_of_a_pinned_version(devserver):
    client = client_for(devserver)
    states = client.check_available()
    assert [(s.version, s.state) for s in states] == [("2", "AVAILABLE")]
    meta = client.metadata()
    assert meta.version == "2"
    assert meta.inputs["conv2d_input"].shape == (-1, 150, 150, 3)
    assert meta.inputs["conv2d_input"].dtype == "DT_FLOAT"
    assert list(meta.outputs) == ["dense_1"]


def test_model_resolution_reads_input_name_and_size_from_metadata(devserver):
    model = fetch_served_model(client_for(devserver), ModelConfig())
    assert model.input_name == "conv2d_input" and model.output_name is None
    assert (model.input_spec.height, model.input_spec.width) == (150, 150)


def test_model_resolution_rejects_a_configured_input_the_signature_lacks(devserver):
    with pytest.raises(ModelNotAvailable, match="model.input 'image' is not an input of the signature"):
        fetch_served_model(client_for(devserver), ModelConfig(input="image"))


def test_label_metadata_reveals_the_version_the_label_points_to(devserver):
    assert client_for(devserver, version=None, label="stable").metadata().version == "1"
    devserver.set_label(MODEL, "stable", 2)
    assert client_for(devserver, version=None, label="stable").metadata().version == "2"


def test_predict_returns_the_parsed_reply(devserver):
    reply = client_for(devserver).predict(body_for_one_frame())
    assert len(reply["predictions"]) == 1 and 0 < reply["predictions"][0][0] < 1


def test_503_twice_then_200_gives_one_reply_after_two_logged_retries(devserver, caplog):
    devserver.inject(Fault(status=503, count=2))
    with caplog.at_level(logging.WARNING, logger="agent.serving"):
        reply = client_for(devserver).predict(body_for_one_frame())
    assert "predictions" in reply
    retries = [r.getMessage() for r in caplog.records if "server retry" in r.getMessage()]
    assert len(retries) == 2 and all("op=predict" in line and "HTTP 503" in line for line in retries)
    assert len([r for r in devserver.recorded() if r.path.endswith(":predict")]) == 3


@pytest.mark.parametrize("status", [429, 502, 504])
def test_other_transient_statuses_are_retried(devserver, status):
    devserver.inject(Fault(status=status, count=1))
    assert "predictions" in client_for(devserver).predict(body_for_one_frame())


def test_transient_errors_give_up_after_the_configured_attempts(devserver):
    devserver.inject(Fault(status=503, count=10))
    with pytest.raises(TransientServerError, match="HTTP 503"):
        client_for(devserver).predict(body_for_one_frame())
    assert len([r for r in devserver.recorded() if r.path.endswith(":predict")]) == FAST_RETRY.attempts


def test_unknown_version_is_permanent_clear_lists_what_is_served_and_is_not_retried(devserver):
    with pytest.raises(ModelNotAvailable) as caught:
        client_for(devserver, version=7).predict(body_for_one_frame())
    assert caught.value.status == 404
    assert "Servable not found for request: Specific(cat_dog_classifier, 7)" in str(caught.value)
    assert "available versions: 2, 1" in str(caught.value)
    assert [r.method for r in devserver.recorded()] == ["POST", "GET"], "one predict, then one listing"


def test_unavailable_pinned_version_lists_the_versions_that_are(devserver):
    with pytest.raises(ModelNotAvailable, match=r"version 7 .*available versions: 2, 1"):
        client_for(devserver, version=7).check_available()
    assert len(devserver.recorded()) <= 3, "one status call and one listing, no retry storm"


def test_bad_request_is_permanent_with_the_servers_message(devserver):
    with pytest.raises(PermanentServerError) as caught:
        client_for(devserver).predict(b'{"instances": ["x"]}')
    assert caught.value.status == 400
    assert "is not of expected type: float" in str(caught.value)
    assert len(devserver.recorded()) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"<html><body><h1>502 Bad Gateway</h1></body></html>", "is not JSON", id="html"),
        pytest.param(b'{"predictions": [[0.5', "is not JSON", id="truncated"),
        pytest.param(b"", "is not JSON", id="empty"),
    ],
)
def test_unparseable_200_replies_are_bad_replies_not_crashes(devserver, body, message):
    devserver.inject(Fault(status=200, body=body))
    with pytest.raises(BadReplyError, match=message):
        client_for(devserver).predict(body_for_one_frame())
    assert len(devserver.recorded()) == 1, "a bad reply is not retried"


def test_html_error_page_from_a_proxy_is_reported_by_its_text(devserver):
    devserver.inject(Fault(status=404, body=b"<html><body>Not Found: no such route</body></html>"))
    with pytest.raises(PermanentServerError, match="HTTP 404: <html><body>Not Found: no such route"):
        client_for(devserver).predict(body_for_one_frame())


def test_a_reply_slower_than_the_timeout_is_transient_and_retried(devserver):
    devserver.inject(Fault(delay_s=1.0, count=1))
    reply = client_for(devserver, timeout_s=0.3).predict(body_for_one_frame())
    assert "predictions" in reply


def test_connection_refused_is_transient():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: refused
        client = ServingClient(Endpoint(f"http://127.0.0.1:{port}", MODEL, 2), retry=FAST_RETRY)
        with pytest.raises(TransientServerError, match="cannot connect"):
            client.predict(b"{}")


def test_a_dropped_connection_is_transient_and_retried(devserver):
    devserver.inject(Fault(drop_connection=True, count=1))
    assert "predictions" in client_for(devserver).predict(body_for_one_frame())


def test_stop_event_ends_the_back_off_at_once_and_sends_nothing_more(devserver):
    devserver.inject(Fault(status=503, count=100))
    stop = threading.Event()
    client = ServingClient(Endpoint(devserver.url, MODEL, 2), retry=RetryPolicy(attempts=50, initial_s=5, max_s=5),
                           stop=stop)
    outcome: list = []
    caller = threading.Thread(target=lambda: outcome.append(pytest.raises(TransientServerError, client.predict,
                                                                          body_for_one_frame())))
    caller.start()
    assert devserver.wait_for_request(lambda r: r.path.endswith(":predict"))
    started = time.monotonic()
    stop.set()
    caller.join(10)
    assert outcome and time.monotonic() - started < 2.0, "the 5 s back-off ended at the stop"
    assert len(devserver.recorded()) == 1, "no attempt after the stop"


def test_requests_reuse_one_keep_alive_connection(devserver):
    client = client_for(devserver)
    for _ in range(5):
        client.predict(body_for_one_frame())
    ports = {r.client_port for r in devserver.recorded()}
    assert len(ports) == 1, ports


def test_the_request_body_names_the_signature_and_the_input(devserver):
    client_for(devserver).predict(body_for_one_frame())
    sent = json.loads(devserver.last_body())
    assert sent["signature_name"] == "serving_default"
    assert list(sent["instances"][0]) == ["conv2d_input"]
