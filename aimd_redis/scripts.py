"""The Lua scripts, read from the package (or the source tree), in the two
forms Redis runs them:

- a function library (Redis 7 and later: ``FUNCTION LOAD`` once, then
  ``FCALL``), where the shared helpers and rules are built once per load
  instead of once per call;
- one script per operation for ``EVALSHA``, where functions are not to be
  had (Redis before 7, an ACL without them) or cost a round trip of their
  own (redis-py's cluster client asks the server for an ``FCALL``'s keys).

Both are made from the same files: the shared ones (``LIBRARY``) in front
of each operation's body.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

NAMES = ("register", "acquire", "release", "batch", "renew", "set_limit", "reset", "configure", "probe")
#: Shared code put in front of every operation, each file after those it
#: uses: numbers, clock and events; the hashes' fields; the budgets; leases;
#: the queue; the loop's rules; then what one acquire or outcome does.
LIBRARY = ("_base", "_fields", "_budget", "_leases", "_queue", "_rules", "_items")


def _lua_dir() -> Path:
    shipped = Path(str(resources.files("aimd_redis"))) / "lua"
    if shipped.is_dir():
        return shipped
    # Running from a source checkout or an editable install.
    return Path(__file__).resolve().parent.parent / "lua"


@cache
def _read() -> tuple[str, dict[str, str]]:
    folder = _lua_dir()
    shared = "\n".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in LIBRARY)
    return shared, {name: (folder / f"{name}.lua").read_text(encoding="utf-8") for name in NAMES}


#: The first line of a script that Redis 7 and later read as its flags: none,
#: so that Redis refuses it as a whole when it is out of memory (without it, a
#: script is stopped only at its first command that needs memory, after it
#: may have written). Older servers, and fakeredis, cannot parse it.
FLAGS_LINE = "#!lua\n"


@cache
def sources(flags: bool = True) -> dict[str, str]:
    """Script name -> full Lua text for EVAL (the shared code, then the
    operation), under a flags line unless told otherwise."""
    shared, bodies = _read()
    head = FLAGS_LINE if flags else ""
    return {name: head + shared + "\n" + body for name, body in bodies.items()}


class Library(NamedTuple):
    name: str
    """``aimd_<digest>``: the text's own digest, so that clients of different
    versions keep their own functions side by side."""
    code: str
    """What ``FUNCTION LOAD`` takes."""
    functions: dict[str, str]
    """Operation name -> the function ``FCALL`` calls."""


@cache
def library() -> Library:
    shared, bodies = _read()
    digest = hashlib.sha1((shared + "".join(bodies.values())).encode()).hexdigest()[:12]
    name = f"aimd_{digest}"
    functions = {op: f"{name}_{op}" for op in NAMES}
    # No flags: every function may write, so Redis refuses a call as a whole
    # when it is out of memory, never half way. 'events' is _base.lua's
    # per-call list, which a library (unlike an EVAL) keeps between calls.
    parts = [f"#!lua name={name}", shared]
    parts += [
        f"redis.register_function('{functions[op]}', function(KEYS, ARGV)\nevents = {{}}\n{body}\nend)"
        for op, body in bodies.items()
    ]
    return Library(name=name, code="\n".join(parts), functions=functions)
