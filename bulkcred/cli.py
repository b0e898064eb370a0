"""The ``bulkcred`` command line: options and environment, progress, exit codes.

Every command is one library call plus the translation of its errors into a message
and an exit code (0 done, 1 some items failed, 2 usage/input, 3 auth/permission/
network, 130 interrupted). This is the only module that reads the environment.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import anyio
import click
import orjson

from . import __version__
from .config import DEFAULT_READ_RATE, DEFAULT_WRITE_RATE, Rate, cloud_named, oneapi_token_url
from .errors import (
    BulkcredError,
    JournalError,
    SecretSinkError,
    UsageError,
    ZPAError,
)
from .models import Secret, normalize_microtenant_id
from .runner import JobStopped
from .secrets import Redactor, RedactingFilter

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

T = TypeVar("T")
log = logging.getLogger("bulkcred")


# ---------------------------------------------------------------------------------------
# logging


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def _setup_logging(fmt: str, verbose: int, redactor: Redactor) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger("bulkcred")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root.propagate = False


# ---------------------------------------------------------------------------------------
# connection


@dataclass(frozen=True, slots=True)
class Connection:
    base_url: str
    customer_id: str
    auth: Any
    api_prefix: str
    read_rate: Rate
    write_rate: Rate
    concurrency: int | None
    max_wait: float | None

    def client(self) -> Any:
        from .client import ZPAClient
        from .retry import RetryPolicy

        return ZPAClient(
            base_url=self.base_url,
            customer_id=self.customer_id,
            auth=self.auth,
            api_prefix=self.api_prefix,
            read_rate=self.read_rate,
            write_rate=self.write_rate,
            retry=RetryPolicy(max_wait=self.max_wait),
        )


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        v = env.get(n)
        if v is not None and v.strip() != "":
            return v.strip()
    return None


def build_connection(opts: Mapping[str, Any], env: Mapping[str, str]) -> Connection:
    """Turn the connection flags and environment into a frozen Connection."""
    from .auth import LegacyApiKey, OneApiClientSecret, OneApiPrivateKey, StaticToken

    read_rate = Rate.parse(opts.get("read_rate") or _env(env, "BULKCRED_READ_RATE") or str(DEFAULT_READ_RATE))
    write_rate = Rate.parse(opts.get("write_rate") or _env(env, "BULKCRED_WRITE_RATE") or str(DEFAULT_WRITE_RATE))
    customer_id = opts.get("customer_id") or _env(env, "ZPA_CUSTOMER_ID", "ZSCALER_CUSTOMER_ID")
    if not customer_id:
        raise UsageError("no tenant given: pass --customer-id or set ZPA_CUSTOMER_ID")
    if not customer_id.isdigit():
        raise UsageError(f"--customer-id {customer_id!r}: a ZPA customer id is digits only")
    cloud_name = opts.get("cloud") or _env(env, "ZPA_CLOUD", "ZSCALER_CLOUD") or "PRODUCTION"
    cloud = cloud_named(cloud_name)
    base_url = opts.get("base_url") or _env(env, "BULKCRED_BASE_URL")

    token = _env(env, "BULKCRED_TOKEN")
    one_id = _env(env, "ZSCALER_CLIENT_ID")
    one_secret = _env(env, "ZSCALER_CLIENT_SECRET")
    one_key = _env(env, "ZSCALER_PRIVATE_KEY")
    legacy_id = _env(env, "ZPA_CLIENT_ID")
    legacy_secret = _env(env, "ZPA_CLIENT_SECRET")

    auth: Any
    prefix = ""
    if token:
        auth = StaticToken(Secret(token))
        base = base_url or cloud.legacy_base
    elif one_id and (one_secret or one_key):
        prefix = "/zpa"
        token_url = opts.get("token_url") or _env(env, "BULKCRED_TOKEN_URL")
        if not token_url:
            vanity = _env(env, "ZSCALER_VANITY_DOMAIN")
            if not vanity:
                raise UsageError(
                    "OneAPI credentials need ZSCALER_VANITY_DOMAIN or --token-url"
                )
            token_url = oneapi_token_url(vanity, cloud)
        if one_secret:
            auth = OneApiClientSecret(token_url=token_url, client_id=one_id,
                                      client_secret=Secret(one_secret))
        else:
            assert one_key is not None
            pem = one_key
            if not pem.lstrip().startswith("-----BEGIN"):
                try:
                    pem = Path(pem).expanduser().read_text(encoding="utf-8")
                except OSError as exc:
                    raise UsageError(
                        f"ZSCALER_PRIVATE_KEY names a file that cannot be read ({exc.strerror})"
                    ) from None
            auth = OneApiPrivateKey(token_url=token_url, client_id=one_id,
                                    private_key_pem=Secret(pem))
        base = base_url or cloud.oneapi_base
    elif legacy_id and legacy_secret:
        auth = LegacyApiKey(client_id=legacy_id, client_secret=Secret(legacy_secret))
        base = base_url or cloud.legacy_base
    else:
        raise UsageError(
            "no API credentials: set ZPA_CLIENT_ID and ZPA_CLIENT_SECRET (legacy API key),"
            " or ZSCALER_CLIENT_ID with ZSCALER_CLIENT_SECRET or ZSCALER_PRIVATE_KEY"
            " (OneAPI), or BULKCRED_TOKEN (a ready bearer token)"
        )
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--base-url {base!r}: give a URL starting with https://")
    concurrency = opts.get("concurrency")
    if concurrency is not None and concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    max_wait = opts.get("max_wait")
    return Connection(
        base_url=base.rstrip("/"),
        customer_id=customer_id,
        auth=auth,
        api_prefix=prefix,
        read_rate=read_rate,
        write_rate=write_rate,
        concurrency=concurrency,
        max_wait=None if max_wait is not None and max_wait <= 0 else max_wait,
    )


_SECRET_ENV = ("ZPA_CLIENT_SECRET", "ZSCALER_CLIENT_SECRET", "ZSCALER_PRIVATE_KEY", "BULKCRED_TOKEN")


def _learn_env_secrets(redactor: Redactor, env: Mapping[str, str]) -> None:
    """The API key's secret is masked in every log line like the credentials' own."""
    for name in _SECRET_ENV:
        value = _env(env, name)
        if value:
            redactor.add(value)


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--base-url", metavar="URL", help="API host (env BULKCRED_BASE_URL); wins over --cloud."),
        click.option("--cloud", metavar="NAME", help="PRODUCTION (default), ZPATWO, BETA, GOV, GOVUS, PREVIEW (env ZPA_CLOUD)."),
        click.option("--customer-id", metavar="ID", help="The tenant (env ZPA_CUSTOMER_ID)."),
        click.option("--token-url", metavar="URL", help="OneAPI token URL (env BULKCRED_TOKEN_URL); derived from ZSCALER_VANITY_DOMAIN otherwise."),
        click.option("--read-rate", metavar="N/Ts", help="GET pace, default 20/10s (env BULKCRED_READ_RATE)."),
        click.option("--write-rate", metavar="N/Ts", help="POST/PUT/DELETE pace, default 10/10s (env BULKCRED_WRITE_RATE)."),
        click.option("--concurrency", type=int, metavar="N", help="Most requests in flight (default: sized from rate x latency, capped at 64)."),
        click.option("--max-wait", type=float, default=900.0, show_default=True, metavar="SECONDS",
                     help="Stop (resumably, exit 3) if the server asks for a longer pause; 0 waits forever."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                     help="Logs go to stderr; json is one object a line."),
        click.option("-v", "--verbose", count=True, help="More log output (-vv for debug)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


# ---------------------------------------------------------------------------------------
# running


def _run(coro_fn: Callable[[], Awaitable[int]]) -> int:
    """Run a job under anyio; SIGINT/SIGTERM cancel it cleanly (exit 130).

    The job's own exception is re-raised as itself (not wrapped in an ExceptionGroup by
    the task group) so that the exit-code mapping sees it.
    """
    interrupted = False
    failure: list[BaseException] = []

    async def main() -> int:
        nonlocal interrupted
        code = EXIT_INTERRUPTED

        async def job(tg: Any) -> None:
            nonlocal code
            try:
                code = await coro_fn()
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the group
                failure.append(exc)
            finally:
                tg.cancel_scope.cancel()

        async def watch(tg: Any) -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg)
            tg.start_soon(job, tg)
        return EXIT_INTERRUPTED if interrupted else code

    code = anyio.run(main)
    if failure and not interrupted:
        raise failure[0]
    return code


def _fail(message: str, code: int) -> int:
    click.echo(f"bulkcred: {message}", err=True)
    return code


def handle_errors(f: Callable[..., int]) -> Callable[..., None]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = f(*args, **kwargs)
        except UsageError as exc:
            code = _fail(str(exc), EXIT_USAGE)
        except (JournalError, SecretSinkError) as exc:
            code = _fail(str(exc), EXIT_USAGE)
        except JobStopped as exc:
            code = _fail(
                f"stopped: {exc.cause}. Nothing is lost: run the same command again to resume.",
                EXIT_STOPPED,
            )
        except ZPAError as exc:
            code = _fail(f"{exc}. Nothing was changed by this step; fix it and run again.",
                         EXIT_STOPPED)
        except BulkcredError as exc:
            code = _fail(str(exc), EXIT_USAGE)
        except KeyboardInterrupt:
            code = _fail("interrupted; the journal is flushed: run the same command again to resume.",
                         EXIT_INTERRUPTED)
        if code == EXIT_INTERRUPTED:
            click.echo("bulkcred: interrupted; the journal is flushed: run the same command again"
                       " to resume.", err=True)
        sys.exit(code)

    return wrapper


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(
            "refusing to change the tenant without a terminal to confirm on; pass --yes"
        )
    return click.confirm(question, default=False, err=True)


# ---------------------------------------------------------------------------------------
# commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bulkcred")
def cli() -> None:
    """Bulk jobs for the privileged credentials of a ZPA tenant: rotate, import, migrate,
    audit, paced to ZPA's rate limits and resumable from a checkpoint journal.

    Credentials come from the environment only: ZPA_CLIENT_ID/ZPA_CLIENT_SECRET (legacy
    API key), ZSCALER_CLIENT_ID with ZSCALER_CLIENT_SECRET or ZSCALER_PRIVATE_KEY
    (OneAPI), or BULKCRED_TOKEN. Try `bulkcred demo` first: it needs no tenant.
    """


@cli.command()
@connection_options
@click.option("--journal", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint journal; the same path resumes the job.")
@click.option("--secrets-out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Secrets file (mode 0600, JSON lines, appended); the last line for an id is its secret.")
@click.option("--select", "select", multiple=True, metavar="FILTER",
              help="name=GLOB, type=T, id=1,2, ids-from=FILE, older-than=90d; repeat to AND them.")
@click.option("--microtenant", metavar="ID", help="Only this microtenant (0 = Default); default: the whole tenant.")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of new secrets (id or name+microtenantId; password, privateKey or privateKeyFile).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the per-item report (default: JOURNAL.report.csv).")
@click.option("--retry-failed", is_flag=True, help="On resume, try the items that failed before again.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def rotate(journal: Path, secrets_out: Path, select: tuple[str, ...], microtenant: str | None,
           from_file: Path | None, report: Path | None, retry_failed: bool, dry_run: bool,
           yes: bool, log_format: str, verbose: int, **conn: Any) -> int:
    """Rotate the passwords and SSH keys of the selected credentials.

    Each new secret is appended to --secrets-out and fsynced before ZPA is changed; a
    final listing confirms every lastCredentialResetTime moved. Run the same command
    again to resume after any crash.
    """
    from .jobs.rotate import RotateOptions
    from .jobs.select import parse_selection

    redactor = Redactor()
    _learn_env_secrets(redactor, os.environ)
    _setup_logging(log_format, verbose, redactor)
    if microtenant is not None:
        try:
            microtenant = normalize_microtenant_id(microtenant)
        except ValueError as exc:
            raise UsageError(f"--microtenant: {exc}") from None
    connection = build_connection(conn, os.environ)
    opts = RotateOptions(
        journal=journal,
        secrets_out=secrets_out,
        selection=parse_selection(select),
        microtenant=microtenant,
        from_file=from_file,
        retry_failed=retry_failed,
        report=report or journal.with_name(journal.name + ".report.csv"),
    )
    return _run(lambda: _rotate_main(connection, opts, dry_run=dry_run, yes=yes,
                                     redactor=redactor))


async def _rotate_main(connection: Connection, opts: Any, *, dry_run: bool, yes: bool,
                       redactor: Redactor) -> int:
    from .jobs.common import JobContext
    from .jobs.rotate import plan_rotation, rotate as rotate_job
    from .progress import JobProgress

    async with connection.client() as client:
        ctx = JobContext(client=client, base_url=connection.base_url,
                         customer_id=connection.customer_id,
                         concurrency=connection.concurrency)
        if dry_run:
            plan = await plan_rotation(ctx, opts)
            _print_rotate_plan(plan.credentials, client.write_rate)
            return EXIT_OK

        def confirm(count: int, resumed: bool) -> bool:
            what = (f"Resume the rotation of {count} remaining credentials" if resumed
                    else f"Rotate {count} credentials")
            return _confirm(f"{what} in tenant {connection.customer_id}?", yes)

        progress = JobProgress("rotate", per_item_seconds=lambda: 1 / client.write_rate.per_second)
        client.on_pause(progress.paused)
        result = await rotate_job(ctx, opts, progress=progress, redactor=redactor, confirm=confirm)
        if result is None:
            click.echo("Nothing was changed.", err=True)
            return EXIT_OK
        stats = client.stats()
        click.echo(
            f"rotated {result.done} of {result.total} credentials"
            f"{' (resumed)' if result.resumed else ''}; {result.failed} failed,"
            f" {result.uncertain} unfinished; {stats.throttled} throttled responses"
        )
        if result.unconfirmed:
            click.echo(f"{len(result.unconfirmed)} not confirmed by the final listing:"
                       f" {', '.join(result.unconfirmed[:10])}")
        click.echo(f"journal: {result.journal}")
        click.echo(f"secrets: {result.secrets_out}")
        if result.report:
            click.echo(f"report:  {result.report}")
        return EXIT_OK if result.ok else EXIT_FAILED


def _print_rotate_plan(creds: list[Any], rate: Rate) -> None:
    by_type: dict[str, int] = {}
    for c in creds:
        by_type[c.credential_type.value] = by_type.get(c.credential_type.value, 0) + 1
    click.echo(f"dry run: {len(creds)} credentials would be rotated"
               + (" (" + ", ".join(f"{n} {t}" for t, n in sorted(by_type.items())) + ")" if creds else ""))
    eta = len(creds) / rate.per_second
    click.echo(f"at the write limit of {rate} that takes at least {eta:.0f} s")
    for c in creds[:20]:
        click.echo(f"  {c.id:>20}  {c.credential_type.value:<17}  mt {c.scope:<20}  {c.display_name}")
    if len(creds) > 20:
        click.echo(f"  ... and {len(creds) - 20} more")
    click.echo("nothing was sent.")


@cli.command()
@click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@handle_errors
def status(journal: Path) -> int:
    """Show how far the job in JOURNAL got and what is left."""
    from .journal import replay
    from .report import status_text

    click.echo(status_text(replay(journal), journal))
    return EXIT_OK


@cli.command()
@click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv (one row an item) or json (counts and items).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of stdout.")
@handle_errors
def report(journal: Path, fmt: str, output: Path | None) -> int:
    """Per-item completion report: id, name, status, HTTP status, error id, reason."""
    from .journal import replay
    from .report import render_report, write_report

    state = replay(journal)
    if output:
        write_report(state, output, fmt)
        click.echo(f"report: {output}", err=True)
    else:
        sys.stdout.buffer.write(render_report(state, fmt))
        sys.stdout.flush()
    return EXIT_OK


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", default=0, type=int, show_default=True, help="0 picks a free port.")
@click.option("--credentials", default=0, type=int, show_default=True, help="Generated credentials besides the article's examples.")
@click.option("--microtenants", default=2, type=int, show_default=True, help="Generated microtenants besides Default.")
@click.option("--seed", default=0, type=int, show_default=True, help="Same seed, same tenant and faults.")
@click.option("--read-rate", default="20/10s", show_default=True, metavar="N/Ts", help="GET limit (ZPA's is 20/10s).")
@click.option("--write-rate", default="10/10s", show_default=True, metavar="N/Ts", help="POST/PUT/DELETE limit (ZPA's is 10/10s).")
@click.option("--token-ttl", default=3600.0, type=float, show_default=True, metavar="S", help="Token lifetime in seconds.")
@click.option("--faults", default="", metavar="SPEC", help="e.g. 5xx=0.05,latency=20ms,409=0.02,lost=0.01,seed=1")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), help="Load/save the tenant here.")
@click.option("--limit-mode", type=click.Choice(["sliding", "fixed"]), default="sliding", show_default=True,
              help="sliding: no more than N in any window (strict); fixed: ZPA's window opened by the first call.")
@click.option("--policy-rules", default=0, type=int, show_default=True, help="Generated credential policy rules.")
@click.option("--client-id", default="sim-client", show_default=True, help="The API key's client id.")
@click.option("--client-secret", default="sim-secret", show_default=True, help="The API key's secret (a test value).")
@click.option("--customer-id", default="216196257331281920", show_default=True, help="The tenant id.")
@handle_errors
def sim(**kw: Any) -> int:
    """Serve a ZPA simulator on loopback, for tests, demos and rehearsals.

    Prints `bulkcred sim listening on http://HOST:PORT` first, then serves until
    SIGINT/SIGTERM. /_sim/stats, /_sim/credentials and /_sim/requests are test endpoints.
    """
    from .sim import SimConfig, serve

    try:
        cfg = SimConfig(**{k: v for k, v in kw.items() if v is not None})
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def announce(url: str) -> None:
        click.echo(f"bulkcred sim listening on {url}")
        sys.stdout.flush()

    try:
        anyio.run(serve, cfg, announce)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


@cli.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bulkcred-demo"), show_default=True,
              help="Where the demo's journal, secrets file and report go.")
@click.option("--credentials", default=40, type=int, show_default=True,
              help="Generated credentials besides the article's examples.")
@handle_errors
def demo(workdir: Path, credentials: int) -> int:
    """Rotate a simulated tenant end to end, with a crash and a resume, offline.

    Starts the simulator on a free loopback port, runs `bulkcred rotate`, kills it
    halfway with SIGKILL, runs the same command again, and proves through the
    simulator that every credential holds the secret the secrets file recorded last.
    """
    from .demo import run_demo

    return run_demo(workdir, credentials=credentials)


def main() -> None:
    cli(prog_name="bulkcred")


if __name__ == "__main__":  # pragma: no cover
    main()
