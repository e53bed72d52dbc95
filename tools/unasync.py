"""Generate the sync client from the asyncio one.

python tools/unasync.py          # rewrite aimd_redis/_sync/ from aimd_redis/_async/
python tools/unasync.py --check  # exit 1 if any generated file is not current

Every module of aimd_redis/_async/ but ``synchronization.py`` (where the two
differ, a twin written by hand for each) is rewritten by the substitutions
below. A substitution that no longer matches anything is an error: the rules
stay as short as the code needs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "aimd_redis" / "_async"
TARGET = ROOT / "aimd_redis" / "_sync"
HAND_WRITTEN = {"synchronization.py"}
#: Each source module says, in its docstring, that the sync one is generated.
HEADER = r"aimd_redis/_sync/(\w+)\.py is generated from\s+this file by\s+tools/unasync\.py\."

# Applied in order, each to the whole text of every module.
SUBS = [
    (HEADER, r"Generated from aimd_redis/_async/\1.py\nby tools/unasync.py: edit that file, not this one."),
    (r"The asyncio client", "The sync client"),
    (r"\baimd_redis\._async\b", "aimd_redis._sync"),
    (r"\.AsyncByteStream\b", ".SyncByteStream"),
    (r"\bhandle_async_request\b", "handle_request"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"\bredis\.asyncio\.cluster\b", "redis.cluster"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\b__aiter__\b", "__iter__"),
    (r"\baclose\b", "close"),
    (r"\bAwaitable\[(\w+)\]", r"\1"),
    (r"\bAwaitable, ", ""),
]


def generate() -> dict[Path, str]:
    """Target path -> generated text, for every source module."""
    used = [0] * len(SUBS)
    out = {}
    for source in sorted(SOURCE.glob("*.py")):  # pyproject.toml's ruff exclusions list the results
        if source.name in HAND_WRITTEN:
            continue
        text = source.read_text(encoding="utf-8")
        if text.strip() and not re.search(HEADER, text):
            raise SystemExit(f"{source.relative_to(ROOT)} does not say its sync twin is generated (see HEADER)")
        for i, (pattern, repl) in enumerate(SUBS):
            text, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
            used[i] += n
        out[TARGET / source.name] = text
    unused = [pattern for (pattern, _), n in zip(SUBS, used, strict=True) if n == 0]
    if unused:
        raise SystemExit(f"substitutions that match nothing any more (remove them): {unused}")
    return out


def main(argv: list[str]) -> int:
    generated = generate()
    stale = {p for p in TARGET.glob("*.py") if p.name not in HAND_WRITTEN and p not in generated}
    if "--check" in argv:
        behind = [p for p, text in generated.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for path in sorted(behind) + sorted(stale):
            print(f"{path.relative_to(ROOT)} is out of date: run python tools/unasync.py", file=sys.stderr)
        return 1 if behind or stale else 0
    for path in stale:
        path.unlink()
    for path, text in generated.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
