"""``churnwatch demo`` end to end: the summary line, and mail counted at the SMTP server."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.conftest import Isolated

pytestmark = pytest.mark.e2e


def test_demo_summary_counts_the_mail_that_arrived(isolated: Isolated) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "demo",
            "--duration",
            "10",
            "--users",
            "40",
            "--rate",
            "100",
        ],
        env=isolated.env | {"CHURNWATCH_HOME": str(isolated.settings.home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events"] > 1000
    assert summary["alerts"] > 0
    assert summary["emails_received"] > 0
    # Only e-mail is configured in the demo: every action sent is a mail that arrived.
    assert summary["emails_received"] == summary["actions"].get("sent", 0)
    assert "ALERT" in done.stdout and "ACTION" in done.stdout  # shown as it happens
