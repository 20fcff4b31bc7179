"""The local outbox: durable appends from many processes, an ordered, resumable drain."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

from memory_worker import spool
from memory_worker.spool import Outbox, Record
from tests.processes import wait_for


def _message(n: int, **extra: Any) -> Record:
    return {"client_msg_id": f"m{n}", "thread_id": "t-1", "role": "user",
            "content": f"message {n}", **extra}


def _drain_all(outbox: Outbox) -> tuple[list[Record], spool.DrainReport]:
    published: list[Record] = []
    return published, outbox.drain(published.append)


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} - {spool.APPEND_LOCK, spool.DRAIN_LOCK}


def test_a_record_is_one_checksummed_json_line(tmp_path: Path) -> None:
    """`<crc32 hex> <json>\\n`, ASCII only, one line whatever the content holds."""
    outbox = Outbox(tmp_path / "spool")
    outbox.append(_message(1, content="two\nlines, ünicode"))

    [line] = (tmp_path / "spool" / spool.ACTIVE).read_bytes().splitlines(keepends=True)
    checksum, body = line.rstrip(b"\n").split(b" ", 1)
    assert line.isascii() and line.endswith(b"\n")
    assert int(checksum, 16) == zlib.crc32(body) and len(checksum) == 8
    assert json.loads(body) == _message(1, content="two\nlines, ünicode")


def test_append_fsyncs_the_file_every_time_and_the_directory_when_it_creates_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable on return: the data by fsync of the file, new names by fsync of their directory."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    outbox = Outbox(tmp_path / "spool")

    outbox.append(_message(1))
    first = list(synced)
    synced.clear()
    outbox.append(_message(2))

    # the parent, holding the new directory; the file; the directory, holding the file's name
    assert first == [tmp_path.name, spool.ACTIVE, "spool"]
    assert synced == [spool.ACTIVE]


def test_records_that_are_not_json_objects_are_refused_and_nothing_is_written(
    tmp_path: Path
) -> None:
    """A set or a NaN cannot be published later, so they are refused now."""
    outbox = Outbox(tmp_path)
    with pytest.raises(TypeError):
        outbox.append({"when": {1, 2}})
    with pytest.raises(ValueError):
        outbox.append({"score": float("nan")})
    assert outbox.pending() == 0


def test_drain_publishes_oldest_first_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Five records out in order; no segment, offset or active data left."""
    outbox = Outbox(tmp_path)
    for n in range(5):
        outbox.append(_message(n))
    assert outbox.pending() == 5

    published, report = _drain_all(outbox)

    assert published == [_message(n) for n in range(5)]
    assert (report.published, report.remaining, report.corrupt) == (5, 0, 0)
    assert outbox.pending() == 0 and _files(tmp_path) == set()


def test_draining_an_outbox_that_never_existed_does_nothing(tmp_path: Path) -> None:
    """No directory yet: nothing published, nothing created."""
    outbox = Outbox(tmp_path / "absent")
    assert outbox.drain(lambda r: None) == spool.DrainReport()
    assert outbox.pending() == 0 and not (tmp_path / "absent").exists()


def test_a_publish_failure_stops_the_drain_and_keeps_the_rest_in_order(tmp_path: Path) -> None:
    """The broker drops on m2: m0 and m1 are gone, m2.. stay, and later appends queue behind."""
    outbox = Outbox(tmp_path)
    for n in range(5):
        outbox.append(_message(n))
    published: list[str] = []

    def flaky(record: Record) -> None:
        if record["client_msg_id"] == "m2":
            raise ConnectionError("broker unreachable")
        published.append(record["client_msg_id"])

    report = outbox.drain(flaky)
    assert published == ["m0", "m1"]
    assert (report.published, report.remaining, report.error) == (2, 3, "ConnectionError")

    outbox.append(_message(5))
    rest, report = _drain_all(outbox)
    assert [r["client_msg_id"] for r in rest] == ["m2", "m3", "m4", "m5"]
    assert report.remaining == 0


def test_records_appended_while_a_drain_publishes_wait_for_the_next_drain(tmp_path: Path) -> None:
    """A web process spools during the drain: its record is kept, not lost, not reordered."""
    outbox = Outbox(tmp_path)
    outbox.append(_message(0))
    seen: list[str] = []

    def publish(record: Record) -> None:
        seen.append(record["client_msg_id"])
        outbox.append(_message(1))

    report = outbox.drain(publish)
    assert seen == ["m0"] and report.remaining == 1

    published, _ = _drain_all(outbox)
    assert published == [_message(1)]


