"""Generate the sync client from the asyncio one.

python tools/unasync.py          # rewrite aimd_redis/_sync/throttle.py
python tools/unasync.py --check  # exit 1 if it is not current
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "aimd_redis" / "_async" / "throttle.py"
TARGET = ROOT / "aimd_redis" / "_sync" / "throttle.py"

# Applied in order, each to the whole text.
SUBS = [
    (r"The asyncio client", "The sync client"),
    (
        r"^aimd_redis/_sync/throttle\.py is generated.*?\n.*?\n",
        "Generated from aimd_redis/_async/throttle.py by tools/unasync.py:\n"
        "do not edit; edit that file and run ``python tools/unasync.py``.\n",
    ),
    (r"^import asyncio\n", ""),
    (r"\baimd_redis\._async\b", "aimd_redis._sync"),
    (r"\bAsync(Throttle|Lease|Slot|Script)\b", r"\1"),
    (r"\bredis\.asyncio\.cluster\b", "redis.cluster"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\basyncio\.sleep\b", "time.sleep"),
]


def generate() -> str:
    text = SOURCE.read_text(encoding="utf-8")
    for pattern, repl in SUBS:
        text = re.sub(pattern, repl, text, flags=re.MULTILINE)
    return text


def main(argv: list[str]) -> int:
    text = generate()
    if "--check" in argv:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python tools/unasync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
