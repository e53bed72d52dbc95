"""The operator's commands, against a real redis-server."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from aimd_redis import Lease, Throttle, ThrottleConfig
from aimd_redis.demo.embedded import _free_port
from aimd_redis.ops.cli import build_parser, main
from aimd_redis.ops.exporter import registry_for

LLAMA = "meta-llama/Llama-3.1-8B"


@pytest.fixture
def fleet(real_redis: redis.Redis, real_redis_url: str) -> str:
    """Two models in known states, made with the server's own clock."""
    ramping = Throttle(real_redis, config=ThrottleConfig(rampup_seconds=600))
    ramping.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=64)
    ramping.register(provider_name="openai", model_id="gpt-4o", alias="judge", max_parallel_requests=48)
    lease = ramping.try_acquire(provider_name="openai", model_id="gpt-4o", domain="chat")
    assert isinstance(lease, Lease)
    lease.success()
    plain = Throttle(real_redis)
    plain.register(
        provider_name="vllm", model_id=LLAMA, alias="gen", max_parallel_requests=16, tokens_per_minute=100_000
    )
    first, second = (
        plain.try_acquire(provider_name="vllm", model_id=LLAMA, domain="embedding", tokens=1_000) for _ in range(2)
    )
    assert isinstance(first, Lease)
    assert isinstance(second, Lease)
    first.rate_limited(retry_after=90)
    return real_redis_url


def _digest(client: redis.Redis) -> object:
    try:
        return client.execute_command("DEBUG", "DIGEST")
    except redis.ResponseError:  # DEBUG disabled on this server: compare dumps instead
        return {k: client.dump(k) for k in sorted(client.keys("*"))}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_status_json_field_by_field(fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "status", "--url", fleet, "--json")
    assert code == 0
    by_domain = {r["domain"]: r for r in json.loads(out)}
    chat, emb = by_domain["chat"], by_domain["embedding"]
    assert (chat["provider_name"], chat["model_id"], chat["effective_max"]) == ("openai", "gpt-4o", 48)
    assert chat["aliases"] == {"gen": 64, "judge": 48}
    assert (chat["current_limit"], chat["in_flight"], chat["waiters"]) == (1, 0, 0)
    assert chat["rampup_active"] is True
    assert 0 <= chat["ramp_percent"] < 5
    assert 590 < chat["ramp_left"] <= 600
    assert chat["last_change"] == "ramp_start 0 -> 1"
    assert chat["rate_limit_ceiling"] == 0
    assert chat["ceiling_age"] is None
    assert (emb["provider_name"], emb["model_id"], emb["effective_max"]) == ("vllm", LLAMA, 16)
    assert (emb["current_limit"], emb["in_flight"], emb["rate_limit_ceiling"]) == (12, 1, 16)
    assert 80 < emb["cooldown_left"] <= 90
    assert 0 <= emb["ceiling_age"] < 10
    assert emb["last_change"] == "decrease 16 -> 12"
    assert (emb["total_429s"], emb["total_reclaimed"]) == (1, 0)
    assert emb["ramp_percent"] is None
    assert chat["budget"] is None
    budget = emb["budget"]
    assert (budget["tokens_per_minute"], budget["requests_per_minute"], budget["requests_left"]) == (
        100_000,
        None,
        None,
    )
    # The 429 emptied the bucket (no header said what was left); it refills at 1,667 tokens a second.
    assert 0 <= budget["tokens_left"] < 15_000


def test_status_filters_and_table(fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["vllm"], [f"vllm/{LLAMA}"], [f"vllm/{LLAMA}", "embedding"]):
        code, out = run_cli(capsys, "status", "--url", fleet, *argv)
        assert code == 0
        model, rules, header, row = out.strip().splitlines()
        assert re.fullmatch(rf"vllm/{LLAMA}  max 16 \(gen=16\)  budget left tpm \d+/100000", model)
        # the loop's settings the model runs, as the last register stored them
        assert rules.split()[:3] == ["rules:", "policy=classic", "reduce_factor=0.75"]
        assert header.split()[:3] == ["DOMAIN", "LIMIT", "IN"]
        assert row.split()[:4] == ["embedding", "12", "1", "0"]
    code, out = run_cli(capsys, "status", "--url", fleet)
    lines = out.strip().splitlines()
    assert lines[0] == "openai/gpt-4o  max 48 (gen=64 judge=48)  budget left -"
    assert "rampup_seconds=600" in lines[1]
    assert lines[3].split()[:2] == ["chat", "1"]
    assert lines[4].startswith(f"vllm/{LLAMA}  max 16")
    # the columns line up across models
    assert lines[2].index("LIMIT") == lines[6].index("LIMIT") == lines[7].index("12")


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["status", "openai/gpt-4"], "no model openai/gpt-4 "),
        (["status", "openia"], "no model of provider 'openia'"),
        (["check", "openai/gpt4o"], "no model openai/gpt4o "),
        (["set-limit", "openai/gpt4o", "chat", "3"], "no model openai/gpt4o "),
    ],
)
def test_a_typo_in_a_model_fails_and_lists_the_models_there(
    fleet: str, capsys: pytest.CaptureFixture[str], argv: list[str], wanted: str
) -> None:
    assert main([*argv, "--url", fleet]) == 1
    err = capsys.readouterr().err
    assert wanted in err
    assert "did you mean openai/gpt-4o?" in err
    assert f"the models there: openai/gpt-4o, vllm/{LLAMA}" in err
    assert "call register" not in err


