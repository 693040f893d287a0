"""The durable outbox (issue 4): oldest first, acknowledged ones forgotten, bounded, counted, crash-proof.

Unit tests run on a real SQLite file in tmp_path; the last test runs the real agent against a broker that is
down, then up.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, Collector, agent_config, device_for, start_agent

import agent.outbox
from agent.devbroker import LocalBroker, free_port
from agent.devserver import DevServer
from agent.outbox import FILE_NAME, Entry, Outbox, OutboxError

TOPIC = "catdog/d/result"


def payload(frame: int) -> bytes:
    return json.dumps({"frame": frame}).encode()


def frames(entries: list[Entry]) -> list[int]:
    return [json.loads(entry.payload)["frame"] for entry in entries]


def put_frames(box: Outbox, first: int, last: int) -> None:
    for frame in range(first, last + 1):
        box.put(TOPIC, payload(frame), frame)


@contextlib.contextmanager
def opened(state_dir: Path, max_messages: int = 1000):
    box = Outbox(state_dir, max_messages)
    try:
        yield box
    finally:
        box.close()


def rows_in_file(state_dir: Path) -> list[int]:
    """The frames of the rows in the file, read by another connection (what a crash would leave)."""
    with contextlib.closing(sqlite3.connect(state_dir / FILE_NAME)) as db:
        return [json.loads(p)["frame"] for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]


def counters_in_file(state_dir: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(state_dir / FILE_NAME)) as db:
        return dict(db.execute("SELECT name, value FROM counters"))


# --- order ------------------------------------------------------------------------------------------------


def test_claim_hands_out_the_oldest_first_and_a_second_claim_continues_after_the_first(tmp_path):
    with opened(tmp_path) as box:
        assert (len(box), box.dropped, box.last_frame, box.claim(5)) == (0, 0, 0, [])
        put_frames(box, 1, 7)

        first = box.claim(3)
        second = box.claim(3)
        third = box.claim(3)

        assert frames(first) == [1, 2, 3]
        assert frames(second) == [4, 5, 6]
        assert frames(third) == [7]
        assert box.claim(3) == [] and box.claim(0) == []
        assert all(entry.topic == TOPIC for entry in first + second + third)
        assert len(box) == 7, "claimed is not acknowledged: still counted"


def test_after_an_agent_restart_what_is_left_is_delivered_first_in_order(tmp_path):
    with opened(tmp_path) as box:
        put_frames(box, 1, 6)
        claimed = box.claim(4)
        for entry in claimed[:2] + claimed[3:]:  # 1, 2 and 4 acknowledged; 3 was in flight, 5 and 6 waiting
            box.ack(entry.id)

    with opened(tmp_path) as box:  # a new process: nothing is claimed any more
        assert len(box) == 3
        assert frames(box.claim(10)) == [3, 5, 6]
        put_frames(box, 7, 7)  # live results come after the ones left over
        assert frames(box.claim(10)) == [7]


def test_acks_are_batched_len_excludes_them_at_once_and_close_writes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.outbox, "ACK_FLUSH_S", 3600.0)  # "within ACK_FLUSH_S", whatever the machine's speed
    box = Outbox(tmp_path, 1000)
    try:
        put_frames(box, 1, 3)
        for entry in box.claim(2):
            box.ack(entry.id)

        assert len(box) == 1, "an acknowledged result no longer counts"
        assert rows_in_file(tmp_path) == [1, 2, 3], "the deletes wait for the next batch (SD-card wear)"
    finally:
        box.close()
    assert rows_in_file(tmp_path) == [3], "close() writes the pending acknowledgements"


def test_an_ack_after_ack_flush_s_writes_the_batch_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.outbox, "ACK_FLUSH_S", 0.0)
    with opened(tmp_path) as box:
        put_frames(box, 1, 3)
        box.ack(box.claim(1)[0].id)
        assert rows_in_file(tmp_path) == [2, 3]


# --- the bound ---------------------------------------------------------------------------------------------


def test_the_bound_keeps_the_newest_waiting_results_and_counts_the_dropped_ones(tmp_path):
    with opened(tmp_path, max_messages=3) as box:
        put_frames(box, 1, 10)
        assert (len(box), box.dropped) == (3, 7)
        assert rows_in_file(tmp_path) == [8, 9, 10]

    with opened(tmp_path, max_messages=3) as box:
        assert box.dropped == 7, "the count survives a restart"
        assert frames(box.claim(10)) == [8, 9, 10]
        put_frames(box, 11, 12)  # three in flight: the new ones are the only waiting ones
        assert box.dropped == 9
    assert counters_in_file(tmp_path)["dropped"] == 9


def test_claimed_results_are_never_dropped_even_beyond_the_bound(tmp_path):
    with opened(tmp_path, max_messages=3) as box:
        put_frames(box, 1, 3)
        in_flight = box.claim(2)  # 1 and 2: the broker may already have them
        put_frames(box, 4, 10)

        assert frames(in_flight) == [1, 2]
        assert rows_in_file(tmp_path) == [1, 2, 10], "the oldest *waiting* ones went; the claimed ones stay"
        assert (len(box), box.dropped) == (3, 7)

        more = box.claim(3)  # 10 is in flight too: all three claimed, and the bound is full
        put_frames(box, 11, 12)
        assert frames(more) == [10]
        assert rows_in_file(tmp_path) == [1, 2, 10], "nothing claimed is dropped, even to make room"
        assert box.dropped == 9

        for entry in in_flight:
            box.ack(entry.id)
    with opened(tmp_path, max_messages=3) as box:
        assert frames(box.claim(10)) == [10]


def test_a_smaller_bound_after_a_restart_drops_the_oldest_on_the_next_result(tmp_path):
    with opened(tmp_path, max_messages=10) as box:
        put_frames(box, 1, 6)
    with opened(tmp_path, max_messages=2) as box:
        put_frames(box, 7, 7)
        assert (len(box), box.dropped) == (2, 5)
        assert frames(box.claim(10)) == [6, 7]


# --- frame numbers -----------------------------------------------------------------------------------------


def test_last_frame_is_the_highest_frame_stored_and_survives_a_restart(tmp_path):
    with opened(tmp_path) as box:
        for frame in (5, 3, 9, 7):
            box.put(TOPIC, payload(frame), frame)
        assert box.last_frame == 9
        for entry in box.claim(10):
            box.ack(entry.id)

    with opened(tmp_path) as box:
        assert len(box) == 0
        assert box.last_frame == 9, "even with every result delivered: frame numbers go on from here"


# --- a state_dir the agent cannot use ----------------------------------------------------------------------


def test_a_state_dir_that_cannot_be_created_raises_outbox_error_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    state_dir = blocker / "state"

    with pytest.raises(OutboxError) as raised:
        Outbox(state_dir, 10)
    assert f"state_dir {state_dir}" in str(raised.value)


def test_a_read_only_state_dir_raises_outbox_error_naming_it(tmp_path):
    state_dir = tmp_path / "state"
    if os.geteuid() == 0:  # root writes through chmod: a regular file where the directory should be
        state_dir.write_text("not a directory")
    else:
        state_dir.mkdir(mode=0o500)
    try:
        with pytest.raises(OutboxError) as raised:
            Outbox(state_dir, 10)
    finally:
        if state_dir.is_dir():
            state_dir.chmod(0o700)  # or tmp_path cannot be cleaned up
    assert f"state_dir {state_dir}" in str(raised.value)


FULL_DISK_CHILD = """
import json, os, resource, signal, sys
from agent.outbox import FILE_NAME, Outbox, OutboxError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond RLIMIT_FSIZE fails with EFBIG: a full disk
box = Outbox(sys.argv[1], 3)
for frame in (1, 2):
    box.put("catdog/d/result", json.dumps({"frame": frame}).encode(), frame)
