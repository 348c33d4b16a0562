"""Alert delivery beyond the alerts topic: Alertmanager's v2 API and a plain webhook.

Delivery runs on a background thread behind a queue, so a slow or absent receiver never stalls
the engine. Alertmanager wants firing alerts re-sent while they are active (it expires them
otherwise), so firing alerts are re-sent every ``resend_s`` until they resolve; resolved ones are
sent once with their ``endsAt``. Failures are retried with backoff, counted, and logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Delivery", "post_json", "to_alertmanager"]

log = logging.getLogger("mlmon.alerts")


def to_alertmanager(event: dict[str, Any], generator_url: str = "") -> dict[str, Any]:
    """An mlmon alert event as an Alertmanager v2 ``postableAlert``."""
    alert: dict[str, Any] = {
        "labels": event["labels"],
        "annotations": {k: str(v) for k, v in event["annotations"].items()},
        "startsAt": event["starts_at"],
    }
    if event["status"] == "resolved":
        alert["endsAt"] = event["ends_at"]
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


def post_json(url: str, body: Any, timeout_s: float = 5.0) -> None:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


@dataclass
class Delivery:
    """Sends every alert event to the configured receivers, off the caller's thread."""

    alertmanager_url: str | None = None
    webhook_url: str | None = None
    resend_s: float = 30.0
    retries: int = 5
    post: Callable[[str, Any], None] = post_json
    sent: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    _queue: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    _firing: dict[str, dict[str, Any]] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.alertmanager_url and not self.alertmanager_url.rstrip("/").endswith("/api/v2/alerts"):
            self.alertmanager_url = self.alertmanager_url.rstrip("/") + "/api/v2/alerts"

    @property
    def enabled(self) -> bool:
        return bool(self.alertmanager_url or self.webhook_url)

    def start(self) -> Delivery:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlmon-alert-delivery", daemon=True)
            self._thread.start()
        return self

    def submit(self, events: list[dict[str, Any]]) -> None:
        if self.enabled:
            for event in events:
                self._queue.put(event)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        next_resend = time.monotonic() + self.resend_s
        while True:
            try:
                event = self._queue.get(timeout=max(0.05, next_resend - time.monotonic()))
            except queue.Empty:
                event = None
                if self._firing and self.alertmanager_url:
                    self._send(self.alertmanager_url, [to_alertmanager(e) for e in self._firing.values()])
                next_resend = time.monotonic() + self.resend_s
                continue
            if event is None:
                return
            if event["status"] == "firing":
                self._firing[event["fingerprint"]] = event
            else:
                self._firing.pop(event["fingerprint"], None)
            if self.alertmanager_url:
                self._send(self.alertmanager_url, [to_alertmanager(event)])
            if self.webhook_url:
                self._send(self.webhook_url, event)

    def _send(self, url: str, body: Any) -> None:
        delay = 0.5
        for attempt in range(self.retries):
            try:
                self.post(url, body)
                self.sent["ok"] += 1
                return
            except Exception as exc:  # any network or HTTP failure: retry, then give up loudly
                log.warning("alert delivery to %s failed (attempt %d): %s", url, attempt + 1, exc)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.sent["failed"] += 1
