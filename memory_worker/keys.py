"""Every Redis key the project writes, under one configurable prefix (SPEC §3, §4, §6)."""

from __future__ import annotations

from dataclasses import dataclass

VIEWS: tuple[str, ...] = ("summary", "recent", "facts")


@dataclass(frozen=True)
class Keys:
    prefix: str = "mem:"

    @property
    def forced(self) -> str:
        return f"{self.prefix}mode:forced:v1"

    @property
    def probe_lock(self) -> str:
        return f"{self.prefix}mode:probe_lock:v1"

    @property
    def probe_failures(self) -> str:
        """Consecutive failed probes; the exponent of the escalating hold."""
        return f"{self.prefix}mode:probe_failures:v1"

    @property
    def shadow_marker(self) -> str:
        """Set once per incident in shadow mode, so a suppressed downgrade logs once."""
        return f"{self.prefix}mode:shadow:v1"

    @property
    def consecutive_failures(self) -> str:
        return f"{self.prefix}read:consec_failures"

    @property
    def failure_window_start(self) -> str:
        return f"{self.prefix}read:consec_failures:since"

    @property
    def rate_limited_until(self) -> str:
        return f"{self.prefix}read:rate_limited_until"

    @property
    def read_latencies(self) -> str:
        return f"{self.prefix}read:latency:v1"

    def context(self, thread_id: str, view: str) -> str:
        return f"{self.prefix}ctx:{thread_id}:{view}"

    def contexts(self, thread_id: str) -> list[str]:
        return [self.context(thread_id, view) for view in VIEWS]

    @property
    def write_circuit(self) -> str:
        return f"{self.prefix}write:circuit:v1"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}write:dlq"

    @property
    def write_pending(self) -> str:
        return f"{self.prefix}write:pending"

    def write_pending_record(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:pending:{client_msg_id}"

    def write_done(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:done:{client_msg_id}"

    def write_lease(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:lease:{client_msg_id}"

    def write_attempted(self, client_msg_id: str) -> str:
        """Set when an attempt begins: a later one first asks Zep what already landed."""
        return f"{self.prefix}write:attempted:{client_msg_id}"

    def enqueued(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:enqueued:{client_msg_id}"

    # Zep v4: the ids Zep assigned, durable (no TTL), rebuilt from Zep when lost.

    def zep_thread(self, thread_id: str) -> str:
        """The Zep v4 thread uuid of ``thread_id``."""
        return f"{self.prefix}zep:v4:thread:{thread_id}"

    def zep_thread_owner(self, thread_uuid: str) -> str:
        """The ``thread_id`` a Zep v4 thread uuid belongs to (the mapping read backwards)."""
        return f"{self.prefix}zep:v4:thread_of:{thread_uuid}"

    def zep_thread_lock(self, thread_id: str) -> str:
        """Held (``SET NX PX``) by the one process creating ``thread_id``'s Zep thread."""
        return f"{self.prefix}zep:v4:thread_lock:{thread_id}"

    def zep_user(self, user_id: str) -> str:
        """The Zep v4 user uuid of ``user_id``."""
        return f"{self.prefix}zep:v4:user:{user_id}"
