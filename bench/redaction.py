"""Redaction benchmark: throughput over the dev corpus and timings on hostile input.

Run from the repository root:

    .venv/bin/python bench/redaction.py

Prints one JSON object. Throughput follows the shared scorer's method: the
corpus texts, repeated to at least 2 MB, one call per text, the median of
three runs, in UTF-8 megabytes (10^6 bytes) per second. The hostile inputs
are the scorer's (its ADVERSARIAL and ADVERSARIAL_EXTRA sets); each is timed
after a warm-up call, median of three runs. Acceptance: at least 3 MB/s for
the default policy (``redact_text``) and at most 50 ms per hostile input.
Timings are wall-clock, as the scorer's: run it on a quiet machine
(``mb_per_cpu_s`` counts CPU time instead, which other load barely moves).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from memory_worker.redaction import redact_all_text, redact_text

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "pii" / "dev_corpus.jsonl"

MIN_MB = 2.0
RUNS = 3

ADVERSARIAL: dict[str, Callable[[], str]] = {
    "a@+'a-'*16000": lambda: "a@" + "a-" * 16000,
    "'+'+'1 '*20000": lambda: "+" + "1 " * 20000,
    "'0'*50000": lambda: "0" * 50000,
    "'x@'*20000": lambda: "x@" * 20000,
}
ADVERSARIAL_EXTRA: dict[str, Callable[[], str]] = {
    "'1.'*25000": lambda: "1." * 25000,
    "'1-'*25000": lambda: "1-" * 25000,
    "' 1'*25000": lambda: " 1" * 25000,
    "'a'*50000+'@'": lambda: "a" * 50000 + "@",
    "'a.'*25000+'@'": lambda: "a." * 25000 + "@",
    "'('*20000+'1'*20": lambda: "(" * 20000 + "1" * 20,
    "'ayse@ornek.com.tr 0533 123 45 67 '*1500":
        lambda: "ayse@ornek.com.tr 0533 123 45 67 " * 1500,
}


def _read_texts() -> list[str]:
    with CORPUS.open(encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line in lines if line.strip()]


def throughput(redact: Callable[[str], str], texts: list[str],
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Median MB/s of ``RUNS`` passes over the texts repeated to ``MIN_MB``."""
    size = sum(len(text.encode("utf-8")) for text in texts)
    batch = texts * max(1, math.ceil(MIN_MB * 1e6 / size))
    megabytes = size * (len(batch) // len(texts)) / 1e6
    rates = []
    for _ in range(RUNS):
        started = clock()
        for text in batch:
            redact(text)
        rates.append(megabytes / (clock() - started))
    return round(statistics.median(rates), 3)


def hostile_seconds(inputs: dict[str, Callable[[], str]]) -> dict[str, float]:
    """Median seconds of ``RUNS`` calls of the full policy on each hostile input."""
    timings = {}
    for name, build in inputs.items():
        text = build()
        runs = []
        for _ in range(RUNS):
            started = time.perf_counter()
            redact_all_text(text)
            runs.append(time.perf_counter() - started)
        timings[name] = round(statistics.median(runs), 4)
    return timings


def main() -> int:
    if not CORPUS.exists():
        print(f"bench/redaction.py: dev corpus not found at {CORPUS}", file=sys.stderr)
        return 1
    texts = _read_texts()
    redact_all_text("warm-up: call 0533 123 45 67 or mail ayse@ornek.com.tr")
    adversarial = hostile_seconds(ADVERSARIAL)
    extra = hostile_seconds(ADVERSARIAL_EXTRA)
    result = {
        "corpus": str(CORPUS),
        "records": len(texts),
        "mb_per_s": {
            "redact_all_text": throughput(redact_all_text, texts),
            "redact_text": throughput(redact_text, texts),
        },
        # The same per second of this process's CPU time: what the machine's
        # other load does not change.
        "mb_per_cpu_s": {"redact_text": throughput(redact_text, texts, time.process_time)},
        "adversarial_s": adversarial,
        "adversarial_extra_s": extra,
        "adversarial_max_s": max([*adversarial.values(), *extra.values()]),
        "python": platform.python_version(),
    }
    print(json.dumps(result, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