def test_status_of_a_domain_nobody_used_fails(fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", fleet, "openai/gpt-4o", "image"]) == 1
    assert "no domain 'image' in openai/gpt-4o" in capsys.readouterr().err


def test_check_of_one_model_ignores_the_others(fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "check", "--url", fleet, "openai/gpt-4o")
    assert (code, out.strip()) == (0, "ok: 1 domain(s) in namespace 'aimd'")
    code, out = run_cli(capsys, "check", "--url", fleet, f"vllm/{LLAMA}")
    assert code == 1


def test_reading_commands_change_nothing(
    fleet: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _digest(real_redis)
    for argv in (
        ["status", "--url", fleet],
        ["status", "--url", fleet, "--json"],
        ["check", "--url", fleet],
        ["events", "--url", fleet, "openai/gpt-4o"],
    ):
        main(argv)
    assert _digest(real_redis) == before


def test_check_exit_codes(fleet: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "check", "--url", fleet)  # 90 s cooldown > 60 s threshold
    assert code == 1
    assert "embedding: in cooldown" in out
    code, out = run_cli(capsys, "check", "--url", fleet, "--max-cooldown", "120")
    assert code == 0
    assert out.startswith("ok: 2 domain(s)")
    assert main(["set-limit", "--url", fleet, "openai/gpt-4o", "chat", "1"]) == 0
    code, out = run_cli(capsys, "check", "--url", fleet, "--max-cooldown", "120", "--max-pinned", "0")
    assert code == 1
    assert "chat: pinned at limit 1" in out
    code = main(["check", "--url", f"redis://127.0.0.1:{_free_port()}/0"])
    assert code == 2


def test_set_limit_and_reset_take_effect_and_are_logged(
    fleet: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_cli(capsys, "set-limit", "--url", fleet, "openai/gpt-4o", "chat", "1000")
    assert (code, out.strip()) == (0, "openai/gpt-4o chat: limit 48 (asked 1000: clamped to 1..48, the effective max)")
    state = Throttle(real_redis).domain_state("openai", "gpt-4o", "chat")
    assert state is not None
    assert (state.current_limit, state.rampup_active) == (48, False)

    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, out = run_cli(capsys, "reset", "--url", fleet, f"vllm/{LLAMA}")
    assert code == 1
    assert out.startswith("Reset every domain of vllm/")
    assert out.strip().endswith("not reset")
    assert real_redis.exists(f"aimd:{{vllm/{LLAMA}}}:embedding")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out = run_cli(capsys, "reset", "--url", fleet, f"vllm/{LLAMA}")
    assert code == 0
    assert out.strip().endswith(f"reset 1 domain(s) of vllm/{LLAMA}")
    assert not real_redis.exists(f"aimd:{{vllm/{LLAMA}}}:embedding", f"aimd:{{vllm/{LLAMA}}}:embedding:leases")

    code, out = run_cli(capsys, "events", "--url", fleet, "openai/gpt-4o")
    assert [line.split()[1:] for line in out.strip().splitlines()][-2:] == [
        ["chat", "ramp_stopped", "1", "->", "1"],
        ["chat", "set_limit", "1", "->", "48"],
    ]
    code, out = run_cli(capsys, "events", "--url", fleet, f"vllm/{LLAMA}")
    assert out.strip().splitlines()[-1].split()[1:] == ["embedding", "reset", "12", "->", "1"]


def test_events_follow_prints_new_events(fleet: str, real_redis: redis.Redis) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aimd_redis.ops.cli",
            "events",
            "--url",
            fleet,
            "--count",
            "0",
            "--follow",
            "openai/gpt-4o",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("following")
        Throttle(real_redis).set_limit("openai", "gpt-4o", "chat", 7)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend([proc.stdout.readline(), proc.stdout.readline()]))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout=10)
        assert [line.split()[1:3] for line in lines] == [["chat", "ramp_stopped"], ["chat", "set_limit"]]
    finally:
        proc.terminate()
        proc.wait()


def test_exporter_serves_every_domain(fleet: str, real_redis: redis.Redis) -> None:
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry_for(real_redis, "aimd"))
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        thread.join()
    samples = {
        (s.name, s.labels["provider"], s.labels.get("domain") or s.labels["kind"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("aimd_current_limit", "openai", "chat")] == 1
    assert samples[("aimd_effective_max", "openai", "chat")] == 48
    assert samples[("aimd_current_limit", "vllm", "embedding")] == 12
    assert samples[("aimd_in_flight", "vllm", "embedding")] == 1
    assert samples[("aimd_rate_limit_ceiling", "vllm", "embedding")] == 16
    assert 80 < samples[("aimd_cooldown_seconds", "vllm", "embedding")] <= 90
    assert samples[("aimd_rate_limited_total", "vllm", "embedding")] == 1
    assert samples[("aimd_reclaimed_leases_total", "openai", "chat")] == 0
    assert samples[("aimd_budget_per_minute", "vllm", "tokens")] == 100_000
    assert 0 <= samples[("aimd_budget_left", "vllm", "tokens")] < 15_000
    assert ("aimd_budget_per_minute", "openai", "tokens") not in samples


def test_status_watch_redraws_in_place(fleet: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aimd_redis.ops.cli", "status", "--url", fleet, "--watch", "0.2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        frames, seen = 0, ""
        while frames < 3:
            line = proc.stdout.readline()
            assert line, "status --watch stopped"
            frames += line.count("\x1b[H\x1b[2J")
            seen += line
        assert seen.count("openai/gpt-4o") >= 2  # the table again in each frame
    finally:
        proc.terminate()
        proc.wait()


def test_unknown_models_are_errors_for_reset_and_events(fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("reset", "--yes"), ("events",)):
        code = main([*argv, "--url", fleet, "openai/no-such-model"])
        captured = capsys.readouterr()
        assert code == 1
        assert "no model openai/no-such-model" in captured.err


def test_events_show_a_cooldown_as_its_length(fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "events", "--url", fleet, f"vllm/{LLAMA}")
    assert code == 0
    cooldown = next(line for line in out.splitlines() if " cooldown " in line)
    assert cooldown.split()[1:] == ["embedding", "cooldown", "for", "90.0s"]


@pytest.mark.parametrize(
    "argv",
    [
        ("events", "openai/gpt-4o", "--count", "-1"),
        ("check", "--max-cooldown", "-5"),
        ("check", "--max-pinned", "nan"),
        ("status", "--watch", "0"),
    ],
)
def test_nonsense_numbers_are_refused_before_anything_runs(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_every_argument_has_help() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    assert "(default: 60.0)" in out
    assert "(default: aimd)" in out


def test_a_refused_default_url_points_to_url_and_redis_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr("aimd_redis.ops.cli.DEFAULT_URL", f"redis://127.0.0.1:{_free_port()}/0")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err
    assert "--url" in err
    assert "$REDIS_URL" in err


def _redis_cli_split(line: str) -> list[bytes]:
    """A line split as redis-cli splits it (sdssplitargs): words, or double-quoted
    strings with backslash escapes."""
    escapes = {"n": b"\n", "r": b"\r", "t": b"\t", "b": b"\b", "a": b"\a", "\\": b"\\", '"': b'"'}
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
        elif line[i] == '"':
            word, i = b"", i + 1
            while line[i] != '"':
                if line[i] == "\\" and line[i + 1] == "x":
                    word, i = word + bytes([int(line[i + 2 : i + 4], 16)]), i + 4
                elif line[i] == "\\":
                    word, i = word + escapes[line[i + 1]], i + 2
                else:
                    word, i = word + line[i].encode(), i + 1
            words.append(word)
            i += 1
        else:
            end = line.find(" ", i) if " " in line[i:] else len(line)
            words.append(line[i:end].encode())
            i = end
    return words


def test_acl_quotes_what_redis_cli_would_split_and_says_to_replace_the_placeholder(
    capsys: pytest.CaptureFixture[str], real_redis: redis.Redis, real_redis_url: str
) -> None:
    password = 'two words"quoted\\back\nline\x01é'
    assert main(["acl", "--user", "spaced", "--password", password]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line  # one line, as redis-cli reads a command
    real_redis.execute_command(*_redis_cli_split(line))
    host = real_redis_url.split("://", 1)[1].split("@")[-1]
    as_user = redis.Redis.from_url(f"redis://{host}", username="spaced", password=password)
    assert as_user.ping()
    as_user.close()
    assert main(["acl"]) == 0
    captured = capsys.readouterr()
    assert ">CHANGE-ME" in captured.out
    assert "replace CHANGE-ME" in captured.err


GPT = "aimd:{openai/gpt-4o}"
#: One bad key each, and the model it belongs to (None: no model's).
BAD_KEYS = {
    "stray cap without a model": ("aimd:{noslash}:cap", "hash", None),
    "cap of the wrong type": (f"{GPT}:cap", "string", "openai/gpt-4o"),
    "domain index of the wrong type": (f"{GPT}:domains", "string", "openai/gpt-4o"),
    "domain of the wrong type": (f"{GPT}:chat", "list", "openai/gpt-4o"),
    "leases of the wrong type": (f"{GPT}:chat:leases", "string", "openai/gpt-4o"),
    "events of the wrong type": (f"{GPT}:events", "string", "openai/gpt-4o"),
    "budget of the wrong type": (f"aimd:{{vllm/{LLAMA}}}:cap:budget", "string", f"vllm/{LLAMA}"),
}


@pytest.mark.parametrize("case", BAD_KEYS)
def test_one_bad_key_is_reported_beside_the_healthy_models(
    fleet: str, real_redis: redis.Redis, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    key, kind, owner = BAD_KEYS[case]
    real_redis.delete(key)
    if kind == "hash":
        real_redis.hset(key, "effective_max", "4")
    elif kind == "list":
        real_redis.rpush(key, "x")
    else:
        real_redis.set(key, "x")
    code, out = run_cli(capsys, "status", "--url", fleet, "--json")
    assert code == 0
    reports = json.loads(out)
    bad = [r for r in reports if r["problem"]]
    assert len(bad) == 1
    assert key in bad[0]["problem"]
    healthy = {(r["provider_name"], r["model_id"], r["domain"]) for r in reports if not r["problem"]}
    if owner != f"vllm/{LLAMA}":
        assert ("vllm", LLAMA, "embedding") in healthy
    if owner != "openai/gpt-4o":
        assert ("openai", "gpt-4o", "chat") in healthy

    code, out = run_cli(capsys, "status", "--url", fleet)
    assert code == 0
    assert key in out
    assert (f"vllm/{LLAMA}" if owner != f"vllm/{LLAMA}" else "openai/gpt-4o") in out

    code, out = run_cli(capsys, "check", "--url", fleet, "--max-cooldown", "120")
    assert code == 1
    (problem,) = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert key in problem
    assert f"{len(healthy)} healthy" in out

    text = generate_latest(registry_for(real_redis, "aimd")).decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert sum(s.value for s in samples if s.name == "aimd_unreadable") == 1  # the exporter goes on too
    assert len({s.labels["domain"] for s in samples if s.name == "aimd_current_limit"}) == len(healthy)


DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana" / "aimd-redis.json"


def _queries(node: object) -> list[str]:
    """Every PromQL text in a Grafana dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("expr", "definition") and isinstance(v, str)]
        return found + [q for v in node.values() for q in _queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in _queries(v)]
    return []


def test_every_query_of_the_dashboard_names_what_the_exporter_emits(fleet: str, real_redis: redis.Redis) -> None:
    grouped = Throttle(real_redis).try_acquire(provider_name="openai", model_id="gpt-4o", domain="chat", group="batch")
    assert isinstance(grouped, Lease)  # so that the per-group series are there too
    text = generate_latest(registry_for(real_redis, "aimd")).decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    emitted = {s.name for s in samples}
    labels = {label for s in samples for label in s.labels}
    queries = _queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 10
    for query in queries:
        named = set(re.findall(r"\baimd_[a-z_]+\b", query))
        assert named, f"no metric in {query!r}"
        assert named <= emitted, f"{query!r} names {sorted(named - emitted)}, which the exporter does not emit"
        used = set(re.findall(r"(\w+)\s*=~?\s*\"", query)) | set(re.findall(r"label_values\(.*,\s*(\w+)\)", query))
        assert used <= labels, f"{query!r} uses labels {sorted(used - labels)}, which the exporter does not set"
