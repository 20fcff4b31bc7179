"""The package as users install it: a wheel built with `python -m build`, in a clean venv.

The wheel holds the library with its Celery tasks and CLI under the `memory_worker`
namespace only (no top-level `tasks` or `cli` to collide with a host project's), and
without the operators' extra (Flower, supervisor). Installed in a fresh virtual
environment, `memory-worker status` answers and an enqueue publishes its task.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import redis

from memory_worker.celery_app import WRITE_QUEUE
from tests.processes import ROOT, project_env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    [built] = out.glob("memory_worker-*.whl")
    return built


def test_the_wheel_installs_tasks_and_cli_under_the_memory_worker_namespace(wheel: Path) -> None:
    """No top-level `tasks/` or `cli/`; the entry point is memory_worker.cli.main."""
    names = zipfile.ZipFile(wheel).namelist()
    assert "memory_worker/tasks/mirror.py" in names and "memory_worker/cli/main.py" in names
    assert "memory_worker/py.typed" in names
    tops = {name.split("/", 1)[0] for name in names if "/" in name}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"memory_worker"}
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "memory-worker = memory_worker.cli.main:main" in zipfile.ZipFile(wheel).read(
        meta).decode()
    requires = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(requires).decode()
    for operator_tool in ("flower", "supervisor"):
        declared = [row for row in metadata.splitlines()
                    if row.startswith(f"Requires-Dist: {operator_tool}")]
        assert declared and all('extra == "ops"' in row for row in declared)  # ops extra only


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_in_a_clean_venv_status_answers_and_an_enqueue_publishes(
    wheel: Path, tmp_path: Path, redis_url: str, conn: redis.Redis,
) -> None:
    """A web app's install: the library alone, `import tasks` still the host's business."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True,
                   capture_output=True, timeout=800)
    env = project_env(redis_url, FLAG_ZEP_WRITE="true", ZEP_API_URL="http://127.0.0.1:9",
                      ZEP_API_KEY="test-key", MEMORY_SPOOL_DIR=str(tmp_path / "spool"))
    outside = tmp_path  # not the repository: nothing found by accident on the path

    status = subprocess.run([str(venv / "bin" / "memory-worker"), "status", "--json"],
                            cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["base_mode"] == "write_only"

    enqueue = ("import json, memory_worker; "
               "r = memory_worker.enqueue_message('t-pkg', 'user', 'hello', 'pkg-1'); "
               "print(json.dumps([r.task_id, r.duplicate, r.spooled]))")
    done = subprocess.run([str(python), "-c", enqueue], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    task_id, duplicate, spooled = json.loads(done.stdout)
    assert (duplicate, spooled) == (False, False)
    [queued] = [json.loads(m) for m in conn.lrange(WRITE_QUEUE, 0, -1)]
    assert queued["headers"]["id"] == task_id

    probes = ("import importlib.util as u; "
              "print([u.find_spec(n) is None for n in ('tasks', 'cli', 'flower', 'supervisor')])")
    found = subprocess.run([str(python), "-c", probes], cwd=outside, env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "[True, True, True, True]"
