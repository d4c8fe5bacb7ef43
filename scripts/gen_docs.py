"""Regenerate docs/errors.md and docs/compatibility.md from the code that defines them."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshgate.errors import reference_markdown  # noqa: E402
from services.validation.sdk_snapshot import SNAPSHOT  # noqa: E402
from services.validation.surface import compatibility_markdown  # noqa: E402


def documents() -> dict[Path, str]:
    import json

    version = json.loads(SNAPSHOT.read_text())["openai_version"]
    return {
        ROOT / "docs" / "errors.md": reference_markdown(),
        ROOT / "docs" / "compatibility.md": compatibility_markdown(version),
    }


if __name__ == "__main__":
    for path, text in documents().items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