limit = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(os.path.join(sys.argv[1], FILE_NAME + "-wal")), limit[1]))
errors = []
for frame in (3, 4):  # 3 fits the bound, 4 would drop the oldest
    try:
        box.put("catdog/d/result", json.dumps({"frame": frame}).encode(), frame)
    except OutboxError as exc:
        errors.append(str(exc))
resource.setrlimit(resource.RLIMIT_FSIZE, limit)
print(json.dumps({"errors": errors, "len": len(box), "dropped": box.dropped, "last_frame": box.last_frame}))
box.close()
"""


def test_a_result_that_cannot_be_written_leaves_the_outbox_as_it_is_on_disk(tmp_path):
    state_dir = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(state_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert len(seen["errors"]) == 2 and all("cannot store a result" in e for e in seen["errors"]), seen

    with opened(state_dir, max_messages=3) as box:
        assert frames(box.claim(10)) == [1, 2], "nothing half-written"
        on_disk = {"len": len(box), "dropped": box.dropped, "last_frame": box.last_frame}
    assert {k: seen[k] for k in on_disk} == on_disk == {"len": 2, "dropped": 0, "last_frame": 2}


# --- two threads at once -----------------------------------------------------------------------------------


class Traffic:
    """What the agent does at once: its loop puts, the sender thread claims, paho's network thread acks."""

    def __init__(self, box: Outbox, count: int):
        self.box, self.count = box, count
        self.stored = threading.Semaphore(0)  # released once per stored result: the claimer awaits it
        self.handed: queue.Queue[Entry | None] = queue.Queue()  # claimed -> acker; None ends it
        self.acked: list[Entry] = []
        self.errors: list[Exception] = []

    def run(self) -> None:
        threads = [threading.Thread(target=self._guarded, args=(work,)) for work in (self.put, self.claim, self.ack)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)

    def _guarded(self, work) -> None:
        try:
            work()
        except Exception as exc:  # reported by the test
            self.errors.append(exc)
            self.handed.put(None)

    def put(self) -> None:
        for frame in range(1, self.count + 1):
            self.box.put(TOPIC, payload(frame), frame)
            self.stored.release()

    def claim(self) -> None:
        claimed = 0
        while claimed < self.count:
            assert self.stored.acquire(timeout=20), "no result stored"
            batch = self.box.claim(50)
            assert batch, "a stored result must be claimable"
            for _ in batch[1:]:  # their releases are due: each of them was stored
                assert self.stored.acquire(timeout=20)
            for entry in batch:
                self.handed.put(entry)
            claimed += len(batch)
        self.handed.put(None)

    def ack(self) -> None:
        while (entry := self.handed.get(timeout=20)) is not None:
            self.box.ack(entry.id)
            self.acked.append(entry)


