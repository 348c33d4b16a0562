"""A page opened in a real headless Chromium (Debian's ``chromium``) with the network cut off: the
DOM after its scripts ran, and a screenshot kept as a test artifact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

ARTIFACTS = Path(os.environ.get("MLMON_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
# No fetch can leave the machine: every request goes to a proxy that refuses (port 9, discard),
# with no exception for any host; and nothing Chromium does in the background.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=10000",
         "--hide-scrollbars", "--disable-dev-shm-usage"]  # a container's /dev/shm is often 64 MB


@dataclass
class Rendered:
    dom: str
    charts: int  # what the page says it drew (data-charts), and its data points (data-points)
    points: int
    errors: list[str]  # script errors and console.error calls (data-errors)
    svgs: int  # plotly's drawn <svg class="main-svg"> elements
    markers: int  # drawn data points (markers)
    heatmaps: int  # drawn heat maps
    shapes: int  # drawn shapes (the alert spans)

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.dom))


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is not installed: `sudo apt-get install chromium` (scripts/ensure-system-deps does)")
    return found


def render(page: Path, screenshot: str, width: int = 1400, height: int = 2600) -> Rendered:
    """Open ``page`` (a file) headless, offline: its DOM once scripts ran; a screenshot goes to
    ``ARTIFACTS/screenshot``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlmon-chromium-") as profile:
        flags = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        url = page.resolve().as_uri()
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, timeout=120, check=True).stdout.decode()
        subprocess.run([*flags, f"--screenshot={ARTIFACTS / screenshot}", url], capture_output=True, timeout=120,
                       check=True)
    body = re.search(r"<body([^>]*)>", dom)
    attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1) if body else ""))
    if "errors" not in attributes:
        pytest.fail(f"the page's drawing script did not finish: <body{body.group(1) if body else ''}>")
    return Rendered(
        dom=dom, charts=int(attributes.get("charts", 0)), points=int(attributes.get("points", 0)),
        errors=orjson.loads(attributes["errors"].replace("&quot;", '"')),
        svgs=dom.count('class="main-svg"'), markers=len(re.findall(r'<path class="point[ "]', dom)),
        heatmaps=dom.count('<g class="hm"><image'), shapes=dom.count('<g class="shape-group"'),
    )
