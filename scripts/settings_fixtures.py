"""Write each pipeline's GET /api/settings answer to frontend/src/lib/fixtures/settings/, for the web
page's unit tests: they test against the schemas pydantic really produces, not hand-written ones.

    .venv/bin/python scripts/settings_fixtures.py          # rewrite the fixtures
    .venv/bin/python scripts/settings_fixtures.py --check  # exit 1 if any is out of date

tests/test_settings_fixtures.py runs the check, and compares a fixture with a running server's answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "frontend" / "src" / "lib" / "fixtures" / "settings"
SET_UPS = ("controlnetDepthHyperSDXL",)  # a set-up's schema (pipelines/_composed.py) for the page's tests too
sys.path.insert(0, str(REPO_ROOT))


def fixtures() -> dict[Path, str]:
    """{path: JSON text} for every pipeline module and the set-ups in SET_UPS, as the server answers with default options."""
    import pipelines
    from server.config import DEFAULT_MAX_USERS
    from server.live import settings_response

    out = {}
    for name in [*pipelines.available(), *SET_UPS]:
        module = pipelines.load_module(name)
        settings = settings_response(module.Info, module.InputParams, DEFAULT_MAX_USERS)
        out[FIXTURES / f"{name}.json"] = json.dumps(settings.model_dump(mode="json"), indent="\t") + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a fixture differs from what the server sends")
    args = parser.parse_args()
    stale = []
    for path, text in fixtures().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(REPO_ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
