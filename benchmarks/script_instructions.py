"""Instructions a redis-server spends per script call, counted by callgrind:
the same count for the same binary and inputs whatever else the machine is
doing, so two trees compare exactly where timings on a shared machine
cannot.

    python benchmarks/script_instructions.py [--pairs 500] [--tree PATH ...]

For each tree (default: this checkout; add ``--tree`` for another checkout of
the project, e.g. a ``git worktree`` of an earlier commit), a redis-server
started under ``valgrind --tool=callgrind`` on a free loopback port serves
``--pairs`` uncontended ``try_acquire`` + ``success`` pairs of that tree's
client, after a warm-up that loads the scripts; the counters are zeroed
before and dumped after, and the total divided by the script calls. The
minimal two-function hash counter of bench_core.py is counted the same way
as the baseline. Needs valgrind (Debian's ``valgrind`` package) and
``redis-server`` on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Runs inside the measured tree's interpreter path: one pair per call of one().
CLIENT = """
import sys, redis
mode, port, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = redis.Redis(port=port)
if mode == "minimal":
    c.function_load('''#!lua name=bench_minimal
redis.register_function('acq', function(KEYS, ARGV)
local n = redis.call('HINCRBY', KEYS[1], 'in_flight', 1)
if n > tonumber(ARGV[1]) then redis.call('HINCRBY', KEYS[1], 'in_flight', -1) return 0 end
return 1
end)
redis.register_function('rel', function(KEYS, ARGV) return redis.call('HINCRBY', KEYS[1], 'in_flight', -1) end)
''', replace=True)
    def one():
        c.fcall("acq", 1, "b:{m}:chat", 64)
        c.fcall("rel", 1, "b:{m}:chat")
else:
    from aimd_redis import Throttle
    t = Throttle(c)
    t.register(provider_name="b", model_id="m", alias="a", max_parallel_requests=64)
    def one():
        t.try_acquire(provider_name="b", model_id="m", domain="chat").success()
for _ in range(50):
    one()
print("ready", flush=True)
sys.stdin.readline()
for _ in range(pairs):
    one()
print("done", flush=True)
sys.stdin.readline()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count(mode: str, tree: Path, pairs: int) -> float:
    """Instructions per script call of ``mode`` ('ours' or 'minimal') with ``tree``'s client."""
    import redis

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        admin = redis.Redis(port=port)
        for _ in range(600):
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, mode, str(port), str(pairs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tree,  # `python -c` puts its working directory first on the path
        )
        assert client.stdin is not None
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        admin.config_resetstat()
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
        stats = admin.info("commandstats")
        calls = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("fcall", "evalsha"))
        client.stdin.write("\n")
        client.stdin.flush()
        client.wait(30)
        admin.shutdown(nosave=True)
        server.wait(60)
        dumps = [p for p in Path(tmp).glob("callgrind.out.*") if p.suffix != ".out"]
        totals = [int(m.group(1)) for p in dumps if (m := re.search(r"^summary: (\d+)", p.read_text(), re.M))]
        if not totals or not calls:
            raise RuntimeError(f"no count for {mode} in {tree}")
        return max(totals) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to count too")
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("redis-server")):
        print("needs valgrind and redis-server on PATH", file=sys.stderr)
        return 2
    print(f"counting {args.pairs} try_acquire+success pairs per tree under callgrind...", file=sys.stderr)
    minimal = count("minimal", ROOT, args.pairs)
    print(f"  {'minimal hash counter (FCALL)':<44} {minimal:>12,.0f} instructions per call")
    for tree in [ROOT, *args.tree]:
        ours = count("ours", tree.resolve(), args.pairs)
        print(f"  {tree!s:<44} {ours:>12,.0f} instructions per call  ({ours / minimal:.1f}x minimal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
