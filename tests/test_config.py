"""Configuration: every variable validated, one error naming it, secrets never shown."""

from __future__ import annotations

import pytest

from memory_worker.config import VARIABLES, Settings
from memory_worker.errors import ConfigError

BAD_VALUES = {
    "FLAG_ZEP_WRITE": "maybe",
    "FLAG_ZEP_READ": "2",
    "ZEP_API_VERSION": "v3",
    "ZEP_API_URL": "ftp://zep.example",
    "ZEP_API_KEY": "   ",
    "ZEP_TIMEOUT_MS": "fast",
    "MEMORY_READ_TIMEOUT_MS": "-5",
    "MEMORY_PROBE_TIMEOUT_MS": "0",
    "MEMORY_DOWNGRADE_THRESHOLD": "three",
    "MEMORY_DOWNGRADE_WINDOW_SECONDS": "1.5",
    "MEMORY_DOWNGRADE_HOLD_SECONDS": "-300",
    "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "x",
    "MEMORY_LATENCY_DOWNGRADE_MS": "-1",
    "DISABLE_AUTO_DOWNGRADE": "sometimes",
    "MEMORY_PROBE_INTERVAL_SECONDS": "0",
    "MEMORY_CACHE_TTL_SECONDS": "abc",
    "MEMORY_NEGATIVE_CACHE_TTL_SECONDS": "",
    "MEMORY_RECENT_LASTN": "0",
    "MEMORY_REDACT_EMAIL": "yes please",
    "MEMORY_REDACT_PHONE": "-",
    "MEMORY_REDACT_ADDRESS": "1.0",
    "MEMORY_MAX_CONTENT_CHARS": "1e5",
    "MEMORY_WRITE_MAX_RETRIES": "-1",
    "MEMORY_WRITE_MAX_AGE_SECONDS": "0",
    "MEMORY_WRITE_BATCH_MAX": "31",
    "MEMORY_BROKER_VISIBILITY_TIMEOUT_SECONDS": "0",
    "MEMORY_REDELIVER_AFTER_SECONDS": "soon",
    "REDIS_URL": "localhost:6379",
    "REDIS_SENTINELS": "sentinel-a:26379,sentinel-b",
    "REDIS_SENTINEL_MASTER": "my master",
    "REDIS_CLUSTER": "cluster",
    "CELERY_BROKER_URL": "kafka://broker",
    "CELERY_BROKER_SENTINEL_MASTER": "queue master",
    "MEMORY_KEY_PREFIX": " ",
    "MEMORY_SPOOL_DIR": "",
    "PROMETHEUS_MULTIPROC_DIR": None,  # empty means unset; any path is accepted
    "MEMORY_LOG_FORMAT": "xml",
    "FLOWER_BASIC_AUTH": "admin",
}


def test_defaults_match_the_contract() -> None:
    """An empty environment gives SPEC §3's defaults."""
    s = Settings.from_env({})
    assert (s.flag_zep_write, s.flag_zep_read) == (False, False)
    assert (s.zep_timeout_ms, s.read_timeout_ms, s.probe_timeout_ms) == (1500, 250, 150)
    assert (s.downgrade_threshold, s.downgrade_window_seconds) == (3, 60)
    assert (s.downgrade_hold_seconds, s.downgrade_hold_max_seconds) == (300, 3600)
    assert s.latency_downgrade_ms == 200 and s.disable_auto_downgrade is False
    assert s.probe_interval_seconds == 10
    assert (s.cache_ttl_seconds, s.negative_cache_ttl_seconds, s.recent_lastn) == (30, 3, 12)
    assert (s.redact_email, s.redact_phone, s.redact_address) == (True, True, False)
    assert (s.max_content_chars, s.write_max_retries) == (100_000, 12)
    assert s.write_max_age_seconds == 86_400 and s.zep_api_version == "v2"
    assert (s.broker_visibility_timeout_seconds, s.redeliver_after_seconds) == (3600, 600)
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.broker_url == s.redis_url
    assert (s.key_prefix, s.spool_dir, s.log_format) == ("mem:", "./var/spool", "json")


def test_every_contract_variable_is_checked() -> None:
    """The table above covers every variable the project reads."""
    assert set(BAD_VALUES) == set(VARIABLES)


@pytest.mark.parametrize(
    "variable", [name for name, bad in BAD_VALUES.items() if bad is not None]
)
def test_a_bad_value_stops_with_an_error_naming_the_variable(variable: str) -> None:
    """Given one bad variable, the error names exactly that variable."""
    bad = BAD_VALUES[variable]
    assert bad is not None
    env = {"ZEP_API_URL": "http://zep:8000", "ZEP_API_KEY": "k", variable: bad}
    if variable in ("ZEP_API_URL", "ZEP_API_KEY"):
        env.update({"FLAG_ZEP_WRITE": "true"})
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("flag", ["FLAG_ZEP_WRITE", "FLAG_ZEP_READ"])
@pytest.mark.parametrize("missing", ["ZEP_API_URL", "ZEP_API_KEY"])
def test_a_flag_on_requires_url_and_key(flag: str, missing: str) -> None:
    """Turning on reads or writes without Zep's URL or key is refused, naming what is missing."""
    env = {flag: "true", "ZEP_API_URL": "http://zep:8000", "ZEP_API_KEY": "k"}
    del env[missing]
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == missing


