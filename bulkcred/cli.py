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
import time
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
from .secrets import RedactingFilter, Redactor
from .text import plural

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
    from .progress import set_line_format

    set_line_format(fmt)
    global _JSON_LINES
    _JSON_LINES = fmt == "json"


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
    if max_wait is not None and max_wait < 0:
        raise UsageError("--max-wait is a number of seconds, 0 or more (0 waits forever)")
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
            # SIGHUP: the terminal closed under a running job; stop it cleanly too
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM,
                                            signal.SIGHUP) as signals:
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


#: set by --log-format json: messages on stderr are JSON objects like the logs
_JSON_LINES = False


def _err(message: str, level: str = "info") -> None:
    """A message for the operator on stderr (one JSON object with --log-format json)."""
    if _JSON_LINES:
        click.echo(orjson.dumps({"ts": round(time.time(), 3), "level": level,
                                 "logger": "bulkcred", "msg": message}).decode(), err=True)
    else:
        click.echo(message, err=True)


def _fail(message: str, code: int) -> int:
    _err(f"bulkcred: {message}", "error")
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
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            code = _fail(f"{where}{exc.strerror or exc}. If a job was running, its journal"
                         " is consistent: fix this and run the same command again.",
                         EXIT_USAGE)
        except KeyboardInterrupt:
            code = _fail("interrupted; the journal is flushed: run the same command again to resume.",
                         EXIT_INTERRUPTED)
        if code == EXIT_INTERRUPTED:
            _err("bulkcred: interrupted; the journal is flushed: run the same command again"
                 " to resume.", "warning")
        sys.exit(code)

    return wrapper


def _start_logging(log_format: str, verbose: int) -> Redactor:
    """Logging to stderr that masks every secret the job learns (and the API key's)."""
    redactor = Redactor()
    _learn_env_secrets(redactor, os.environ)
    _setup_logging(log_format, verbose, redactor)
    return redactor


def _context(connection: Connection, client: Any) -> Any:
    from .jobs.common import JobContext

    return JobContext(client=client, base_url=connection.base_url,
                      customer_id=connection.customer_id, concurrency=connection.concurrency)


def _progress(label: str, client: Any) -> Any:
    """A progress display whose ETA is the write limit's pace, told of server pauses."""
    from .progress import JobProgress

    progress = JobProgress(label, per_item_seconds=lambda: 1 / client.write_rate.per_second)
    client.on_pause(progress.paused)
    return progress


def _dry_run_of_resume(journal: Path, header: Callable[[Any], Any]) -> bool:
    """For ``--dry-run`` on a journal that already holds a plan: say what is left.

    A resume finishes the journal's plan, not a fresh one, so that is the plan to show;
    a journal of another job is refused here just as the real run would refuse it.
    """
    from .jobs.common import planned_state

    state = planned_state(journal, header)
    if state is None:
        return False
    counts = ", ".join(f"{n} {st}" for st, n in state.counts().items() if n)
    click.echo(f"dry run: the journal {journal} already holds this job ({counts});"
               " running the command again without --dry-run resumes it.")
    click.echo("nothing was sent.")
    return True


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


class _WritableFile(click.Path):
    """A file the command will write: its folder must exist and be writable now, not
    found out after a job of hours (exit 2, like any usage error)."""

    name = "file"

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        path = Path(super().convert(value, param, ctx)).expanduser()
        folder = path.absolute().parent
        if not folder.is_dir():
            self.fail(f"the folder {folder} does not exist; create it first", param, ctx)
        if not os.access(folder, os.W_OK | os.X_OK):
            self.fail(f"the folder {folder} is not writable", param, ctx)
        if path.exists() and not os.access(path, os.W_OK):
            self.fail(f"{path} exists and is not writable", param, ctx)
        return path


WRITABLE_FILE = _WritableFile()


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
@click.option("--journal", required=True, type=WRITABLE_FILE,
              help="Checkpoint journal; the same path resumes the job.")
@click.option("--secrets-out", required=True, type=WRITABLE_FILE,
              help="Secrets file (mode 0600, JSON lines, appended); the last line for an id is its secret.")
