"""The offline demo, as a new user starts it: evidence arrives and a rule moves a status."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import free_port


def test_demo_shows_collected_evidence_a_rule_change_and_proposals(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PLEDGEWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "PLEDGEWATCH_EVALUATE_EVERY_SECONDS": "2",
        "PLEDGEWATCH_LOG_LEVEL": "WARNING",
    }
    env.pop("PLEDGEWATCH_SCHEDULER_ENABLED", None)
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "demo", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        base = f"http://127.0.0.1:{port}/api/v1"
        try:
            assert process.stdout is not None
            key = process.stdout.readline().decode().strip()
            assert key.startswith("pw_"), log_path.read_text()
            admin = {"Authorization": f"Bearer {key}"}
            deadline = time.monotonic() + 90
            actors: list[str] = []
            while time.monotonic() < deadline:
                try:
                    history = httpx.get(f"{base}/pledges/us-cn-ai-cooperation/history").json()
                    actors = [entry["actor"] for entry in history["items"]]
                    if "rule:supporting-evidence-starts-progress" in actors:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(1)
            assert "rule:supporting-evidence-starts-progress" in actors, log_path.read_text()[
                -3000:
            ]

            evidence = httpx.get(f"{base}/pledges/us-cn-ai-cooperation/evidence").json()["items"]
            assert any(item["title"].startswith("[SAMPLE DATA]") for item in evidence)
            runs = httpx.get(f"{base}/sources/demo-sample-wire-ai/runs", headers=admin).json()
            assert runs["items"][-1]["outcome"] == "ok"
            proposals = httpx.get(f"{base}/proposals", headers=admin).json()["items"]
            assert proposals
            assert all(p["state"] == "open" for p in proposals)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