def test_hold_cap_below_base_hold_is_refused() -> None:
    """A cap below the base hold would shorten holds; it is a configuration error."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MEMORY_DOWNGRADE_HOLD_SECONDS": "600",
                           "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS": "300"})
    assert info.value.variable == "MEMORY_DOWNGRADE_HOLD_MAX_SECONDS"


@pytest.mark.parametrize(("threshold", "budget"), [("250", None), ("300", None), ("400", "400")])
def test_a_latency_threshold_the_budget_cannot_reach_is_refused(
        threshold: str, budget: str | None) -> None:
    """A read never outlasts MEMORY_READ_TIMEOUT_MS: a threshold at or above it never fires."""
    env = {"MEMORY_LATENCY_DOWNGRADE_MS": threshold}
    if budget is not None:
        env["MEMORY_READ_TIMEOUT_MS"] = budget
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == "MEMORY_LATENCY_DOWNGRADE_MS"
    assert "MEMORY_READ_TIMEOUT_MS" in info.value.problem


def test_a_latency_threshold_below_the_budget_or_zero_is_accepted() -> None:
    """249 of 250 ms can fire; 0 disables the rule whatever the budget."""
    assert Settings.from_env({"MEMORY_LATENCY_DOWNGRADE_MS": "249"}).latency_downgrade_ms == 249
    assert Settings.from_env({"MEMORY_LATENCY_DOWNGRADE_MS": "0",
                              "MEMORY_READ_TIMEOUT_MS": "50"}).latency_downgrade_ms == 0
    assert Settings.from_env({"MEMORY_READ_TIMEOUT_MS": "500",
                              "MEMORY_LATENCY_DOWNGRADE_MS": "450"}).read_timeout_ms == 500


def test_zep_api_version_accepts_v2_and_v4() -> None:
    """ZEP_API_VERSION picks the Zep API: v2 (default) or v4, any case."""
    assert Settings.from_env({"ZEP_API_VERSION": "V4"}).zep_api_version == "v4"
    assert Settings.from_env({"ZEP_API_VERSION": "v2"}).zep_api_version == "v2"


def test_secrets_never_appear_in_repr_errors_or_description() -> None:
    """The key and Flower's password are shown only as set/unset."""
    s = Settings.from_env({"FLAG_ZEP_READ": "1", "ZEP_API_URL": "http://zep:8000/",
                           "ZEP_API_KEY": "s3cr3t-key", "FLOWER_BASIC_AUTH": "ops:pw-xyz"})
    assert "s3cr3t-key" not in repr(s) and "pw-xyz" not in repr(s)
    shown = s.describe()
    assert shown["ZEP_API_KEY"] == "(set)" and shown["FLOWER_BASIC_AUTH"] == "(set)"
    assert "s3cr3t-key" not in str(shown)
    assert s.zep_api_url == "http://zep:8000"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FLOWER_BASIC_AUTH": "only-a-password-xyz"})
    assert "only-a-password-xyz" not in str(info.value)


