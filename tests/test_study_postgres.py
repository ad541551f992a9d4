"""Workers on a real PostgreSQL server: nothing lost, nothing trained twice.

The server comes from $SERATIO_TEST_POSTGRES_URL, which `make test` (scripts/test-services.sh) sets after
starting Debian's PostgreSQL on a local port. Without it the tests fail: a
skipped database test would hide exactly the bugs it exists to catch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from seratio.ledger import Ledger
from study_fakes import TINY_CLI, assert_trained_exactly_once, create, fake_workers, open_store

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("SERATIO_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "SERATIO_TEST_POSTGRES_URL is not set. Run the tests via make test, which starts a local PostgreSQL "
            "and exports it (e.g. postgresql://postgres@127.0.0.1:55432/seratio_test)."
        )
    return url


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_four_racing_fake_workers_on_postgres_train_each_run_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    name = _name()
    store, definition = create(postgres_url, name, "greedy", tmp_path / "runs", seeds=2)
    fake_workers(postgres_url, name, 4)
    assert_trained_exactly_once(store, definition)


def test_three_worker_processes_on_postgres_lose_and_duplicate_nothing(
    postgres_url: str, tmp_path: Path, cifar_dir: Path
) -> None:
    name = _name()
    command = [
        sys.executable, "-m", "seratio", "study", "run", "constant", "--name", name, "--storage", postgres_url,
        "--candidates", "2", "--epochs", "1", "--workers", "3", "--artifacts", str(tmp_path / "runs"),
        "--data-dir", str(cifar_dir), *TINY_CLI,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    trained = Counter(re.findall(r"training in (\S+)", done.stderr))
    assert len(trained) == 2 and set(trained.values()) == {1}, done.stderr  # (2,2,2) and the plain ResNet
    ledger = Ledger(open_store(postgres_url, name).trials())
    complete = [v for v in ledger.views if v.state == TrialState.COMPLETE]
    assert {v.rr for v in complete} == {(2, 2, 2), (None, None, None)}
    assert len(complete) == 2 and all(Path(v.attrs["run_dir"], "result.json").is_file() for v in complete)
    assert all(v.duplicate_of is not None for v in ledger.views if v.state != TrialState.COMPLETE)