@click.option("--select", "select", multiple=True, metavar="FILTER",
              help="name=GLOB, type=T, id=1,2, ids-from=FILE, older-than=90d; repeat to AND them.")
@click.option("--microtenant", metavar="ID", help="Only this microtenant (0 = Default); default: the whole tenant.")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of new secrets (id or name+microtenantId; password, privateKey or privateKeyFile).")
@click.option("--report", type=WRITABLE_FILE,
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

    redactor = _start_logging(log_format, verbose)
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
    from .jobs.rotate import job_header, plan_rotation
    from .jobs.rotate import rotate as rotate_job

    async with connection.client() as client:
        ctx = _context(connection, client)
        if dry_run:
            if _dry_run_of_resume(opts.journal, lambda _: job_header(ctx, opts)):
                return EXIT_OK
            plan = await plan_rotation(ctx, opts)
            _print_rotate_plan(plan.credentials, client.write_rate)
            return EXIT_OK

        def confirm(count: int, resumed: bool) -> bool:
            what = (f"Resume the rotation: {plural(count, 'credential')} left" if resumed
                    else f"Rotate {plural(count, 'credential')}")
            return _confirm(f"{what} in tenant {connection.customer_id} at"
                            f" {connection.base_url}?", yes)

        progress = _progress("rotate", client)
        result = await rotate_job(ctx, opts, progress=progress, redactor=redactor, confirm=confirm)
        if result is None:
            click.echo("Nothing was changed.", err=True)
            return EXIT_OK
        stats = client.stats()
        click.echo(
            f"rotated {result.summary.done} in this run ({result.done} of {result.total} in"
            f" all{', resumed' if result.resumed else ''}); {result.failed} failed,"
            f" {result.uncertain} unfinished; {plural(stats.throttled, 'throttled response')},"
            f" {plural(stats.pauses, 'server pause')}"
        )
        if result.unconfirmed:
            click.echo(f"{len(result.unconfirmed)} not confirmed by the final listing:"
                       f" {', '.join(result.unconfirmed[:10])}")
        click.echo(f"journal: {result.journal}")
        click.echo(f"secrets: {result.secrets_out}")
        if result.report:
            click.echo(f"report:  {result.report}")
        return EXIT_OK if result.ok else EXIT_FAILED


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    h, rem = divmod(s, 3600)
    return f"{h} h {rem // 60} min" if h else f"{rem // 60} min {rem % 60} s"


def _print_rotate_plan(creds: list[Any], rate: Rate) -> None:
    by_type: dict[str, int] = {}
    for c in creds:
        by_type[c.credential_type.value] = by_type.get(c.credential_type.value, 0) + 1
    click.echo(f"dry run: {plural(len(creds), 'credential')} would be rotated"
               + (" (" + ", ".join(f"{n} {t}" for t, n in sorted(by_type.items())) + ")" if creds else ""))
    if creds:
        eta = len(creds) / rate.per_second
        click.echo(f"at the write limit of {rate} that takes at least {_duration(eta)}")
    for c in creds[:20]:
        click.echo(f"  {c.id:>20}  {c.credential_type.value:<17}  mt {c.scope:<20}  {c.display_name}")
    if len(creds) > 20:
        click.echo(f"  ... and {len(creds) - 20} more")
    click.echo("nothing was sent.")


def _microtenant_arg(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        return normalize_microtenant_id(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


@cli.command()
@connection_options
@click.option("--to", "target", required=True, metavar="MT",
              help="The target microtenant id (0 = Default).")
@click.option("--from", "source", metavar="MT",
              help="The source microtenant id (0 = Default); default: wherever each selected"
                   " credential is now.")
@click.option("--journal", required=True, type=WRITABLE_FILE,
              help="Checkpoint journal; the same path resumes the job.")
@click.option("--select", "select", multiple=True, metavar="FILTER",
              help="name=GLOB, type=T, id=1,2, ids-from=FILE, older-than=90d; repeat to AND them.")
@click.option("--report", type=WRITABLE_FILE,
              help="Where to write the per-item report (default: JOURNAL.report.csv).")
@click.option("--retry-failed", is_flag=True,
              help="On resume, try the items that failed before again (after detaching rules).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def migrate(target: str, source: str | None, journal: Path, select: tuple[str, ...],
            report: Path | None, retry_failed: bool, dry_run: bool, yes: bool, log_format: str,
            verbose: int, **conn: Any) -> int:
    """Move the selected credentials to another microtenant.

    The target is checked before anything is sent, and the plan names the credentials
    that credential policy rules inject (ZPA refuses to move those until the rules are
    detached). Each move is journaled; run the same command again to resume: a move
    whose answer was lost is settled by reading where the credential is, so nothing is
    moved twice. A final listing of the target confirms every move.
    """
    from .jobs.migrate import MigrateOptions
    from .jobs.select import parse_selection

    _start_logging(log_format, verbose)
    to = _microtenant_arg(target, "--to")
    assert to is not None
    opts = MigrateOptions(
        journal=journal,
        target=to,
        source=_microtenant_arg(source, "--from"),
        selection=parse_selection(select),
        retry_failed=retry_failed,
        report=report or journal.with_name(journal.name + ".report.csv"),
    )
    connection = build_connection(conn, os.environ)
    return _run(lambda: _migrate_main(connection, opts, dry_run=dry_run, yes=yes))


async def _migrate_main(connection: Connection, opts: Any, *, dry_run: bool, yes: bool) -> int:
    from .jobs.migrate import job_header, plan_migration
    from .jobs.migrate import migrate as migrate_job

    async with connection.client() as client:
        ctx = _context(connection, client)
        if dry_run:
            if not _dry_run_of_resume(opts.journal, lambda _: job_header(ctx, opts)):
                _print_migrate_plan(await plan_migration(ctx, opts), client.write_rate,
                                    dry=True)
                click.echo("nothing was sent.")
            return EXIT_OK

        def confirm(count: int, resumed: bool, plan: Any) -> bool:
            if plan is not None:
                _print_migrate_plan(plan, client.write_rate, dry=False)
            if count == 0:
                return True
            what = (f"Resume the migration of {count} remaining credentials" if resumed
                    else f"Move {count} credentials to microtenant {opts.target}")
            return _confirm(f"{what} in tenant {connection.customer_id}?", yes)

        progress = _progress("migrate", client)
        result = await migrate_job(ctx, opts, progress=progress, confirm=confirm)
        if result is None:
            click.echo("Nothing was changed.", err=True)
            return EXIT_OK
        stats = client.stats()
        click.echo(
            f"moved {result.done} of {result.total} credentials to {result.target.name}"
            f" ({result.target.id}){' (resumed)' if result.resumed else ''}; {result.failed}"
            f" failed, {result.uncertain} unfinished; {stats.throttled} throttled responses"
        )
        target = f"{result.target.name} ({result.target.id})"
        if result.refused:
            click.echo(f"{len(result.refused)} refused because credential policy rules inject"
                       " them (detach the rules, then run again with --retry-failed):")
            _echo_first(_migrate_rule_lines(result.refused))
        if result.clashes:
            click.echo(f"{len(result.clashes)} refused because a credential of the same name"
                       f" exists in {target} (rename one of the two, then run again with"
                       " --retry-failed):")
            _echo_first(_migrate_clash_lines(result.clashes))
        if result.unconfirmed:
            click.echo(f"{len(result.unconfirmed)} that the journal records as moved are not"
                       f" in {target} by the final listing (run again with --retry-failed to"
                       " move them again):")
            by_place: dict[str, list[str]] = {}
            for cid, mt in result.unconfirmed.items():
                place = (f"are in {mt.name} ({mt.id}) again, where they were moved from"
                         if mt is not None else
                         "are in neither the target nor their source (moved or deleted?)")
                by_place.setdefault(place, []).append(cid)
            for place, ids in by_place.items():
                more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
                click.echo(f"  {len(ids)} {place}: {', '.join(ids[:10])}{more}")
        click.echo(f"journal: {result.journal}")
        if result.report:
            click.echo(f"report:  {result.report}")
        return EXIT_OK if result.ok else EXIT_FAILED


def _echo_first(lines: list[str], limit: int = 20) -> None:
    """The first ``limit`` lines of a list, and how many more there are."""
    for line in lines[:limit]:
        click.echo(line)
    if len(lines) > limit:
        click.echo(f"  ... and {len(lines) - limit} more")


def _migrate_rule_lines(refused: Mapping[str, list[str]]) -> list[str]:
    return [f"  {cid:>12}  rules: {', '.join(rules)}" for cid, rules in refused.items()]


def _migrate_clash_lines(clashes: Mapping[str, Any]) -> list[str]:
    return [f"  {cid:>12}  {c.name}" + (f"  (same name as {c.other})" if c.other else "")
            for cid, c in clashes.items()]


def _print_migrate_plan(plan: Any, rate: Rate, *, dry: bool) -> None:
    creds, target = plan.credentials, plan.target
    by_source: dict[str, int] = {}
    for c in creds:
        by_source[c.scope] = by_source.get(c.scope, 0) + 1
    names = {m.id: m.name for m in plan.sources}
    froms = {mt: f"{names.get(mt, mt)} ({mt})" for mt in sorted(by_source)}
    if len(froms) == 1:
        whence = f" from {next(iter(froms.values()))}"
    elif froms:
        # a count per source only when there are several: with one it repeats the total
        whence = ": " + ", ".join(f"{by_source[mt]} from {f}" for mt, f in froms.items())
    else:
        whence = ""
    click.echo(f"{'dry run: ' if dry else ''}{len(creds)} credentials"
               f" {'would move' if dry else 'to move'} to {target.name} ({target.id})"
               + whence)
    click.echo(f"at the write limit of {rate} that takes at least"
               f" {len(creds) / rate.per_second:.0f} s")
    if not target.is_default and any(mt != "0" for mt in by_source):
        click.echo("note: ZPA documents moves between a microtenant and Default; a direct move"
                   " between two microtenants may be refused")
    if plan.rules_problem or plan.blocked or plan.clashes:
        at_least = "at least " if plan.rules_problem else ""
        click.echo(f"\nexpected refusals: {at_least}{plan.refusals} of the {len(creds)} (they"
                   " are sent"
                   " all the same: fix the cause first, or afterwards and run again with"
                   " --retry-failed)")
        if plan.rules_problem:
            click.echo(f"  {plan.rules_problem}: refusals by rules cannot be predicted")
        elif plan.blocked:
            click.echo(f"  {len(plan.blocked)} injected by credential policy rules; ZPA refuses"
                       " to move those until the rules are detached:")
            _echo_first(_migrate_rule_lines(plan.blocked))
        if plan.clashes:
            click.echo(f"  {len(plan.clashes)} will be refused: a credential of the same name"
                       f" exists in the target, {target.name} ({target.id}); rename one of"
                       " the two:")
            _echo_first(_migrate_clash_lines(plan.clashes))
    if dry:
        click.echo(f"\ncredentials in the plan ({len(creds)}):")
        _echo_first([f"  {c.id:>12}  {c.credential_type.value:<17}  from {c.scope:<19}"
                     f"  {c.display_name}" for c in creds])


def _write_output(output: Path | None, data: bytes) -> None:
    """To stdout, or to ``output`` through a temporary file (never a half-written one)."""
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)


@cli.command()
@connection_options
@click.option("--stale-days", type=click.IntRange(min=0), default=90, show_default=True,
              help="A credential whose last reset is older than this many days is stale.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "html"]),
              default="table", show_default=True,
              help="table (terminal), csv (a row a finding), json (counts and findings), html"
                   " (one self-contained file with charts).")
@click.option("--output", type=WRITABLE_FILE,
              help="Write here instead of stdout.")
@click.option("--microtenant", metavar="ID",
              help="Only this microtenant (0 = Default); default: the whole tenant.")
@handle_errors
def audit(stale_days: int, fmt: str, output: Path | None, microtenant: str | None,
          log_format: str, verbose: int, **conn: Any) -> int:
    """Audit every credential of every microtenant (read-only).

    Counts by type and microtenant; finds stale, never-rotated, duplicate-named,
    unsafe-named and unused credentials, and the credential policy rules that use each
    one. Every page is read at 500 a page, in parallel under the read limit.
    """
    from .jobs.audit import AuditOptions

    _start_logging(log_format, verbose)
    opts = AuditOptions(stale_days=stale_days,
                        microtenant=_microtenant_arg(microtenant, "--microtenant"))
    connection = build_connection(conn, os.environ)
    return _run(lambda: _audit_main(connection, opts, fmt=fmt, output=output))


async def _audit_main(connection: Connection, opts: Any, *, fmt: str,
                      output: Path | None) -> int:
    import io

    from rich.console import Console

    from .jobs.audit import audit as audit_job
    from .jobs.audit import render_csv, render_json, table_view
    from .jobs.audit_html import render_html
    from .progress import ReadProgress

    async with connection.client() as client:
        ctx = _context(connection, client)
        progress = ReadProgress("audit")
        client.on_pause(progress.paused)
        try:
            result = await audit_job(ctx, opts, progress=progress)
        finally:
            progress.finish()
    if fmt == "table" and output is None:
        # piped, the table gets room rather than the 80 columns rich assumes
        (Console() if sys.stdout.isatty() else Console(width=160)).print(table_view(result))
    elif fmt == "table":
        buf = io.StringIO()
        Console(file=buf, width=160, color_system=None).print(table_view(result))
        _write_output(output, buf.getvalue().encode("utf-8"))
    else:
        data = {"json": lambda: render_json(result), "csv": lambda: render_csv(result).encode(),
                "html": lambda: render_html(result).encode()}[fmt]()
        _write_output(output, data)
    findings = len(result.findings)
    click.echo(f"audit: {result.total} credentials in {len(result.microtenants)} microtenants,"
               f" {findings} findings" + (f"; written to {output}" if output else ""), err=True)
    return EXIT_OK


@cli.command()
@connection_options
@click.option("--output", required=True, type=WRITABLE_FILE,
              help="The CSV to write (put in place once every page is read).")
@click.option("--microtenant", metavar="ID",
              help="Only this microtenant (0 = Default); default: the whole tenant.")
@click.option("--select", "select", multiple=True, metavar="FILTER",
              help="name=GLOB, type=T, id=1,2, ids-from=FILE, older-than=90d; repeat to AND them.")
@handle_errors
def export(output: Path, microtenant: str | None, select: tuple[str, ...], log_format: str,
           verbose: int, **conn: Any) -> int:
    """Export every credential's metadata as a CSV that `bulkcred import` reads.

    Columns: name, credentialType, userName, password, privateKey, privateKeyFile,
    passphrase, userDomain, description, microtenantId. The secret columns are empty
    (ZPA returns no secret): fill them in, and export -> edit -> import moves
    credentials between tenants.

    The file (UTF-8 with a BOM) is data for import, not for a spreadsheet's formulas:
    cells are written exactly as ZPA holds them, so a name starting with = + - or @ is
    a formula to a spreadsheet. Edit it as text, or keep formulas off; `audit --format
    csv` is the one made safe to open in a spreadsheet.
    """
    from .jobs.export import ExportOptions
    from .jobs.select import parse_selection

    _start_logging(log_format, verbose)
    opts = ExportOptions(output=output, microtenant=_microtenant_arg(microtenant, "--microtenant"),
                         selection=parse_selection(select))
    connection = build_connection(conn, os.environ)
    return _run(lambda: _export_main(connection, opts))


async def _export_main(connection: Connection, opts: Any) -> int:
    from .jobs.export import export as export_job
    from .progress import ReadProgress

    async with connection.client() as client:
        ctx = _context(connection, client)
        progress = ReadProgress("export")
        client.on_pause(progress.paused)
        try:
            result = await export_job(ctx, opts, progress=progress)
        finally:
            progress.finish()
    per_mt = ", ".join(f"{name}: {n}" for name, n in result.by_microtenant.items())
    click.echo(f"exported {result.rows} credentials ({per_mt}) to {result.output}")
    return EXIT_OK


@cli.command("import")
@connection_options
@click.argument("csv_file", metavar="CSV", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--journal", required=True, type=WRITABLE_FILE,
              help="Checkpoint journal; the same path (and the same CSV) resumes the job.")
@click.option("--on-existing", type=click.Choice(["fail", "skip", "update"]), default="fail",
              show_default=True,
              help="A row whose name exists in its microtenant: stop before sending anything,"
                   " leave the credential as it is, or PUT the row over it.")
@click.option("--skip-invalid", is_flag=True,
              help="Import the valid rows; the invalid ones go to --reject-file (exit 1).")
@click.option("--reject-file", type=WRITABLE_FILE,
              help="Where --skip-invalid writes the invalid rows, secrets masked"
                   " (default: JOURNAL.rejects.csv).")
@click.option("--microtenant", metavar="ID",
              help="The microtenant of rows whose microtenantId is empty (default: Default).")
@click.option("--report", type=WRITABLE_FILE,
              help="Where to write the per-row report (default: JOURNAL.report.csv).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (create, update, skip, reject); send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def import_(csv_file: Path, journal: Path, on_existing: str, skip_invalid: bool,
            reject_file: Path | None, microtenant: str | None, report: Path | None,
            dry_run: bool, yes: bool, log_format: str, verbose: int, **conn: Any) -> int:
    """Create credentials from a CSV, every row checked before a single request.

    Columns: name, credentialType, userName, password, privateKey, privateKeyFile (a
    path relative to the CSV), passphrase, userDomain, description, microtenantId. A file
    with an invalid row sends nothing (exit 2) unless --skip-invalid. A create whose
    answer was lost is looked up by name, never sent twice; run the same command again
    to resume after any crash.
    """
    from .jobs.importcsv import ImportOptions, load_import_csv

    redactor = _start_logging(log_format, verbose)
    microtenant = _microtenant_arg(microtenant, "--microtenant")
    connection = build_connection(conn, os.environ)
    source = load_import_csv(csv_file, microtenant=microtenant)
    redactor.add(*source.secrets())
    if source.rejects and not skip_invalid and not dry_run:
        raise UsageError(source.problems_text())  # before any connection is made
    opts = ImportOptions(
        csv=csv_file,
        journal=journal,
        on_existing=on_existing,  # type: ignore[arg-type]  # click.Choice checked it
        skip_invalid=skip_invalid,
        reject_file=(reject_file or journal.with_name(journal.name + ".rejects.csv"))
        if skip_invalid else None,
        microtenant=microtenant,
        report=report or journal.with_name(journal.name + ".report.csv"),
    )
    return _run(lambda: _import_main(connection, opts, source, dry_run=dry_run, yes=yes,
                                     redactor=redactor))


async def _import_main(connection: Connection, opts: Any, source: Any, *, dry_run: bool,
                       yes: bool, redactor: Redactor) -> int:
    from .jobs.importcsv import import_credentials, job_header, plan_import

    async with connection.client() as client:
        ctx = _context(connection, client)
        if dry_run:
            if _dry_run_of_resume(opts.journal,
                                  lambda prior: job_header(ctx, opts, source, prior)):
                return EXIT_OK
            plan = await plan_import(ctx, source, opts)
            _print_import_plan(plan, opts, client.write_rate, redactor)
            refused = plan.rejects and not opts.skip_invalid
            if refused:
                click.echo("bulkcred: the import would send nothing:"
                           f" {plural(len(plan.rejects), 'invalid row')} (listed above); fix"
                           " them, or pass --skip-invalid to import the valid rows", err=True)
            if plan.refused:
                click.echo(f"bulkcred: {redactor.redact(plan.refused_text())}", err=True)
            return EXIT_USAGE if refused or plan.refused else EXIT_OK

        def confirm(plan: Any, writes: int) -> bool:
            if plan is None:
                question = f"Resume the import: {plural(writes, 'row')} left to send"
            else:
                click.echo(_import_summary(plan, opts), err=True)
                question = (f"Create {len(plan.of('create'))} and update"
                            f" {len(plan.of('update'))} credentials")
            return _confirm(f"{question} in tenant {connection.customer_id}?", yes)

        progress = _progress("import", client)
        result = await import_credentials(ctx, opts, source, progress=progress,
                                          redactor=redactor, confirm=confirm)
        if result is None:
            click.echo("Nothing was changed.", err=True)
            return EXIT_OK
        click.echo(
            f"imported {opts.csv}{' (resumed)' if result.resumed else ''}: {result.created}"
            f" created, {result.updated} updated, {result.skipped} skipped, {result.rejected}"
            f" rejected, {result.failed} failed, {result.unfinished} unfinished;"
            f" {plural(client.stats().throttled, 'throttled response')}")
        click.echo(f"journal: {result.journal}")
        if result.report:
            click.echo(f"report:  {result.report}")
        if result.reject_file:
            click.echo(f"rejects: {result.reject_file}")
        return EXIT_OK if result.ok else EXIT_FAILED


def _import_summary(plan: Any, opts: Any) -> str:

    existing = {"fail": "any one stops the import before anything is sent",
                "skip": "left as they are",
                "update": "overwritten (full-object PUT)"}[opts.on_existing]
    named = plural(plan.existing, "row names an existing credential",
                   "rows name existing credentials")
    return (f"{len(plan.of('create'))} to create, {len(plan.of('update'))} to update,"
            f" {len(plan.of('skip'))} to skip, {len(plan.of('reject'))} rejected;"
            f" {named}: --on-existing {opts.on_existing} ({existing})")


def _print_import_plan(plan: Any, opts: Any, rate: Rate, redactor: Redactor) -> None:
    from .jobs.importcsv import names_outside_ui_set
    from .text import listed, plural

    click.echo(f"dry run: {opts.csv}, {plural(plan.source.data_rows, 'row')}")
    click.echo("  " + _import_summary(plan, opts))
    writes = plural(plan.writes, "write takes", "writes take")
    click.echo(f"at the write limit of {rate} the {writes} at least"
               f" {plan.writes / rate.per_second:.0f} s")
    unsafe = names_outside_ui_set(plan.source)
    if unsafe:
        click.echo(f"{plural(len(unsafe), 'name uses', 'names use')} characters outside the"
                   f" admin portal's set (letters, digits, . - _), on {listed('line', unsafe)}:"
                   " the API takes them, the portal may not let them be edited")
    for action in ("create", "update", "skip"):
        items = plan.of(action)
        if not items:
            continue
        click.echo(f"{action} (first {min(len(items), 10)} of {len(items)}):")
        for item in items[:10]:
            cred = item.row.credential
            what = f" (id {item.existing.id})" if item.existing is not None else ""
            click.echo(redactor.redact(
                f"  line {item.line:<6} {cred.credential_type.value:<17} mt {item.row.scope:<20}"
                f" {cred.name}{what}"))
    rejects = plan.rejects
    if rejects:
        click.echo(f"reject ({len(rejects)}):")
        for r in rejects:
            click.echo(redactor.redact(f"  {r.error(opts.csv)}"))
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


def _refuse_overwriting_state(output: Path, journal: Path) -> None:
    """A report must never replace a journal or a secrets file (both JSON lines)."""
    if output.exists() and os.path.samefile(output, journal):
        raise UsageError(f"--output {output} is the journal itself; give the report its own path")
    try:
        with output.open("rb") as f:
            first = f.readline(1 << 16)
    except FileNotFoundError:
        return
    except OSError:
        return  # the write below reports it
    try:
        rec = orjson.loads(first)
    except orjson.JSONDecodeError:
        return
    if isinstance(rec, dict) and (rec.get("t") == "header" or "rotatedAt" in rec):
        raise UsageError(f"--output {output} is a bulkcred journal or secrets file; writing the"
                         " report over it would destroy it. Give the report its own path")


@cli.command()
@click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv (one row an item) or json (counts and items).")
@click.option("--output", type=WRITABLE_FILE,
              help="Write here instead of stdout.")
@handle_errors
def report(journal: Path, fmt: str, output: Path | None) -> int:
    """Per-item completion report: id, name, status, HTTP status, error id, reason."""
    from .journal import replay
    from .report import render_report, write_report

    state = replay(journal)
    if output:
        _refuse_overwriting_state(output, journal)
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
@click.option("--faults", default="", metavar="SPEC",
              help="Comma-separated, seeded: 5xx=F, 409=F, reset=F, lost=F (fractions of API"
                   " requests), latency=20ms or 10ms-50ms, retry_after=S, throttle_burst=N[@K],"
                   " totalcount=0|omit, escape=1, seed=N.")
@click.option("--state", type=WRITABLE_FILE, help="Load/save the tenant here.")
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
