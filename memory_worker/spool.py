"""The local outbox: messages kept on disk while the broker cannot be reached (SPEC §6).

Layout of the directory (``MEMORY_SPOOL_DIR``)::

    outbox.jsonl               the active file every process appends to
    segment-000000000007.jsonl a closed file, drained oldest (lowest number) first
    segment-000000000007.done  how many bytes of that segment are already published
    append.lock, drain.lock    flock(2) locks

One record per line: the CRC-32 of the JSON in 8 hex digits, a space, the
record as ASCII JSON, a newline. A line without its newline or whose checksum
does not match (a write torn by a crash, a disk that lost a block) is counted
as corrupt and skipped on drain; it never stops the drain.

Appending: under an exclusive ``flock`` on ``append.lock``, one write of the
whole line with ``O_APPEND``, then ``fsync`` of the file, and of the directory
when the file was created. The lock serialises writers of all processes, so
lines never interleave; a file whose last line was torn by a crashed writer
gets a newline first, so the torn line stays a line of its own. A writer
killed while holding the lock releases it with its death.

Draining: one drainer at a time, by ``flock`` on ``drain.lock`` taken without
waiting: a second drainer returns at once with ``busy=True``. The drainer
renames the active file to the next segment (under the append lock, so no
write is in flight), then publishes segment by segment, line by line. After
each publish it records the byte offset in the segment's ``.done`` file; a
failed publish stops the drain, and the record and all after it wait for the
next drain in the same order. A fully drained segment is deleted, not
rewritten. A crash of the drainer between a publish and the offset write
publishes that record again next time; the task's done-marker keeps the Zep
write single.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory_worker.logs import log_event

log = logging.getLogger("memory_worker.spool")

ACTIVE = "outbox.jsonl"
APPEND_LOCK = "append.lock"
DRAIN_LOCK = "drain.lock"
_SEGMENT = re.compile(r"^segment-(\d{12})\.(jsonl|done)$")

Record = dict[str, Any]


@dataclass(frozen=True)
class DrainReport:
    """What one drain did; ``busy`` when another drain was running and this one did nothing."""

    published: int = 0
    remaining: int = 0
    corrupt: int = 0
    busy: bool = False
    error: str | None = None  # the type of what ``publish`` raised, when it stopped the drain


def encode(record: Record) -> bytes:
    """One outbox line; ``TypeError``/``ValueError`` when the record is not a JSON object."""
    if not isinstance(record, dict):
        raise TypeError(f"an outbox record is a dict, not {type(record).__name__}")
    body = json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return f"{zlib.crc32(body.encode('ascii')):08x} {body}\n".encode("ascii")


def decode(line: bytes) -> Record | None:
    """The record of a complete line, or None when the line is torn or corrupt."""
    if not line.endswith(b"\n"):
        return None
    checksum, _, body = line[:-1].partition(b" ")
    try:
        if int(checksum, 16) != zlib.crc32(body) or len(checksum) != 8:
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class Outbox:
    """A durable, multi-process, append-only outbox in one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def append(self, record: Record) -> None:
        """Store ``record`` durably: on return it survives a crash of this process or host."""
        line = encode(record)
        self._ensure_directory()
        with self._lock(APPEND_LOCK):
            path = self.directory / ACTIVE
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
                created = False
            try:
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    line = b"\n" + line  # close the line a crashed writer tore
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_directory(self.directory)

    def drain(self, publish: Callable[[Record], object]) -> DrainReport:
        """Publish stored records oldest first; stop at the first publish that raises."""
        if not self.directory.is_dir():
            return DrainReport()
        lock = self._try_lock(DRAIN_LOCK)
        if lock is None:
            return DrainReport(busy=True, remaining=self.pending())
        try:
            report = self._drain_locked(publish)
        finally:
            os.close(lock)  # closing releases the lock
        if report.published or report.corrupt or report.error:
            log_event(log, "memory_spool_drained",
                      logging.WARNING if report.error else logging.INFO,
                      published=report.published, remaining=report.remaining,
                      corrupt=report.corrupt, error=report.error)
        return report

    def pending(self) -> int:
        """Records waiting to be published (corrupt lines not counted)."""
        if not self.directory.is_dir():
            return 0
        count = sum(self._count(path, _read_offset(path)) for path in self._segments())
        return count + self._count(self.directory / ACTIVE, 0)

    def _drain_locked(self, publish: Callable[[Record], object]) -> DrainReport:
        self._rotate()
        published = corrupt = 0
        error: str | None = None
        for segment in self._segments():
            done, offset = 0, _read_offset(segment)
            with open(segment, "rb") as source, _Progress(segment) as progress:
                source.seek(offset)
                for line in source:
                    record = decode(line)
                    if record is None:
                        corrupt += 1
                        log_event(log, "memory_spool_corrupt_record", logging.WARNING,
                                  segment=segment.name, offset=offset, length=len(line))
                    else:
                        try:
                            publish(record)
                        except Exception as exc:
                            error = type(exc).__name__
                            break
                        done += 1
                    offset += len(line)
                    progress.save(offset)
            published += done
            if error is not None:
                break
            segment.unlink()
            _done_path(segment).unlink(missing_ok=True)
            _fsync_directory(self.directory)
        self._remove_orphan_offsets()
        return DrainReport(published=published, remaining=self.pending(), corrupt=corrupt,
                           error=error)

    def _rotate(self) -> None:
        """Close the active file as the next segment, with no append in flight."""
        with self._lock(APPEND_LOCK):
            active = self.directory / ACTIVE
            try:
                if active.stat().st_size == 0:
                    return
            except FileNotFoundError:
                return
            numbers = [int(m.group(1)) for m in map(_SEGMENT.match, os.listdir(self.directory))
                       if m]
            os.rename(active, self.directory / f"segment-{max(numbers, default=0) + 1:012d}.jsonl")
            _fsync_directory(self.directory)

    def _segments(self) -> list[Path]:
        names = sorted(n for n in os.listdir(self.directory)
                       if (m := _SEGMENT.match(n)) and m.group(2) == "jsonl")
        return [self.directory / name for name in names]

    def _remove_orphan_offsets(self) -> None:
        """A crash between deleting a segment and its offset leaves the offset: drop it."""
        for name in os.listdir(self.directory):
            m = _SEGMENT.match(name)
            if m and m.group(2) == "done" and not (self.directory /
                                                   f"segment-{m.group(1)}.jsonl").exists():
                (self.directory / name).unlink(missing_ok=True)

    @staticmethod
    def _count(path: Path, offset: int) -> int:
        try:
            with open(path, "rb") as source:
                source.seek(offset)
                return sum(decode(line) is not None for line in source)
        except FileNotFoundError:
            return 0

    def _ensure_directory(self) -> None:
        if self.directory.is_dir():
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _fsync_directory(self.directory.parent)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Hold an exclusive ``flock`` on a lock file, waiting for it."""
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _try_lock(self, name: str) -> int | None:
        """The descriptor holding ``flock`` on a lock file, or None at once when it is taken."""
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd


class _Progress:
    """The drained byte offset of one segment, written after every publish.

    The small in-place write survives a crash of the process (the page cache
    keeps it); it is fsynced when the segment is left, so only a host crash
    can make the next drain repeat a few publishes, never skip one.
    """

    def __init__(self, segment: Path) -> None:
        self._path = _done_path(segment)
        self._fd = -1

    def __enter__(self) -> _Progress:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self

    def save(self, offset: int) -> None:
        os.pwrite(self._fd, b"%020d\n" % offset, 0)

    def __exit__(self, *exc_info: object) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


def _done_path(segment: Path) -> Path:
    return segment.with_suffix(".done")


def _read_offset(segment: Path) -> int:
    """Bytes of ``segment`` already published; 0 when unknown (republish rather than lose)."""
    try:
        raw = _done_path(segment).read_bytes()
    except FileNotFoundError:
        return 0
    try:
        return max(0, int(raw.strip() or b"0"))
    except ValueError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.EIO, "short write to the outbox")
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    """Make a file's creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
