"""Key names with REDIS_CLUSTER: the hash tags that keep each script in one slot."""

from __future__ import annotations

from redis.crc import key_slot

from memory_worker.keys import Keys

PLAIN, CLUSTER = Keys("mem:"), Keys("mem:", cluster=True)


def slots(*names: str) -> set[int]:
    return {key_slot(name.encode()) for name in names}


def shared(keys: Keys) -> list[str]:
    return [keys.forced, keys.probe_lock, keys.probe_failures, keys.shadow_marker,
            keys.consecutive_failures, keys.failure_window_start, keys.rate_limited_until,
            keys.read_latencies, keys.write_circuit, keys.dlq, keys.write_pending]


def per_message(keys: Keys, client_msg_id: str) -> list[str]:
    return [keys.write_pending_record(client_msg_id), keys.write_done(client_msg_id),
            keys.write_lease(client_msg_id), keys.write_attempted(client_msg_id),
            keys.enqueued(client_msg_id)]


def test_without_cluster_every_name_is_as_the_contract_shows_it() -> None:
    assert PLAIN.forced == "mem:mode:forced:v1"
    assert PLAIN.consecutive_failures == "mem:read:consec_failures"
    assert PLAIN.context("t-1", "summary") == "mem:ctx:t-1:summary"
    assert PLAIN.write_done("m-1") == "mem:write:done:m-1"
    assert PLAIN.dlq == "mem:write:dlq"


def test_the_deployment_wide_keys_share_one_tag_and_one_slot() -> None:
    """The prefix in braces after the prefix: every deployment-wide key in one slot."""
    assert CLUSTER.forced == "mem:{mem:}mode:forced:v1"
    assert CLUSTER.write_pending == "mem:{mem:}write:pending"
    assert all(name.startswith("mem:{mem:}") for name in shared(CLUSTER))
    assert len(slots(*shared(CLUSTER))) == 1


def test_a_threads_and_a_messages_keys_are_tagged_by_their_id() -> None:
    assert CLUSTER.context("t-1", "summary") == "mem:ctx:{t-1}:summary"
    assert len(slots(*CLUSTER.contexts("t-1"))) == 1
    assert CLUSTER.write_done("m-1") == "mem:write:done:{m-1}"
    assert len(slots(*per_message(CLUSTER, "m-1"))) == 1
    assert slots(*per_message(CLUSTER, "m-1")) != slots(*per_message(CLUSTER, "m-2"))


def test_an_id_with_braces_is_tagged_by_its_digest_and_its_keys_stay_together() -> None:
    """``}x`` would leave ``{}x}`` an empty tag, ``a}b`` would cut it short: a digest
    in braces, the id after it, keeps every key of the message in one slot."""
    for odd in ("}x", "a}b", "{a}", "x{"):
        names = per_message(CLUSTER, odd)
        assert len(slots(*names)) == 1, odd
        assert all(name.endswith(odd) for name in names)
    assert CLUSTER.write_done("a}b") != CLUSTER.write_done("a")
