"""Alerts reach a real Alertmanager (Debian's) through its v2 API, and a plain webhook, from `mlmon demo`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kafka_broker import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.bodies: dict[str, list[Any]] = defaultdict(list)

        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received[self.path].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


EPISODES = {(name, status) for name in ("ModelAccuracyLow", "AccuracyDrop") for status in ("firing", "resolved")}


def notified(notifications: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(alertname, status) of every alert Alertmanager notified."""
    return {(a["labels"]["alertname"], a["status"]) for n in notifications for a in n["alerts"]}


@pytest.mark.skipif(ALERTMANAGER is None, reason="Alertmanager is not installed (scripts/ensure-system-deps)")
def test_demo_alerts_reach_alertmanager_and_the_webhook(tmp_path: Path) -> None:
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}"
    am_port = free_port()
    (tmp_path / "alertmanager.yml").write_text(
        "route: {receiver: capture, group_wait: 1s, group_interval: 1s, repeat_interval: 1h}\n"
        f"receivers: [{{name: capture, webhook_configs: [{{url: '{hook}/am', send_resolved: true}}]}}]\n"
    )
    alertmanager = subprocess.Popen(
        [str(ALERTMANAGER), f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
         f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
        stdout=(tmp_path / "alertmanager.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        time.sleep(2)
        demo = subprocess.run(
            [sys.executable, "-m", "stream.cli", "demo", "--duration", "8", "--metrics-port", str(free_port()),
             "--alertmanager-url", f"http://127.0.0.1:{am_port}", "--webhook-url", f"{hook}/mlmon"],
            capture_output=True, text=True, timeout=60)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not notified(receiver.bodies["/am"]) >= EPISODES:
            time.sleep(0.5)
    finally:
        alertmanager.terminate()
        alertmanager.wait(timeout=30)
        receiver.shutdown()
    statuses: dict[str, list[str]] = {}  # the demo's two rules: a threshold and a detector
    for event in receiver.bodies["/mlmon"]:
        statuses.setdefault(event["alertname"], []).append(event["status"])
    assert statuses == {"ModelAccuracyLow": ["firing", "resolved"], "AccuracyDrop": ["firing", "resolved"]}
    notifications = receiver.bodies["/am"]
    assert notified(notifications) >= EPISODES, notifications
    alerts = [a for n in notifications for a in n["alerts"]]
    alert = next(a for a in alerts if a["labels"]["alertname"] == "ModelAccuracyLow")
    detected = next(a for a in alerts if a["labels"]["alertname"] == "AccuracyDrop")
    assert float(detected["annotations"]["baseline"]) > 0.8 and int(detected["annotations"]["change_pairs"]) > 0
    assert alert["labels"]["model"] == "nba-game-outcome"
    assert alert["annotations"]["runbook_url"].startswith("https://")
