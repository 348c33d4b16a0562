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
        while time.monotonic() < deadline:
            statuses = [n["status"] for n in receiver.bodies["/am"]]
            if "firing" in statuses and "resolved" in statuses:
                break
            time.sleep(0.5)
    finally:
        alertmanager.terminate()
        alertmanager.wait(timeout=30)
        receiver.shutdown()
    assert [e["status"] for e in receiver.bodies["/mlmon"]] == ["firing", "resolved"]
    notifications = receiver.bodies["/am"]
    assert [n["status"] for n in notifications][:1] == ["firing"], notifications
    assert notifications[-1]["status"] == "resolved", notifications
    alert = notifications[0]["alerts"][0]
    assert alert["labels"]["alertname"] == "ModelAccuracyLow"
    assert alert["labels"]["model"] == "nba-game-outcome"
    assert alert["annotations"]["runbook_url"].startswith("https://")
