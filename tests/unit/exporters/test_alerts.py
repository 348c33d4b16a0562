from __future__ import annotations

import time
from typing import Any

import pytest

from stream.exporters.alerts import Delivery, to_alertmanager

FIRING = {"status": "firing", "fingerprint": "f1", "labels": {"alertname": "A", "severity": "warning"},
          "annotations": {"summary": "s", "description": "d", "runbook_url": "https://r"},
          "starts_at": "2026-01-01T00:00:00Z"}
RESOLVED = {**FIRING, "status": "resolved", "ends_at": "2026-01-01T01:00:00Z"}


def test_events_become_alertmanager_alerts() -> None:
    assert to_alertmanager(FIRING) == {"labels": FIRING["labels"], "annotations": FIRING["annotations"],
                                       "startsAt": "2026-01-01T00:00:00Z"}
    assert to_alertmanager(RESOLVED)["endsAt"] == "2026-01-01T01:00:00Z"


@pytest.mark.slow
def test_firing_alerts_are_resent_until_resolved_and_failures_are_retried() -> None:
    posts: list[tuple[str, Any]] = []
    failures = [2]

    def post(url: str, body: Any) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError("connection refused")
        posts.append((url, body))

    delivery = Delivery("http://am:9093", "http://hook/x", resend_s=0.3, post=post).start()
    delivery.submit([FIRING])
    deadline = time.monotonic() + 60  # the first send comes after two retries (0.5 s, then 1 s), then re-sends
    while sum(url == "http://am:9093/api/v2/alerts" for url, _ in posts) < 2:
        assert time.monotonic() < deadline, posts
        time.sleep(0.05)
    delivery.submit([RESOLVED])
    delivery.close()
    am = [body for url, body in posts if url == "http://am:9093/api/v2/alerts"]
    hooks = [body for url, body in posts if url == "http://hook/x"]
    assert len(am) >= 3  # the first send (after two retries), then re-sends while firing, then the resolve
    assert "endsAt" in am[-1][0] and all("endsAt" not in body[0] for body in am[:-1])
    assert [h["status"] for h in hooks] == ["firing", "resolved"]
    assert delivery.sent["failed"] == 0


def test_disabled_delivery_does_nothing() -> None:
    delivery = Delivery().start()
    delivery.submit([FIRING])
    delivery.close()
    assert not delivery.enabled and delivery.sent == {"ok": 0, "failed": 0}
