"""Every Redis key the project writes, under one configurable prefix (SPEC §3, §4, §6).

With ``REDIS_CLUSTER`` on, keys that a script or a multi-key command uses
together must hash to one slot, so some names gain a hash tag (the part in
braces that Redis Cluster hashes instead of the whole name):

- the deployment-wide keys (forced record, failure counter and window, pause,
  probe lock and failures, shadow marker, latency samples, write circuit,
  dead letters, the delivery ledger's index) share the tag ``{<prefix>}``
  right after the prefix: ``mem:{mem:}mode:forced:v1``;
- a thread's cache entries are tagged with its id: ``mem:ctx:{thread-1}:summary``;
- a message's keys (enqueue marker, ledger record, done-marker, lease,
  attempted marker) are tagged with its ``client_msg_id``:
  ``mem:write:done:{m-1}``. An id with a brace in it would end the tag early
  (or leave it empty); such an id is tagged with a digest of itself instead,
  and kept after the tag: ``mem:write:done:{3f…}a{b}``.

The Zep v4 id mappings are used one key at a time and keep their names.
Without ``REDIS_CLUSTER`` every name is exactly as SPEC shows it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from memory_worker.config import Settings

VIEWS: tuple[str, ...] = ("summary", "recent", "facts")


def own_tag(identifier: str) -> str:
    """``identifier`` as the hash tag of its keys: in braces, or a digest in braces
    followed by the identifier when a brace in it would spoil the tag."""
    if "{" in identifier or "}" in identifier:
        digest = hashlib.sha1(identifier.encode("utf-8")).hexdigest()[:16]
        return f"{{{digest}}}{identifier}"
    return f"{{{identifier}}}"


@dataclass(frozen=True)
class Keys:
    prefix: str = "mem:"
    cluster: bool = False  # REDIS_CLUSTER: names carry the hash tags above

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        return cls(settings.key_prefix, cluster=settings.redis_cluster)

    def _shared(self, name: str) -> str:
        """A deployment-wide key: in cluster mode, in the deployment's one slot."""
        if self.cluster:
            return f"{self.prefix}{{{self.prefix}}}{name}"
        return f"{self.prefix}{name}"

    def _own(self, identifier: str) -> str:
        """``identifier`` in a key name: in cluster mode, the tag of its keys' slot."""
        return own_tag(identifier) if self.cluster else identifier

    @property
    def forced(self) -> str:
        return self._shared("mode:forced:v1")

    @property
    def probe_lock(self) -> str:
        return self._shared("mode:probe_lock:v1")

    @property
    def probe_failures(self) -> str:
        """Consecutive failed probes; the exponent of the escalating hold."""
        return self._shared("mode:probe_failures:v1")

    @property
    def shadow_marker(self) -> str:
        """Set once per incident in shadow mode, so a suppressed downgrade logs once."""
        return self._shared("mode:shadow:v1")

    @property
    def consecutive_failures(self) -> str:
        return self._shared("read:consec_failures")

    @property
    def failure_window_start(self) -> str:
        return self._shared("read:consec_failures:since")

    @property
    def rate_limited_until(self) -> str:
        return self._shared("read:rate_limited_until")

    @property
    def read_latencies(self) -> str:
        return self._shared("read:latency:v1")

    def context(self, thread_id: str, view: str) -> str:
        return f"{self.prefix}ctx:{self._own(thread_id)}:{view}"

    def contexts(self, thread_id: str) -> list[str]:
        return [self.context(thread_id, view) for view in VIEWS]

    @property
    def write_circuit(self) -> str:
        return self._shared("write:circuit:v1")

    @property
    def dlq(self) -> str:
        return self._shared("write:dlq")

    @property
    def write_pending(self) -> str:
        return self._shared("write:pending")

    def write_pending_record(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:pending:{self._own(client_msg_id)}"

    def write_done(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:done:{self._own(client_msg_id)}"

    def write_lease(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:lease:{self._own(client_msg_id)}"

    def write_attempted(self, client_msg_id: str) -> str:
        """Set when an attempt begins: a later one first asks Zep what already landed."""
        return f"{self.prefix}write:attempted:{self._own(client_msg_id)}"

    def write_thread(self, thread_id: str) -> str:
        """A thread's messages on their way (sorted by enqueue time), so that a worker can
        send those queued together in one add. Not kept on a Redis Cluster, which
        sends each message alone."""
        return f"{self.prefix}write:thread:{thread_id}"

    def enqueued(self, client_msg_id: str) -> str:
        return f"{self.prefix}write:enqueued:{self._own(client_msg_id)}"

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
