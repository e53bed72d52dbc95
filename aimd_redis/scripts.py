"""The Lua scripts, read from the package (or the source tree)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

NAMES = ("register", "acquire", "release", "renew", "set_limit", "reset")


def _lua_dir() -> Path:
    shipped = Path(str(resources.files("aimd_redis"))) / "lua"
    if shipped.is_dir():
        return shipped
    # Running from a source checkout or an editable install.
    return Path(__file__).resolve().parent.parent / "lua"


#: Shared code put in front of every operation: the plumbing's helpers, then
#: the loop's rules.
LIBRARY = ("_prelude", "_rules")


@cache
def sources() -> dict[str, str]:
    """Script name -> full Lua text (the shared library, then the operation)."""
    folder = _lua_dir()
    library = "\n".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in LIBRARY)
    return {name: library + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8") for name in NAMES}
