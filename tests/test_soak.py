"""The chaos soak's short plan: 2,000 messages through faults, kills and a broker restart.

Runs ``scripts/soak.py --plan short`` as ``make soak`` runs the long plan, twice:
on a Redis broker speaking Zep v2 (the delivery ledger's sweep brings back what
the kills held; a repeated message uuid is refused by Zep), and on a RabbitMQ
broker (``--broker rabbitmq``: there no ledger sweep helps) speaking Zep v4
(``zep-cloud``: there only the project's own checks keep a message from being
stored twice). Between them every broker and every Zep API meets the whole fault
mix; the other two pairings run with ``python -m scripts.soak --plan short
--broker B --zep-api V``. Each JSON report is checked figure by figure, so a
failure names what broke: a lost or duplicated message, a leak, a dead letter, a
slow read, or an outage that did not downgrade exactly once or never gave reads
back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from scripts.soak import BROKERS, PLANS, ZEP_APIS
from tests.processes import ROOT

PLAN = PLANS["short"]


# The short plan on each broker, each with one of the Zep APIs.
RUNS = [("redis", "v2"), ("rabbitmq", "v4")]


@pytest.fixture(scope="module", params=RUNS, ids=[f"{b}-{z}" for b, z in RUNS])
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    broker, zep_api = request.param
    workdir = tmp_path_factory.mktemp(f"soak-{broker}-{zep_api}")
    path = workdir / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.soak", "--plan", PLAN.name, "--broker", broker,
         "--zep-api", zep_api, "--workdir", str(workdir / "run"), "--report", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if not path.exists():
        pytest.fail(f"the soak wrote no report (exit {done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data["exit_code"] = done.returncode
    assert (data["broker"], data["zep_api"]) == (broker, zep_api)
    return data


pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(660)]


def test_the_runs_meet_every_broker_and_every_zep_api() -> None:
    assert {broker for broker, _ in RUNS} == set(BROKERS)
    assert {api for _, api in RUNS} == set(ZEP_APIS)


def test_every_message_is_stored_exactly_once(report: dict[str, Any]) -> None:
    messages = report["messages"]
    assert messages["enqueued"] == messages["sent"] == PLAN.messages
    assert messages["enqueue_errors"] == 0
    assert (messages["stored"], messages["unique_stored"]) == (PLAN.messages, PLAN.messages)
    assert (messages["duplicates"], messages["lost"], messages["unexpected"]) == (0, 0, 0)


def test_the_faults_really_happened(report: dict[str, Any]) -> None:
    """A soak whose chaos did not reach the writes would prove nothing."""
    statuses = report["zep"]["by_status"]
    weather = report["zep"]["writes"]["weather"]
    # The weather lasts until adds carrying a tenth of the messages answered 503 ...
    assert report["zep"]["weather_503_messages"] >= PLAN.messages * 0.1, report["zep"]
    # ... which is about one in five adds it met.
    assert 0.1 <= weather["503"] / sum(weather.values()) <= 0.35, weather
    assert statuses.get("429", 0) >= 30
    # Some adds were stored before their answer was lost: the retry found them landed
    # (or, on a v2 Zep, met the taken uuid).
    assert report["zep"]["found_landed"] + report["zep"]["worker_duplicate_uuid_answers"] >= 1
    assert report["messages"]["spooled"] >= 1  # the broker restart sent enqueues to the outbox
    events = [e["event"] for e in report["timeline"]]
    assert sum("kill -9" in e for e in events) == 2
    assert any(e.startswith("broker started again") for e in events)


def test_nothing_leaks(report: dict[str, Any]) -> None:
    leaks = report["leaks"]
    assert leaks["needles"] >= PLAN.messages // 3
    assert any("aof" in place for place in leaks["places_checked"])
    assert leaks["pii_places"] == {}
    assert leaks["content_in_logs"] == []


def test_the_dead_letter_queue_is_empty(report: dict[str, Any]) -> None:
    assert report["dlq_size"] == 0


def test_no_read_overran_its_budget(report: dict[str, Any]) -> None:
    reads = report["reads"]
    assert reads["count"] >= PLAN.messages // PLAN.read_every
    # Less what the machine took from each read (tests.stalls); the wall-clock figures
    # are in the report beside it.
    assert reads["max_own_ms"] <= reads["budget_ms"], reads


def test_the_outage_downgraded_once_and_reads_came_back(report: dict[str, Any]) -> None:
    outage = report["outage"]
    # One downgrade, or reads already forced off through the whole outage by an earlier one.
    assert outage["downgrades"] == 1 or report["checks"]["one_downgrade_per_outage"], outage
    assert outage["reads_back_after_s"] is not None


def test_the_soak_passed_as_a_whole(report: dict[str, Any]) -> None:
    assert report["checks"] and all(report["checks"].values()), report["checks"]
    assert report["passed"] is True and report["exit_code"] == 0


def test_on_rabbitmq_the_broker_alone_brought_back_what_the_kills_held(
        report: dict[str, Any]) -> None:
    """No ledger sweep runs on RabbitMQ: nothing was published again, and (above) nothing
    was lost through the pool kill, the whole-worker kill and the broker restart."""
    if report["broker"] == "rabbitmq":
        assert report["ledger"]["republished"] == 0
        assert report["messages"]["lost"] == 0
