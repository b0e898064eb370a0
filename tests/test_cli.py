"""The command line as users and schedulers call it: real processes, real loopback HTTP."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from bulkcred.cli import cli
from bulkcred.journal import replay
from bulkcred.secrets import read_sink

from .conftest import cli_env, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_command_has_help_and_a_readme_line() -> None:
    runner = CliRunner()
    readme = README.read_text()
    for name, cmd in cli.commands.items():
        assert cmd.help and len(cmd.help.strip()) > 20, name
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert f"bulkcred {name}" in readme, f"README has no section for {name}"
        for param in cmd.params:
            if param.name not in ("help",) and getattr(param, "help", None) is None \
                    and param.param_type_name == "option":
                pytest.fail(f"{name} --{param.name} has no help text")


def _rotate(work: Path, *extra: str) -> list[str]:
    return ["rotate", "--journal", str(work / "j.journal"),
            "--secrets-out", str(work / "secrets.jsonl"), *extra]


def test_rotate_end_to_end_and_no_secret_anywhere(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(credentials=20, microtenants=2, seed=6)
    env = cli_env(s.url)
    proc = run_cli(_rotate(tmp_path, "--yes", "--log-format", "json", "-vv"), env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"rotated 30 in this run \(30 of 30 in all\)", proc.stdout)
    sink = tmp_path / "secrets.jsonl"
    assert stat.S_IMODE(sink.stat().st_mode) == 0o600
    secrets = [v for s_ in read_sink(sink).values()
               for v in (x.reveal() for x in (s_.password, s_.private_key, s_.passphrase) if x)]
    assert len(secrets) == 30
    secrets.append("sim-secret")  # the API key's secret is a secret too
    status = run_cli(["status", str(tmp_path / "j.journal")], env)
    report_json = run_cli(["report", str(tmp_path / "j.journal"), "--format", "json"], env)
    outputs = "\n".join([
        proc.stdout, proc.stderr, status.stdout, status.stderr, report_json.stdout,
        (tmp_path / "j.journal").read_text(),
        (tmp_path / "j.journal.report.csv").read_text(),
    ])
    for secret in secrets:
        assert secret not in outputs
        for line in secret.splitlines():
            if len(line) > 16:
                assert line not in outputs
    doc = orjson.loads(report_json.stdout)
    assert doc["counts"]["done"] == 30 and len(doc["items"]) == 30
    assert "done:" in status.stdout and "complete" in status.stdout


def test_no_terminal_and_no_yes_refuses(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    proc = run_cli(_rotate(tmp_path), cli_env(s.url))
    assert proc.returncode == 2
    assert "--yes" in proc.stderr
    assert not (tmp_path / "j.journal").exists()


def test_dry_run_sends_no_mutation(sim_thread, tmp_path: Path) -> None:
    import urllib.request

    s = sim_thread(credentials=5, seed=1)
    proc = run_cli(_rotate(tmp_path, "--dry-run", "--select", "type=SSH_KEY"), cli_env(s.url))
    assert proc.returncode == 0, proc.stderr
    assert "would be rotated" in proc.stdout
    stats = orjson.loads(urllib.request.urlopen(s.url + "/_sim/stats").read())
    assert stats["requests"]["write"] == 0
    assert not (tmp_path / "j.journal").exists()


def test_bad_api_key_exits_3(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    proc = run_cli(_rotate(tmp_path, "--yes"), cli_env(s.url, ZPA_CLIENT_SECRET="wrong-secret"))
    assert proc.returncode == 3, proc.stderr
    assert "wrong-secret" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args,env_extra,needle", [
    (["--cloud", "mars"], {"BULKCRED_BASE_URL": ""}, "unknown ZPA cloud"),
    (["--select", "colour=red"], {}, "unknown filter"),
    (["--select", "type=KEYS"], {}, "unknown credential type"),
    (["--write-rate", "ten"], {}, "cannot read the rate"),
    (["--microtenant", "abc"], {}, "microtenant"),
    (["--microtenant", "999"], {}, "does not exist"),
])
def test_usage_errors_exit_2(sim_thread, tmp_path: Path, args: list[str],
                             env_extra: dict[str, str], needle: str) -> None:
    s = sim_thread(seed=1)
    proc = run_cli(_rotate(tmp_path, "--yes", *args), cli_env(s.url, **env_extra))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle in proc.stderr


def test_mismatched_journal_is_refused(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    env = cli_env(s.url)
    assert run_cli(_rotate(tmp_path, "--yes", "--select", "type=USERNAME_PASSWORD"), env).returncode == 0
    proc = run_cli(_rotate(tmp_path, "--yes", "--select", "type=SSH_KEY"), env)
    assert proc.returncode == 2
    assert "j.journal" in proc.stderr
    # a dry run refuses it too, before reading the tenant: a runbook may gate on it
    dry = run_cli(_rotate(tmp_path, "--dry-run", "--select", "type=SSH_KEY"), env)
    assert dry.returncode == 2 and "belongs to a different job" in dry.stderr


def test_unwritable_output_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(["rotate", "--journal", str(tmp_path / "nope" / "j.journal"),
                    "--secrets-out", str(tmp_path / "s.jsonl"), "--yes"], cli_env("http://127.0.0.1:9"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli(["audit", "--output", str(tmp_path / "nope" / "a.html")], cli_env("http://127.0.0.1:9"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_json_log_format_is_one_object_a_line(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(credentials=5, seed=1)
    proc = run_cli(_rotate(tmp_path, "--yes", "--log-format", "json", "-v"), cli_env(s.url))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        doc = orjson.loads(line)
        assert {"ts", "level", "msg"} <= set(doc)


def test_long_server_pause_stops_resumably(sim_thread, tmp_path: Path) -> None:
    """Case 6: a 593 s retry-after beyond --max-wait stops the job (exit 3); it resumes."""
    s = sim_thread(credentials=10, seed=2, faults="throttle_burst=1,retry_after=593")
    env = cli_env(s.url)
    proc = run_cli(_rotate(tmp_path, "--yes", "--max-wait", "5"), env)
    assert proc.returncode == 3, proc.stderr
    assert "593" in proc.stderr
    import urllib.request

    req = urllib.request.Request(s.url + "/_sim/faults", data=orjson.dumps({"spec": ""}),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req).read()
    proc = run_cli(_rotate(tmp_path, "--yes", "--max-wait", "5"), env)
    assert proc.returncode == 0, proc.stderr
    state = replay(tmp_path / "j.journal")
    assert state.counts()["done"] == len(state.items) == 20


def test_python_dash_m_and_version() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bulkcred", "--version"], capture_output=True,
                         text=True, check=True)
    assert "bulkcred" in out.stdout


def test_a_report_never_replaces_the_secrets_file_or_journal(sim_thread, tmp_path: Path) -> None:
    """Critical: a report written over the secrets file would lose the new passwords."""
    s = sim_thread(credentials=3, seed=1)
    env = cli_env(s.url)
    sink = tmp_path / "secrets.jsonl"
    proc = run_cli(_rotate(tmp_path, "--yes", "--report", str(sink)), env)
    assert proc.returncode == 2 and "name the same file" in proc.stderr
    assert not sink.exists() and not (tmp_path / "j.journal").exists()
    assert run_cli(_rotate(tmp_path, "--yes"), env).returncode == 0
    before = sink.read_bytes()
    for out in (sink, tmp_path / "j.journal"):
        proc = run_cli(["report", str(tmp_path / "j.journal"), "--output", str(out)], env)
        assert proc.returncode == 2, proc.stderr
    assert sink.read_bytes() == before
    assert replay(tmp_path / "j.journal").counts()["done"] == 13


def test_a_refused_secrets_file_leaves_no_journal(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    sink = tmp_path / "secrets.jsonl"
    sink.write_text("")
    sink.chmod(0o644)
    proc = run_cli(_rotate(tmp_path, "--yes"), cli_env(s.url))
    assert proc.returncode == 2 and "chmod 600" in proc.stderr
    assert not (tmp_path / "j.journal").exists()
    import urllib.request

    stats = orjson.loads(urllib.request.urlopen(s.url + "/_sim/stats").read())
    assert stats["signins"] == 0  # refused before signing in


def test_ids_that_are_not_there_are_an_error(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    proc = run_cli(_rotate(tmp_path, "--yes", "--select", "id=259,999999"), cli_env(s.url))
    assert proc.returncode == 2 and "999999" in proc.stderr
    assert not (tmp_path / "j.journal").exists()


def test_an_empty_selection_leaves_no_files(sim_thread, tmp_path: Path) -> None:
    s = sim_thread(seed=1)
    proc = run_cli(_rotate(tmp_path, "--yes", "--select", "name=no-such-*"), cli_env(s.url))
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "j.journal").exists() and not (tmp_path / "secrets.jsonl").exists()


def test_a_resume_honours_the_pause_the_server_asked_for(sim_thread, tmp_path: Path) -> None:
    """Case 6, resumed at once: the journal remembers ZPA's 593 s, and a rerun that
    will not wait that long stops again without sending a request of that class."""
    import urllib.request

    s = sim_thread(credentials=10, seed=2, faults="throttle_burst=1@12,retry_after=593")
    env = cli_env(s.url)
    proc = run_cli(_rotate(tmp_path, "--yes", "--max-wait", "5"), env)
    assert proc.returncode == 3, proc.stderr
    state = replay(tmp_path / "j.journal")
    pause = [e for e in state.events if e["name"] == "server_pause"][-1]["data"]
    assert pause["until"] > state.events[-1]["at"] + 500
    before = orjson.loads(urllib.request.urlopen(s.url + "/_sim/stats").read())
    proc = run_cli(_rotate(tmp_path, "--yes", "--max-wait", "5"), env)
    assert proc.returncode == 3, proc.stderr
    after = orjson.loads(urllib.request.urlopen(s.url + "/_sim/stats").read())
    # whichever class was paused (an item's GET or its PUT), no item was written
    assert after["requests"]["write"] == before["requests"]["write"]
    assert after["throttled"] == before["throttled"]
