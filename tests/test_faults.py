"""The running agent under server faults: retries, permanent errors, malformed replies, outages. Real processes."""

from __future__ import annotations

import signal

import pytest
from conftest import MODEL, agent_config, predict_paths, run_agent, start_agent

from agent.devbroker import free_port
from agent.devserver import DevServer, Fault
from agent.errors import TransientServerError
from agent.health import Health
from agent.supervision import Outage, StateReporter


def finished_cleanly(proc, collector) -> dict:
    """Exit 0, no traceback, offline published; returns the last state."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert collector.wait_for(lambda: collector.on("availability") and
                              collector.on("availability")[-1].payload == b"offline")
    return collector.on("state")[-1].json()


def test_503_twice_then_200_gives_every_result_and_logs_two_retries(tmp_path, photos, devserver, broker, collector):
    devserver.inject(Fault(status=503, count=2))
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)

    proc = run_agent(config)

    state = finished_cleanly(proc, collector)
    assert [r["frame"] for r in collector.results()] == [1, 2, 3, 4]
    retries = [line for line in proc.stderr.splitlines() if "server retry" in line]
    assert len(retries) == 2 and all("HTTP 503" in line for line in retries), proc.stderr
    assert state["errors"] == {} and state["server_ok"] is True
    assert len(predict_paths(devserver)) == 6


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"<html><body><h1>Internal error</h1></body></html>", "is not JSON", id="html-page"),
        pytest.param(b'{"predictions": "x"}', "'predictions' is not a non-empty list", id="predictions-string"),
        pytest.param(b'{"predictions": [[NaN]]}', "is not a probability", id="nan"),
        pytest.param(b'{"predictions": [[0.9', "is not JSON", id="truncated-json"),
        pytest.param(b'{"predictions": [[0.2, 0.3, 0.5]]}', "model returned 3 values", id="wrong-shape"),
        pytest.param(b'{"predictions": [[' + b"9" * 400 + b']]}', "out of range", id="huge-number"),
        pytest.param(b'{"predictions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "is not JSON", id="deep-nesting"),
    ],
)
def test_a_malformed_reply_is_reported_and_the_agent_keeps_going(tmp_path, photos, devserver, broker, collector,
                                                                 body, reason):
    devserver.inject(Fault(status=200, body=body, count=1))
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)

    proc = run_agent(config)

    state = finished_cleanly(proc, collector)
    assert [r["frame"] for r in collector.results()] == [2, 3, 4], "the bad reply's frame is skipped, no other"
    assert state["errors"] == {"bad_reply": 1} and reason in state["last_error"]
    error_lines = [line for line in proc.stderr.splitlines() if "bad_reply error" in line]
    assert len(error_lines) == 1 and "frame=1" in error_lines[0] and reason in error_lines[0]
    assert len(predict_paths(devserver)) == 4, "a malformed reply is not retried"


def test_a_400_is_a_clear_permanent_error_without_retries(tmp_path, photos, devserver, broker, collector):
    """A model.size the model does not take makes TF Serving answer 400 for every frame."""
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          model={"size": [100, 100]})

    proc = run_agent(config)

    state = finished_cleanly(proc, collector)
    assert collector.results() == []
    assert state["errors"] == {"server_permanent": 4}
    assert "HTTP 400" in state["last_error"]
    assert len(predict_paths(devserver)) == 4, "400 is never retried"
    logged = [line for line in proc.stderr.splitlines() if "server_permanent error" in line]
    assert len(logged) == 1, "the same error on every frame is logged once, then counted"


def remove_the_version_while_looping(tmp_path, photos, devserver, broker, collector, agent_processes, *, fps: float,
                                     errors: int, timeout: float):
    """Start a looping agent, remove its pinned version once results flow, and wait for ``errors`` 404s.

    Returns the running agent and the number of state messages seen before the removal.
    """
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": fps})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.on("result")) >= 1)
    states_before = len(collector.on("state"))

    devserver.remove_version(MODEL, 2)
    assert collector.wait_for(lambda: any(m.json()["errors"].get("model_unavailable", 0) >= errors
                                          for m in collector.on("state")), timeout=timeout)
    return agent, states_before


def test_a_version_removed_while_running_is_a_clear_error_without_a_retry_storm(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    agent, _ = remove_the_version_while_looping(tmp_path, photos, devserver, broker, collector, agent_processes,
                                                fps=20, errors=3, timeout=20)
    assert agent.terminate(signal.SIGTERM) == 0, agent.stderr

    failed = [r for r in devserver.recorded() if r.path.endswith(":predict") and r.status == 404]
    errors = max(m.json()["errors"].get("model_unavailable", 0) for m in collector.on("state"))
    assert len(failed) <= errors + 1, "one request per frame: a 404 is never retried"
    assert "Servable not found for request: Specific(cat_dog_classifier, 2)" in agent.stderr
    assert "available versions: 1" in agent.stderr, "the error says what the server does have"


def test_a_malformed_status_reply_at_start_exits_69_with_the_reason(tmp_path, photos, devserver, broker):
    devserver.inject(Fault(status=200, path_regex=r"/versions/2$",
                           body=b'{"model_version_status": [{"version": "2", "state": "AVAILABLE", "status": "OK"}]}'))
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)

    proc = run_agent(config)

    assert proc.returncode == 69, proc.stderr
    assert "cannot start" in proc.stderr and "malformed entry" in proc.stderr and "Traceback" not in proc.stderr


def test_permanent_errors_are_paced_and_do_not_flood_the_state_topic(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    agent, states_before = remove_the_version_while_looping(tmp_path, photos, devserver, broker, collector,
                                                            agent_processes, fps=5, errors=6, timeout=30)
    assert collector.on("state")[-1].json()["status"] == "degraded"
    assert agent.terminate() == 0

    failures = [r.at for r in devserver.recorded() if r.path.endswith(":predict") and r.status == 404]
    rate = (len(failures) - 1) / (failures[-1] - failures[0])
    assert rate <= 5.5, f"{len(failures)} failing requests at {rate:.1f}/s: faster than camera.fps"
    span = failures[-1] - failures[0]
    assert len(collector.on("state")) - states_before <= span / StateReporter.MIN_GAP_S + 4


def test_server_down_at_start_is_waited_for_and_then_every_photo_is_classified(
        tmp_path, photos, builtin_models, broker, collector, agent_processes):
    port = free_port()
    server = DevServer(builtin_models, port=port)
    config = agent_config(tmp_path, source=photos, server_url=f"http://127.0.0.1:{port}", mqtt_port=broker.port)
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: any(m.json()["server_ok"] is False for m in collector.on("state")))

    with server.start():
        assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline")
        assert agent.wait(timeout=10) == 0

    assert [r["frame"] for r in collector.results()] == [1, 2, 3, 4]
    assert collector.on("state")[-1].json()["server_ok"] is True


def test_server_outage_mid_run_keeps_the_files_frame_and_logs_down_and_back_once(
        tmp_path, photos, builtin_models, broker, collector, agent_processes):
    server = DevServer(builtin_models).start()
    try:
        config = agent_config(tmp_path, source=photos, server_url=server.url, mqtt_port=broker.port,
                              camera={"fps": 5})
        agent = start_agent(agent_processes, config)
        assert collector.wait_for(lambda: len(collector.on("result")) >= 1)
        server.stop()
        assert collector.wait_for(lambda: any(m.json()["server_ok"] is False for m in collector.on("state")))
        server.start()
        assert agent.wait(timeout=30) == 0
    finally:
        server.stop()

    assert [r["frame"] for r in collector.results()] == [1, 2, 3, 4], "no photo lost to the outage"
    stderr = agent.stderr
    assert stderr.count("server unavailable") == 1 and stderr.count("server back after") == 1, stderr


@pytest.mark.parametrize("fault", [
    pytest.param(Fault(status=503, count=8), id="503-burst-longer-than-the-retries"),
    pytest.param(Fault(delay_s=1.5, count=4), id="replies-slower-than-the-timeout"),
    pytest.param(Fault(drop_connection=True, count=6), id="connections-dropped"),
])
def test_the_agent_recovers_on_its_own_from_a_server_fault_longer_than_its_retries(
        tmp_path, photos, devserver, broker, collector, fault):
    devserver.inject(fault)
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"timeout_s": 0.5, "retry": {"attempts": 2, "initial_s": 0.05, "max_s": 0.1}})

    proc = run_agent(config)

    state = finished_cleanly(proc, collector)
    assert [r["frame"] for r in collector.results()] == [1, 2, 3, 4], "every photo classified after the fault"
    assert state["server_ok"] is True and state["errors"].get("server_transient", 0) >= 1
    assert proc.stderr.count("server unavailable") == 1 and proc.stderr.count("server back after") == 1, proc.stderr


def test_outage_pauses_grow_are_capped_and_jittered_so_a_fleet_does_not_retry_in_step() -> None:
    outage = Outage(Health("d", MODEL, None), initial_s=1.0, max_s=8.0)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        while outage.failures < failures:
            outage.down(TransientServerError("unreachable"))
        pauses = [outage.pause_s() for _ in range(200)]
        assert all(base / 2 <= pause <= base for pause in pauses)
        assert max(pauses) - min(pauses) > base / 4, "devices that failed together must not all wait alike"
