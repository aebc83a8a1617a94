"""The web page's unit tests read each pipeline's real GET /api/settings answer from
frontend/src/lib/fixtures/settings/ (written by scripts/settings_fixtures.py): the fixtures must be
what the server sends, so the page is tested against the schemas pydantic really produces."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from bench.live import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "settings_fixtures.py"
FIXTURES = REPO_ROOT / "frontend" / "src" / "lib" / "fixtures" / "settings"


def test_the_fixtures_are_up_to_date_for_every_pipeline():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"run scripts/settings_fixtures.py:\n{result.stdout}{result.stderr}"


def test_a_fixture_is_what_the_running_server_answers(img2img_server):
    served = httpx.get(f"{img2img_server.http}/api/settings", timeout=30).json()
    assert served == json.loads((FIXTURES / "img2img.json").read_text())