def test_broker_defaults_to_redis_and_accepts_amqp() -> None:
    """CELERY_BROKER_URL falls back to REDIS_URL; amqp:// works too."""
    s = Settings.from_env({"REDIS_URL": "redis://10.0.0.1:6380/2"})
    assert s.broker_url == "redis://10.0.0.1:6380/2"
    s = Settings.from_env({"CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    assert s.broker_url.startswith("amqp://")


def test_grace_is_at_least_two_minutes_or_ten_probe_intervals() -> None:
    """grace = max(120 s, 10 × probe interval)."""
    assert Settings.from_env({}).grace_seconds == 120
    assert Settings.from_env({"MEMORY_PROBE_INTERVAL_SECONDS": "30"}).grace_seconds == 300


def test_booleans_accept_the_usual_spellings() -> None:
    """true/false, 1/0, yes/no, on/off, any case."""
    for raw, expected in [("TRUE", True), ("1", True), ("on", True), ("No", False), ("0", False)]:
        assert Settings.from_env({"DISABLE_AUTO_DOWNGRADE": raw}).disable_auto_downgrade is expected


@pytest.mark.parametrize("variable", ["REDIS_URL", "CELERY_BROKER_URL"])
@pytest.mark.parametrize("bad", ["kafka://ops:s3cr3t-pw@broker:9092/0",
                                 "redis://ops:s3cr3t-pw@host:port/0"])
def test_a_bad_url_is_named_without_its_password(variable: str, bad: str) -> None:
    """The error line a worker prints at start never carries the URL's password."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: bad})
    assert info.value.variable == variable
    assert "s3cr3t-pw" not in str(info.value) and "***" in str(info.value)


SENTINELS = {"REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379,[::1]:26380",
             "REDIS_SENTINEL_MASTER": "memory"}


def test_sentinels_are_read_as_host_port_pairs_and_the_broker_follows_them() -> None:
    """REDIS_SENTINELS and REDIS_SENTINEL_MASTER select the Sentinel-managed master; with
    CELERY_BROKER_URL unset the broker is the same master through kombu's sentinel://,
    the credentials and database of REDIS_URL on the first URL only."""
    s = Settings.from_env({**SENTINELS, "REDIS_URL": "redis://app:s3cr3t@ignored:6379/4"})
    assert s.sentinel_addresses == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert s.redis_sentinel_master == s.broker_sentinel_master == "memory"
    assert s.broker_url == ("sentinel://app:s3cr3t@10.0.0.1:26379/4;"
                            "sentinel://10.0.0.2:26379;sentinel://[::1]:26380")
    assert Settings.from_env({}).sentinel_addresses == ()


@pytest.mark.parametrize("given", ["REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"])
def test_sentinels_and_their_master_name_come_together(given: str) -> None:
    """One without the other is refused, naming the one missing."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({given: SENTINELS[given]})
    missing = ({"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"} - {given}).pop()
    assert info.value.variable == missing and "both or neither" in str(info.value)


@pytest.mark.parametrize("bad", ["sentinel-a", "sentinel-a:0", "sentinel-a:65536",
                                 "a:26379,,b:26379", ":26379", "a:2637x"])
def test_a_sentinel_address_needs_a_host_and_a_numeric_port(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**SENTINELS, "REDIS_SENTINELS": bad})
    assert info.value.variable == "REDIS_SENTINELS"


def test_with_sentinels_redis_url_must_name_a_tcp_server() -> None:
    """Sentinel names a host and port: a Unix socket URL cannot be its master."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**SENTINELS, "REDIS_URL": "unix://localhost/run/redis.sock"})
    assert info.value.variable == "REDIS_URL"


def test_a_tls_state_redis_behind_sentinels_needs_an_explicit_broker() -> None:
    """The broker derived from the sentinels would not use TLS: refused, not downgraded."""
    tls = {**SENTINELS, "REDIS_URL": "rediss://:s3cr3t@ignored:6380/0"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(tls)
    assert info.value.variable == "CELERY_BROKER_URL" and "s3cr3t" not in str(info.value)
    explicit = Settings.from_env({**tls, "CELERY_BROKER_URL": "rediss://:pw@broker:6380/0"})
    assert explicit.broker_url == "rediss://:pw@broker:6380/0"


def test_a_sentinel_broker_needs_a_master_name() -> None:
    """kombu's sentinel:// transport polls the master of a name: without one, refused."""
    broker = {"CELERY_BROKER_URL": "sentinel://s1:26379;sentinel://s2:26379"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(broker)
    assert info.value.variable == "CELERY_BROKER_SENTINEL_MASTER"
    named = Settings.from_env({**broker, "CELERY_BROKER_SENTINEL_MASTER": "queues"})
    assert named.broker_url == broker["CELERY_BROKER_URL"]
    assert named.broker_sentinel_master == "queues"


CLUSTER = {"REDIS_CLUSTER": "1", "REDIS_URL": "redis://app:s3cr3t@10.0.0.7:7000/0",
           "CELERY_BROKER_URL": "redis://broker:6379/0"}


def test_redis_cluster_is_off_unless_set_and_names_one_node_in_redis_url() -> None:
    """REDIS_CLUSTER turns the cluster on; REDIS_URL then names one of its nodes."""
    assert Settings.from_env({}).redis_cluster is False
    s = Settings.from_env(CLUSTER)
    assert s.redis_cluster is True and s.redis_url == CLUSTER["REDIS_URL"]
    assert s.broker_url == "redis://broker:6379/0"


@pytest.mark.parametrize(("change", "variable"), [
    ({"CELERY_BROKER_URL": ""}, "CELERY_BROKER_URL"),
    ({"REDIS_URL": "unix://localhost/run/redis.sock"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://10.0.0.7:7000/3"}, "REDIS_URL"),
    ({"MEMORY_KEY_PREFIX": "{mem}:"}, "MEMORY_KEY_PREFIX"),
    (SENTINELS, "REDIS_CLUSTER"),
])
def test_a_cluster_state_store_refuses_what_it_cannot_serve(change: dict[str, str],
                                                             variable: str) -> None:
    """No Celery broker on a cluster, no socket, no database but 0, no braces in the
    prefix (the hash tags are built from it), no Sentinel besides."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**CLUSTER, **change})
    assert info.value.variable == variable and "s3cr3t" not in str(info.value)