def test_a_line_torn_by_a_crash_mid_write_is_skipped_and_counted(tmp_path: Path) -> None:
    """A writer died half way through a line; the next writer starts a new line after it."""
    outbox = Outbox(tmp_path)
    outbox.append(_message(0))
    with open(tmp_path / spool.ACTIVE, "ab") as active:
        active.write(spool.encode(_message(1))[:25])  # the crash
    outbox.append(_message(2))

    published, report = _drain_all(outbox)

    assert published == [_message(0), _message(2)]
    assert (report.published, report.corrupt, report.remaining) == (2, 1, 0)


def test_a_torn_last_line_and_a_flipped_byte_do_not_stop_the_drain(tmp_path: Path) -> None:
    """Corrupt lines anywhere (checksum wrong, line unfinished) are counted, never fatal."""
    outbox = Outbox(tmp_path)
    for n in range(3):
        outbox.append(_message(n))
    active = tmp_path / spool.ACTIVE
    data = bytearray(active.read_bytes())
    data[data.index(b"message 1") + 8] ^= 0x01  # m1's content no longer matches its checksum
    active.write_bytes(bytes(data) + spool.encode(_message(3))[:-5])

    assert outbox.pending() == 2
    published, report = _drain_all(outbox)

    assert published == [_message(0), _message(2)]
    assert (report.corrupt, report.remaining) == (2, 0)


def test_a_second_drainer_returns_at_once_while_the_first_is_publishing(tmp_path: Path) -> None:
    """Only one drain runs; another reports busy without publishing or waiting."""
    outbox = Outbox(tmp_path)
    outbox.append(_message(0))
    outbox.append(_message(1))
    inside, release = threading.Event(), threading.Event()
    first: list[Record] = []

    def slow(record: Record) -> None:
        inside.set()
        release.wait(10)
        first.append(record)

    runner = threading.Thread(target=outbox.drain, args=(slow,))
    runner.start()
    try:
        assert inside.wait(10)
        second: list[Record] = []
        report = Outbox(tmp_path).drain(second.append)
        assert report.busy and second == [] and report.remaining == 2
    finally:
        release.set()
        runner.join(10)
    assert first == [_message(0), _message(1)]


def _append_many(directory: str, writer: int, count: int, barrier: Any) -> None:
    """Child: at the gun, append ``count`` numbered records."""
    outbox = Outbox(directory)
    barrier.wait(30)
    for seq in range(count):
        outbox.append({"writer": writer, "seq": seq, "pad": "x" * (seq % 7) * 300})


def test_processes_appending_at_once_lose_nothing_and_never_interleave_lines(
    tmp_path: Path
) -> None:
    """Four processes, 150 records each: 600 whole lines, each writer's own order kept."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    children = [context.Process(target=_append_many, args=(str(tmp_path), w, 150, barrier))
                for w in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [c.exitcode for c in children] == [0, 0, 0, 0]

    published, report = _drain_all(Outbox(tmp_path))

    assert report.corrupt == 0 and report.published == 600
    for writer in range(4):
        assert [r["seq"] for r in published if r["writer"] == writer] == list(range(150))


def _append_forever(directory: str, acknowledged: Any) -> None:
    """Child: append numbered records until killed, publishing each acknowledged number."""
    outbox = Outbox(directory)
    seq = 0
    while True:
        outbox.append({"seq": seq, "pad": "y" * 2000})
        acknowledged.value = seq
        seq += 1


def test_an_appender_killed_mid_stream_leaves_a_drainable_outbox_with_every_acked_record(
    tmp_path: Path
) -> None:
    """SIGKILL at any moment: the append lock dies with it, every acknowledged record drains."""
    context = multiprocessing.get_context("fork")
    acknowledged = context.Value("q", -1)
    child = context.Process(target=_append_forever, args=(str(tmp_path), acknowledged))
    child.start()
    wait_for(lambda: acknowledged.value >= 50, timeout=60, what="50 acknowledged appends")
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(10)
    last_acknowledged = acknowledged.value

    published, report = _drain_all(Outbox(tmp_path))

    seqs = [r["seq"] for r in published]
    assert seqs == list(range(len(seqs)))  # in order, no gap
    assert len(seqs) > last_acknowledged  # nothing acknowledged was lost
    assert report.corrupt <= 1 and report.remaining == 0


def test_pending_counts_records_not_yet_published_across_segments(tmp_path: Path) -> None:
    """Records left by a stopped drain and records appended since are both pending."""
    outbox = Outbox(tmp_path)
    for n in range(3):
        outbox.append(_message(n))

    def fail_on_second(record: Record) -> None:
        if record["client_msg_id"] == "m1":
            raise TimeoutError

    outbox.drain(fail_on_second)
    outbox.append(_message(3))

    assert outbox.pending() == 3
