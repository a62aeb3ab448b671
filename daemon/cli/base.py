"""What every command shares: the ``@command`` registry, the index opened and closed,
logging, the progress bar, JSON output."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config import Config, database_url
from daemon.errors import FlorenceWatchError
from daemon.service.pause import Pauser, gpu_share_of_others

if TYPE_CHECKING:
    from daemon.index.db import Database
    from daemon.service.pipeline import Progress

log = logging.getLogger("daemon")

Run = Callable[[argparse.Namespace, Config, Path | None], int]
Arguments = Callable[[argparse.ArgumentParser], None]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For commands that take nothing but the global options."""


@dataclass(frozen=True)
class Command:
    """One subcommand, declared once: the parser and the dispatch both come from it."""

    name: str
    summary: str  # its one line in the top-level help
    description: str | Callable[[], str]  # its own --help, laid out as written (tables included)
    example: str
    arguments: Arguments
    run: Run
    info_logs: bool = False  # long-running commands report progress as INFO logs

    def help_text(self) -> str:
        return self.description() if callable(self.description) else self.description


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    summary: str,
    example: str,
    *,
    description: str | Callable[[], str] = "",
    arguments: Arguments = no_arguments,
    info_logs: bool = False,
) -> Callable[[Run], Run]:
    """Register the decorated function as the command *name* (in the order of the help)."""

    def register(run: Run) -> Run:
        COMMANDS[name] = Command(name, summary, description or summary, example, arguments, run, info_logs)
        return run

    return register


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Log to stderr; silence the libraries' chatter unless *verbose*."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    # Under systemd the journal adds the time; a terminal wants it.
    fmt = "%(levelname)s %(message)s" if os.environ.get("INVOCATION_ID") else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        for noisy in ("transformers", "huggingface_hub", "PIL", "watchdog", "filelock", "urllib3", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


@contextmanager
def open_db(config: Config) -> Iterator[Database]:
    """The index database, closed (its engine's connections released) when the block ends."""
    from daemon.index.db import Database

    db = Database(database_url(config.index.database))
    try:
        yield db
    finally:
        db.close()


def pauser(config: Config, workers: list[dict[str, Any]]) -> Pauser:
    """The daemon's pause rules as this command sees them: the daemons here hold GPU memory of their own."""
    here = socket.gethostname()
    ours = {os.getpid()} | {w["pid"] for w in workers if w["host"] == here}
    return Pauser(config.pause, gpu_share=lambda: gpu_share_of_others(ours=ours))


def index_status(config: Config) -> dict[str, Any]:
    """The index's counts and failures (``records.status``), what waits for another try, the
    queue's throughput and ETA, and whether search by meaning is on."""
    from daemon.index import folders, jobs, records
    from daemon.index.vectors import semantic_status
    from daemon.model.embed import off_reason
    from daemon.service.reconcile import last

    with open_db(config) as db, db.transaction() as s:
        st = records.status(s)
        retrying = {"count": jobs.retrying_count(s), "jobs": jobs.retrying(s)}
        semantic = semantic_status(s, config.search, off_reason(config.search))
        unwatched = folders.hidden(s)
    q = st["queue"]
    throughput = jobs.throughput(q["pending"] + q["running"], st["workers"], config.index.lease_seconds)
    paused = pauser(config, st["workers"]).check()
    on_this_computer = None if paused is None else {**asdict(paused), "describe": paused.describe()}
    return {
        **st,
        "retrying": retrying,
        "throughput": throughput,
        "semantic": semantic,
        "paused": on_this_computer,
        "reconciled": last(config),
        "unwatched": unwatched,
    }


@contextmanager
def progress_bar() -> Iterator[Progress | None]:
    """A tqdm bar on stderr fed by the pipeline's ``progress(done, total)``; None unless stderr is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    class Bar(tqdm):
        # No monitor thread: updates come once a batch, and the thread would outlive the bar.
        monitor_interval = 0

    with Bar(total=None, unit="image", file=sys.stderr, dynamic_ncols=True) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total  # the queue can grow while it drains
            bar.update(done - bar.n)

        yield update


def no_such_path(paths: Sequence[str]) -> None:
    """Refuse before any work when a path given on the command line does not exist."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FlorenceWatchError(f"{missing[0]}: no such file or folder")


def print_json(value: Any) -> None:
    """Print *value* as indented JSON, non-ASCII text as is."""
    print(json.dumps(value, ensure_ascii=False, indent=2))


def short(value: Any) -> str:
    """A tag's value on one line, cut at 100 characters."""
    if value is None:
        return "-"
    text = ", ".join(value) if isinstance(value, list) else str(value)
    return text if len(text) <= 100 else text[:97] + "..."


def add_local_option(p: argparse.ArgumentParser) -> None:
    """``--local``: for the commands the running daemon answers."""
    p.add_argument(
        "--local", action="store_true", help="do the work in this process, even when the daemon could answer"
    )


def answer(config: Config, args: argparse.Namespace, op: str, payload: dict[str, Any], timeout: float = 30.0) -> Any:
    """*op*'s answer from the running daemon (warm models, nothing loaded here), else worked out here.

    Either way it is the same ``service.queries.Queries`` call, and the local
    answer goes through JSON too: what is printed cannot depend on the path.
    """
    if not args.local:
        from daemon.service.client import Unanswered, call

        try:
            result = call(database_url(config.index.database), op, payload, timeout)
            log.debug("%s: answered by the running florence-watch", op)
            return result
        except Unanswered as exc:
            log.info("%s: %s; answering in this process", op, exc)
    from daemon.service.queries import local_queries

    with local_queries(config) as queries:
        return json.loads(json.dumps(queries.answer(op, payload)))


def absolute(path: str | None) -> str | None:
    """A path from the command line as the daemon sees it: its working folder is not this one."""
    return os.path.abspath(os.path.expanduser(path)) if path else None