def test_a_putting_thread_and_an_acking_thread_lose_and_duplicate_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.outbox, "ACK_FLUSH_S", 0.005)  # many batches written while results arrive
    count = 3000
    with opened(tmp_path, max_messages=count * 2) as box:
        traffic = Traffic(box, count)
        traffic.run()

        assert traffic.errors == []
        assert frames(traffic.acked) == list(range(1, count + 1)), "each exactly once, in order"
        assert (len(box), box.dropped, box.last_frame) == (0, 0, count)
    assert rows_in_file(tmp_path) == []


# --- crashes ----------------------------------------------------------------------------------------------

CHILD = """
import json, os, signal, sys
import agent.outbox
from agent.outbox import Outbox
state_dir, count, acks, death = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
agent.outbox.ACK_FLUSH_S = 3600.0  # acknowledgements not written yet when the process dies
box = Outbox(state_dir, 1000)
for frame in range(1, count + 1):
    box.put("catdog/d/result", json.dumps({"frame": frame}).encode(), frame)
for entry in box.claim(acks):
    box.ack(entry.id)
print("stored", flush=True)
if death == "SIGKILL":
    os.kill(os.getpid(), signal.SIGKILL)
os._exit(0)
"""


def die_after_storing(state_dir: Path, count: int, death: str, acks: int = 0) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(state_dir), str(count), str(acks), death], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == "stored\n", proc.stderr
    assert proc.returncode == (-signal.SIGKILL if death == "SIGKILL" else 0), proc.stderr
    assert (state_dir / (FILE_NAME + "-wal")).exists(), "the outbox was never closed"


