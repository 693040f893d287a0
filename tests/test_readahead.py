"""Reading ahead: unpaced on a file source, the next frame is read and encoded while the server answers."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from conftest import SAMPLES, Collector, agent_config, run_agent

from agent.devserver import DevServer, Fault
from agent.frames import Frame
from agent.pacing import Stopped
from agent.readahead import Ahead, ReadAhead
from agent.sources.files import FolderSource, ImageSource

NAMES = ["chelsea.png", "dog.jpg", "person.jpg"]


def run_on_folder(tmp_path, builtin_models, broker, fps: float, delay_first_s: float = 0.0):
    """One finite run over three different photos; (results, request bodies, the agent's stderr lines)."""
    folder = tmp_path / "frames"
    folder.mkdir(parents=True)
    for index, name in enumerate(NAMES, start=1):
        shutil.copy(SAMPLES / name, folder / f"{index}-{name}")
    with DevServer(builtin_models, record_bodies=True) as server:
        if delay_first_s:
            server.inject(Fault(delay_s=delay_first_s))
        config = agent_config(tmp_path, source=folder, server_url=server.url, mqtt_port=broker.port,
                              camera={"fps": fps}, log_level="debug")
        collector = Collector(broker.port, topic=f"catdog/{config.stem}/#").start()
        try:
            proc = run_agent(config)
            assert proc.returncode == 0, proc.stderr
            assert collector.wait_for(lambda: len(collector.results()) == len(NAMES))
            results = collector.results()
        finally:
            collector.stop()
        bodies = [r.body for r in server.recorded() if r.path.endswith(":predict")]
    return results, bodies, proc.stderr.splitlines()


def line_index(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def test_unpaced_folder_run_reads_the_next_photo_while_the_server_answers(tmp_path, builtin_models, broker):
    # The first answer is held 3 s: only a read ahead can log the second photo before the first result.
    results, bodies, lines = run_on_folder(tmp_path / "ahead", builtin_models, broker, fps=0, delay_first_s=3.0)
    assert line_index(lines, "read ahead origin=2-dog.jpg") < line_index(lines, "result frame=1 ")
    assert [r["frame"] for r in results] == [1, 2, 3], "frame numbers stay in order, without gaps"
    assert results[0]["latency_ms"] >= 3000
    assert results[1]["latency_ms"] < 1500, "a frame read ahead counts its latency from its turn, not its read"

    # A paced run never reads ahead; both must send the same bodies in the same order and get the same answers.
    paced, paced_bodies, paced_lines = run_on_folder(tmp_path / "paced", builtin_models, broker, fps=1000)
    assert not any("read ahead" in line for line in paced_lines)
    assert len(set(bodies)) == len(NAMES) and bodies == paced_bodies
    assert [(r["source"], r["scores"]) for r in results] == [(r["source"], r["scores"]) for r in paced]


def test_a_body_made_ahead_is_used_only_for_the_model_encoder_and_signature_it_was_made_for() -> None:
    model, encoder = object(), object()
    ahead = Ahead(Frame(np.zeros((2, 2, 3), np.uint8), 1, 0.0), b"body", (model, encoder, None))
    assert ahead.body_for((model, encoder, None)) == b"body"
    assert ahead.body_for((object(), encoder, None)) is None, "a switched version gets a new body"
    assert ahead.body_for((model, encoder, "other")) is None, "a changed signature gets a new body"
    assert Ahead(None).body_for((model, encoder, None)) is None


class GatedSource:
    """A file-like source whose read waits for the test to let it finish (the read in flight, held)."""

    live, ahead_ok, description = False, True, "gated"

    def __init__(self) -> None:
        self.reading, self.release = threading.Event(), threading.Event()

    def read(self) -> Frame:
        self.reading.set()
        self.release.wait(10)
        return Frame(np.zeros((4, 4, 3), np.uint8), 1, 0.0, "gated")


def test_a_stop_during_a_read_ahead_keeps_it_until_it_is_over_so_its_source_is_not_closed_under_it() -> None:
    stop, source = threading.Event(), GatedSource()
    reader = ReadAhead(stop)
    reader.start(source, None, lambda frame: b"")
    assert source.reading.wait(5)
    stop.set()
    with pytest.raises(Stopped):
        reader.take(source)
    assert reader.drop(0.05) is False, "the read still runs: whoever closes the source must not"
    source.release.set()
    assert reader.drop(5.0) is True
    reader.close()


def test_only_folders_and_video_files_of_up_to_4_mp_are_read_ahead(tmp_path) -> None:
    small, big = (Frame(np.zeros(shape, np.uint8), 1, 0.0) for shape in [(480, 640, 3), (3000, 4000, 3)])
    folder, image = FolderSource(SAMPLES), ImageSource(SAMPLES / "dog.jpg", loop=True)
    assert ReadAhead.worth_it(folder, small)
    assert not ReadAhead.worth_it(folder, big), "a 12 MP photo is not held twice"
    assert not ReadAhead.worth_it(image, small), "a looping image is read when its turn comes: it may be rewritten"
