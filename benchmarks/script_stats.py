"""Redis's own count of the time spent in the library's scripts, whichever
way they ran (FCALL of the function library, or EVALSHA)."""

from __future__ import annotations

from typing import Any

COMMANDS = ("fcall", "evalsha")


def script_stats(client: Any, commands: tuple[str, ...] = COMMANDS) -> tuple[int, float]:
    """(calls, microseconds) of ``commands`` since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    found = [stats.get(f"cmdstat_{c}", {}) for c in commands]
    return sum(int(s.get("calls", 0)) for s in found), sum(float(s.get("usec", 0)) for s in found)


def usec_per_call(client: Any, commands: tuple[str, ...] = COMMANDS) -> float:
    calls, usec = script_stats(client, commands)
    return usec / calls if calls else 0.0