@pytest.mark.parametrize("death", ["SIGKILL", "os._exit"])
def test_every_stored_result_survives_a_crash_in_order(tmp_path, death):
    die_after_storing(tmp_path / "state", 40, death)

    with opened(tmp_path / "state") as box:
        assert (len(box), box.last_frame) == (40, 40)
        assert frames(box.claim(100)) == list(range(1, 41))


def test_results_acknowledged_but_not_yet_written_at_a_crash_come_again(tmp_path):
    """At least once: a result sent twice is harmless (subscribers dedupe on device + frame), a lost one is not."""
    die_after_storing(tmp_path / "state", 10, "SIGKILL", acks=4)

    with opened(tmp_path / "state") as box:
        assert frames(box.claim(100)) == list(range(1, 11))


# --- end to end: the bound with the real agent ----------------------------------------------------------


def wait_for_predicts(server: DevServer, count: int, timeout: float = 20.0) -> bool:
    seen: set[tuple[float, int]] = set()

    def enough(request) -> bool:  # called under the server's lock: count what goes by, call nothing back
        if request.path.endswith(":predict"):
            seen.add((request.at, request.client_port))  # a record is replaced once answered: not by id
        return len(seen) >= count

    return server.wait_for_request(enough, timeout)


def test_a_long_broker_outage_keeps_the_newest_results_and_state_counts_the_dropped_ones(
        tmp_path, photos, devserver, agent_processes):
    port = free_port()  # nothing listens there: the broker is down from the start
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=port,
                          camera={"loop": True, "fps": 10}, mqtt={"outbox": {"max_messages": 3}})
    state_dir = tmp_path / "state"

    first = start_agent(agent_processes, config)
    assert wait_for_predicts(devserver, 13), first.stderr  # one frame at a time: 12 results are stored
    assert first.terminate(signal.SIGTERM) == 0, first.stderr
    assert "Traceback" not in first.stderr

    predicts = sum(1 for r in devserver.recorded() if r.path.endswith(":predict"))
    classified = counters_in_file(state_dir)["last_frame"]  # frames are numbered 1, 2, ... in a first run
    assert predicts - 1 <= classified <= predicts, "every answered frame but one cut short by the stop is stored"
    assert classified >= 12
    kept = list(range(classified - 2, classified + 1))
    assert rows_in_file(state_dir) == kept, "at most 3 rows: the newest ones"
    assert counters_in_file(state_dir)["dropped"] == classified - 3

    with LocalBroker(port=port) as broker:
        collector = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/#").start()
        try:
            second = start_agent(agent_processes, config)
            assert collector.wait_for(lambda: len(collector.on("result")) >= 6), second.stderr
            assert collector.wait_for(lambda: bool(collector.on("state"))), second.stderr
            assert second.terminate(signal.SIGTERM) == 0, second.stderr
            assert collector.wait_for(lambda: collector.on("state")[-1].json()["status"] == "stopped")
        finally:
            collector.stop()

    numbers = [result["frame"] for result in collector.results()]
    assert numbers[:3] == kept, "what was left is delivered first, in order"
    assert numbers[3:] == list(range(classified + 1, classified + 1 + len(numbers) - 3)), \
        "the second run's frames continue after the first run's"
    states = [m.json() for m in collector.on("state")]
    assert [s["dropped"] for s in states] == [classified - 3] * len(states), states
    assert rows_in_file(state_dir) == [], "with the broker back, everything was acknowledged before the exit"


