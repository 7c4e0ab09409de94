"""Where benchmark scripts keep their figures: bench/results/<name>.json, with the commit and the command that
measured them, so that the docs quote a file and the next regression shows in its diff."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record(name: str, figures: dict) -> Path:
    """Write ``figures`` to bench/results/<name>.json beside the commit, the date and the command line."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "commit": commit.strip() + ("+changes" if dirty else ""),
                "date": time.strftime("%Y-%m-%d"),
                "command": " ".join(
                    [
                        "python",
                        *(Path(a).relative_to(ROOT).as_posix() if a.startswith(str(ROOT)) else a for a in sys.argv),
                    ]
                ),
                **figures,
            },
            indent=1,
            default=float,
        )
        + "\n"
    )
    print(f"figures written to {out.relative_to(ROOT)}")
    return out
