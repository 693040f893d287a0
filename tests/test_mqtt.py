"""The MQTT publisher against a real mosquitto: availability, Last Will, delivery tracking, robustness."""

from __future__ import annotations

import signal
import threading

import pytest
from conftest import Collector, agent_config, device_for, start_agent

from agent.config import MqttConfig, TlsConfig
from agent.devbroker import LocalBroker
from agent.errors import PublishError
from agent.mqtt import Publisher, Topics, encode_payload


def test_topics_follow_the_contract():
    topics = Topics.for_device("catdog", "porch-pi", ("garden", "north"))
    assert topics == Topics("catdog/porch-pi/availability", "catdog/porch-pi/result", "catdog/porch-pi/state",
                            "catdog/porch-pi/command", "catdog/porch-pi/command/result", "catdog/porch-pi/snapshot",
                            ("catdog/group/garden/command", "catdog/group/north/command"))
    assert topics.commands == ("catdog/porch-pi/command", "catdog/group/garden/command", "catdog/group/north/command")


def test_payload_encoding_is_compact_json_and_refuses_nan():
    assert encode_payload({"label": "dog", "score": 0.9}) == b'{"label":"dog","score":0.9}'
    with pytest.raises(ValueError):
        encode_payload({"score": float("nan")})


def make_publisher(port: int, device: str = "unit", **changes) -> Publisher:
    cfg = MqttConfig(host="127.0.0.1", port=port, **changes)
    return Publisher(cfg, Topics.for_device("catdog", device), f"catdog-{device}")


def test_publisher_announces_online_retained_and_every_result_is_acknowledged(broker, collector, tmp_path):
    publisher = make_publisher(broker.port, device_for(tmp_path)).start()
    assert publisher.wait_connected(5)
    for frame in range(1, 6):
        publisher.publish_result({"frame": frame})
    assert publisher.wait_delivered(timeout=5)
    assert publisher.pending() == 0
    assert collector.wait_for(lambda: len(collector.on("result")) == 5)
    assert [r["frame"] for r in collector.results()] == [1, 2, 3, 4, 5]
    online = collector.on("availability")[0]
    assert online.payload == b"online"
    publisher.stop()
    assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline")


def test_retained_availability_and_state_reach_a_late_subscriber(broker, tmp_path):
    publisher = make_publisher(broker.port, device_for(tmp_path)).start()
    assert publisher.wait_connected(5)
    publisher.publish_state({"status": "running"})
    assert publisher.wait_delivered(timeout=5)
    late = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/#").start()
    try:
        assert late.wait_for(lambda: late.on("state") and late.on("availability"))
        assert late.on("state")[0].retain and late.on("state")[0].json() == {"status": "running"}
        assert late.on("availability")[0].payload == b"online"
    finally:
        late.stop()
        publisher.stop()


def test_results_published_while_the_broker_is_down_are_delivered_after_it_returns(tmp_path):
    with LocalBroker() as own:
        publisher = make_publisher(own.port).start()
        assert publisher.wait_connected(5)
        assert publisher.wait_delivered(timeout=5)  # "online" acknowledged: only the result is pending below
        own.stop()
        publisher.publish_result({"frame": 1})
        assert publisher.pending() == 1
        own.start()
        watcher = Collector(own.port, topic="catdog/unit/result").start()
        try:
            assert publisher.wait_delivered(timeout=15), "queued QoS 1 result was not acknowledged after reconnect"
            assert watcher.wait_for(lambda: watcher.results() == [{"frame": 1}])
        finally:
            watcher.stop()
            publisher.stop()


def test_an_exception_in_a_callback_does_not_kill_the_network_thread():
    with LocalBroker() as own:
        publisher = make_publisher(own.port)
        calls = []
        reconnected = threading.Event()

        def broken_hook() -> None:
            calls.append(1)
            if len(calls) >= 2:
                reconnected.set()
            raise RuntimeError("bug in a callback")

        publisher.on_connect_hooks.append(broken_hook)
        publisher.start()
        assert publisher.wait_connected(5)
        own.restart()  # the network thread must survive the raise to reconnect
        watcher = Collector(own.port, topic="catdog/unit/result").start()
        try:
            assert reconnected.wait(15) and publisher.wait_connected(5)
            publisher.publish_result({"frame": 2})
            assert publisher.wait_delivered(timeout=5)
            assert watcher.wait_for(lambda: watcher.results() == [{"frame": 2}])
        finally:
            watcher.stop()
            publisher.stop()


def test_last_will_publishes_offline_when_the_agent_dies(tmp_path, photos, devserver, broker, collector,
                                                         agent_processes):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 5})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.on("result")) >= 1)

    agent.process.send_signal(signal.SIGKILL)
    agent.process.wait(timeout=5)

    assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline", timeout=10)


def test_an_encrypted_tls_key_is_refused_instead_of_prompting(tmp_path):
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    cert = tmp_path / "client.crt"
    cert.write_text("x")
    with pytest.raises(PublishError, match="is encrypted"):
        make_publisher(1883, tls=TlsConfig(certfile=str(cert), keyfile=str(key)))


def test_unreadable_tls_files_are_a_clear_error(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(PublishError, match="cannot load certificates"):
        make_publisher(1883, tls=TlsConfig(ca_certs=str(bogus)))


@pytest.mark.parametrize(("password", "connects"), [("s3cret", True), ("wrong", False)])
def test_username_and_password_file_authenticate_at_the_broker(tmp_path, password, connects):
    secret = tmp_path / "pw"
    secret.write_text(password + "\n")  # the trailing newline an editor adds is not part of the password
    with LocalBroker(users={"agent": "s3cret"}) as own:
        publisher = make_publisher(own.port, username="agent", password_file=str(secret)).start()
        try:
            assert publisher.wait_connected(3 if connects else 1.5) is connects
        finally:
            publisher.stop(timeout=0.5)