FULL_DISK_AT_CLOSE_CHILD = """
import json, os, resource, signal, sys
from agent.outbox import FILE_NAME, Outbox
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
box = Outbox(sys.argv[1], 10)
for frame in (1, 2):
    box.put("catdog/d/result", json.dumps({"frame": frame}).encode(), frame)
for entry in box.claim(10):
    box.ack(entry.id)  # within ACK_FLUSH_S: written at close
wal = os.path.join(sys.argv[1], FILE_NAME + "-wal")
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(wal), resource.RLIM_INFINITY))
box.close()  # the flush fails: logged, the file still closed
box.close()
print(json.dumps({"claim_after_close": len(box.claim(10))}))
"""


def test_a_full_disk_at_close_is_logged_and_the_acknowledged_results_come_again(tmp_path):
    state_dir = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_AT_CLOSE_CHILD, str(state_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"claim_after_close": 0}
    with opened(state_dir) as box:
        assert frames(box.claim(10)) == [1, 2]  # at least once: sent again next run, never lost


# --- opening at start: what a restart can cure, and what it cannot -------------------------------------------


def test_a_damaged_outbox_file_is_kept_aside_and_a_new_one_takes_the_results(tmp_path, caplog):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / FILE_NAME).write_bytes(b"\x00not sqlite" * 512)  # what an SD card may leave after a power cut

    box = Outbox(state_dir, 10)
    box.put("catdog/d/result", b'{"frame": 1}', 1)
    assert len(box) == 1
    box.close()

    kept = list(state_dir.glob(f"{FILE_NAME}.corrupt-*Z"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"\x00not sqlite"), "kept for inspection"
    assert "outbox damaged" in caplog.text and str(kept[0]) in caplog.text


def test_damaged_pages_inside_a_valid_outbox_are_found_at_open(tmp_path):
    state_dir = tmp_path / "state"
    box = Outbox(state_dir, 1000)
    for frame in range(1, 301):
        box.put("catdog/d/result", json.dumps({"frame": frame, "pad": "x" * 200}).encode(), frame)
    box.close()
    path = state_dir / FILE_NAME
    data = bytearray(path.read_bytes())
    data[4096 + 8:4096 + 200] = b"\xff" * 192  # the second page's header and cell pointers
    path.write_bytes(bytes(data))

    fresh = Outbox(state_dir, 1000)
    assert len(fresh) == 0 and len(list(state_dir.glob(f"{FILE_NAME}.corrupt-*Z"))) == 1
    assert fresh.last_frame == 300, "frame numbers go on from the damaged file's count: subscribers dedupe on them"
    fresh.close()
    assert Outbox(state_dir, 1000).last_frame == 300, "kept in the new file: a crash before the next result keeps it"


def test_a_damaged_schema_is_damage_too(tmp_path):
    state_dir = tmp_path / "state"
    box = Outbox(state_dir, 10)
    box.put("catdog/d/result", b'{"frame": 1}', 1)
    box.close()
    path = state_dir / FILE_NAME
    path.write_bytes(path.read_bytes().replace(b"CREATE TABLE outbox", b"XREATE TABLE outbox"))

    assert len(Outbox(state_dir, 10)) == 0
    assert len(list(state_dir.glob(f"{FILE_NAME}.corrupt-*Z"))) == 1


def _no_room_for_files() -> None:  # in the child: every file write fails as on a full disk
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.parametrize(("problem", "code"), [("full-disk", 69), ("state-dir-is-a-file", 78)])
def test_an_outbox_that_cannot_open_exits_69_when_a_restart_may_cure_it_else_78(tmp_path, problem, code):
    state_dir = tmp_path / "state"
    if problem == "state-dir-is-a-file":
        state_dir.write_text("not a directory")
    config = agent_config(tmp_path, source=tmp_path, server_url=f"http://127.0.0.1:{free_port()}", mqtt_port=1,
                          state_dir=str(state_dir))
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=REPO, timeout=60,
                          capture_output=True, text=True, preexec_fn=_no_room_for_files if code == 69 else None)
    assert proc.returncode == code, proc.stderr
    assert f"state_dir {state_dir}: cannot open the outbox" in proc.stderr and "Traceback" not in proc.stderr
