"""The ``florence-watch`` command: parse, call one library function, format.

Each command is declared once, with ``@command``: its name, summary line,
own help, example, arguments and run function. The parser and the dispatch
both come from that one registry, ``COMMANDS``.

Errors from the core arrive as ``FlorenceWatchError`` and leave here as one
``error: ...`` line and exit status 1; nothing below prints a traceback at a
person for a problem they can fix.
"""

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

from daemon import __version__
from daemon.config import Config, database_url, find_config_file, load_config
from daemon.errors import FlorenceWatchError, NotIndexedError
from daemon.service.pause import Pauser, by_hand, gpu_share_of_others, parse_duration, pause, resume, state_file

if TYPE_CHECKING:
    from daemon.index.db import Database
    from daemon.service.find import Found
    from daemon.service.pipeline import Progress

log = logging.getLogger("daemon")

Run = Callable[[argparse.Namespace, Config, Path | None], int]
Arguments = Callable[[argparse.ArgumentParser], None]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
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
    arguments: Arguments = _no_arguments,
    info_logs: bool = False,
) -> Callable[[Run], Run]:
    """Register the decorated function as the command *name* (in the order of the help)."""

    def register(run: Run) -> Run:
        COMMANDS[name] = Command(name, summary, description or summary, example, arguments, run, info_logs)
        return run

    return register


class _CommandListFormatter(argparse.RawDescriptionHelpFormatter):
    """The top-level help, with every command's summary beside its name.

    Before Python 3.13 argparse measured command names two columns short of
    where it prints them, so ``install-service`` pushed its summary onto a line
    of its own. Measure them where they are printed, as 3.13 does.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS:
            for sub in self._iter_indented_subactions(action):  # indented while iterating
                width = len(self._format_action_invocation(sub)) + self._current_indent
                self._action_max_length = max(self._action_max_length, width)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global options, then one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="florence-watch",
        description="Watch folders, describe every new image with Florence-2, keep a searchable\n"
        "index, and write alt text, a description and keywords into each image.",
        epilog="example: florence-watch --config config.toml run\n"
        "florence-watch COMMAND --help shows a command's options and an example.",
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"florence-watch {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $FLORENCE_WATCH_CONFIG, "
        "else ~/.config/florence-watch/config.toml, else built-in defaults)",
    )
    parser.add_argument("--model", metavar="NAME", help="override model.name: a hub id or a local checkpoint folder")
    parser.add_argument("--database", metavar="PATH", help="override index.database: a file path or SQLAlchemy URL")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for c in COMMANDS.values():
        # The summary alone goes in the top-level list; the raw formatter keeps
        # the description's tables as written in the command's own help.
        p = sub.add_parser(
            c.name,
            help=c.summary,
            description=c.help_text(),
            epilog=f"example: {c.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (1 with one ``error:`` line for a problem a person can fix)."""
    args = build_parser().parse_args(argv)
    cmd = COMMANDS[args.command]
    _setup_logging(args.verbose, quiet=not cmd.info_logs)
    try:
        config_file = find_config_file(args.config)
        config = load_config(config_file).with_overrides(model=args.model, database=args.database)
        return cmd.run(args, config, config_file)
    except FlorenceWatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _setup_logging(verbose: bool, quiet: bool) -> None:
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
def _open_db(config: Config) -> Iterator[Database]:
    """The index database, closed (its engine's connections released) when the block ends."""
    from daemon.index.db import Database

    db = Database(database_url(config.index.database))
    try:
        yield db
    finally:
        db.close()


def _pauser(config: Config, workers: list[dict[str, Any]]) -> Pauser:
    """The daemon's pause rules as this command sees them: the daemons here hold GPU memory of their own."""
    here = socket.gethostname()
    ours = {os.getpid()} | {w["pid"] for w in workers if w["host"] == here}
    return Pauser(config.pause, gpu_share=lambda: gpu_share_of_others(ours=ours))


def _index_status(config: Config) -> dict[str, Any]:
    """The index's counts and failures (``records.status``), what waits for another try, the
    queue's throughput and ETA, and whether search by meaning is on."""
    from daemon.index import jobs, records
    from daemon.index.vectors import semantic_status
    from daemon.model.embed import off_reason

    with _open_db(config) as db, db.transaction() as s:
        st = records.status(s)
        retrying = {"count": jobs.retrying_count(s), "jobs": jobs.retrying(s)}
        semantic = semantic_status(s, config.search, off_reason(config.search))
    q = st["queue"]
    throughput = jobs.throughput(q["pending"] + q["running"], st["workers"], config.index.lease_seconds)
    paused = _pauser(config, st["workers"]).check()
    on_this_computer = None if paused is None else {**asdict(paused), "describe": paused.describe()}
    return {**st, "retrying": retrying, "throughput": throughput, "semantic": semantic, "paused": on_this_computer}


@contextmanager
def _progress() -> Iterator[Progress | None]:
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


def _no_such_path(paths: Sequence[str]) -> None:
    """Refuse before any work when a path given on the command line does not exist."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FlorenceWatchError(f"{missing[0]}: no such file or folder")


def _json(value: Any) -> None:
    """Print *value* as indented JSON, non-ASCII text as is."""
    print(json.dumps(value, ensure_ascii=False, indent=2))


# --- commands, in the order of the help ---------------------------------------------


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--role",
        choices=("all", "watch", "work"),
        default="all",
        help="all (default): watch and process; watch: only watch and queue (no model, e.g. a NAS); "
        "work: only process the queue (several machines sharing one PostgreSQL index)",
    )


@command(
    "run",
    "Run the daemon: watch the folders, process new images.",
    "florence-watch --config config.toml run --role work",
    description="Run the daemon in the foreground: watch the folders and process new images\nuntil stopped.",
    info_logs=True,
    arguments=_run_arguments,
)
def cmd_run(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.runner import Daemon

    log.info("florence-watch %s, configuration: %s", __version__, config_file or "built-in defaults")
    daemon = Daemon(config, role=args.role)
    daemon.install_signal_handlers()
    daemon.run()
    return 0


def _scan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")


@command(
    "scan",
    "Process files or folders once, then exit.",
    "florence-watch scan ~/Pictures/2024",
    description="Process files or folders once (new or changed images only) and exit.",
    arguments=_scan_arguments,
    info_logs=True,
)
def cmd_scan(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.runner import open_pipeline
    from daemon.service.watch import walk_candidates

    _no_such_path(args.paths)
    paused = by_hand()
    if paused is not None:  # scan drains the whole queue: the daemon's files too
        raise FlorenceWatchError(f"florence-watch is {paused.describe()} on this computer: resume first")
    with open_pipeline(config) as pipeline:
        pipeline.recover()
        queued = pipeline.offer(p for root in args.paths for p in walk_candidates(Path(root).resolve()))
        print(f"{queued} new or changed image(s) to process", file=sys.stderr)
        with _progress() as progress:
            pipeline.drain(progress=progress)
    st = _index_status(config)
    print(f"indexed {st['indexed']}, failed {st['failed']}, pending {st['pending']}")
    return 0


SEARCH_LANGUAGE = """\
Full-text search over captions, descriptions, OCR text, object labels and paths.

  red car            every word, in any field
  "red car"          a phrase
  caption:"red car"  in one field: caption: desc: text: (OCR) label: path:
  -dog               must not match
  cat OR dog         either"""


def _search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", nargs="?", default="", help="what to look for (see above); may be empty with a filter")
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")
    p.add_argument("--since", metavar="DATE", help="only files modified on or after DATE (YYYY-MM-DD, or 7d)")
    p.add_argument("--has-text", action="store_true", help="only images with OCR text")
    p.add_argument("--limit", type=int, default=20, help="at most this many results (default 20)")
    p.add_argument(
        "--mode",
        choices=("hybrid", "words", "meaning"),
        default="hybrid",
        help="hybrid (default): words and meaning ranked together; words: the words alone; "
        "meaning: nearest in meaning (search.semantic)",
    )
    p.add_argument("--json", action="store_true", help="print JSON: [{path, caption, score, snippet}, ...]")


@command(
    "search",
    "Search the index by words and by meaning.",
    "florence-watch search 'label:dog -caption:sofa' --folder ~/Pictures/2024 --since 2024-06-01",
    description=SEARCH_LANGUAGE,
    arguments=_search_arguments,
)
def cmd_search(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.meaning import Meaning, hybrid_search
    from daemon.index.search import parse
    from daemon.model.embed import Embedder

    query = parse(args.query, folder=args.folder, since=args.since, has_text=args.has_text)
    if query.empty:
        raise FlorenceWatchError("nothing to search for: give words, or a filter such as --folder")
    with _open_db(config) as db, db.transaction() as s:
        hits = hybrid_search(s, query, limit=args.limit, mode=args.mode, meaning=Meaning(config.search, Embedder))
    if args.json:
        _json([{"path": h.path, "caption": h.caption, "score": h.score, "snippet": h.snippet_marked()} for h in hits])
    elif not hits:
        print("no matches", file=sys.stderr)
    else:
        bold = ("\x1b[1m", "\x1b[0m") if sys.stdout.isatty() else ("[", "]")
        for h in hits:
            print(h.path)
            if h.snippet and h.snippet != h.caption:
                print(f"    {h.snippet_marked(*bold)}")
            print(f"    {h.caption}")
    return 0


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an image file")
    p.add_argument("--json", action="store_true", help="print JSON")


@command(
    "show",
    "Show everything the index knows about one file.",
    "florence-watch show ~/Pictures/Inbox/cat.jpg",
    arguments=_show_arguments,
)
def cmd_show(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index import records

    path = os.path.abspath(args.path)
    with _open_db(config) as db, db.transaction() as s:
        info = records.file_info(s, path)
    if info is None:
        raise NotIndexedError(path)
    info["in_file"] = _metadata_now(config, info)
    if args.json:
        info.pop("results", None)
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    _print_file_info(info)
    return 0


def _print_file_info(info: dict[str, Any]) -> None:
    """show's table: what the index knows, then the file's tags now beside what we wrote."""
    target = info["metadata"]["target"]
    rejected = [*info["rejected"], *(f"({field})" for field in info["rejected_fields"])]
    rows = [
        ("path", info["path"]),
        ("state", info["state"] + (f" ({info['error']})" if info["error"] else "")),
        ("sha256", info["sha256"] or "-"),
        ("model", info["model"] or "-"),
        ("caption", info["caption"] or "-"),
        ("description", info["description"] or "-"),
        ("keywords", ", ".join(info["keywords"]) or "-"),
        ("rejected", ", ".join(rejected) + "   (removed by a person: never written again)" if rejected else "-"),
        ("ocr", info["ocr"] or "-"),
        ("objects", "; ".join(f"{o['label']} {o['box']}" for o in info["objects"]) or "-"),
        ("metadata", info["metadata"]["state"] + (f" -> {target}" if target else "")),
    ]
    for key, value in rows:
        print(f"{key:12} {value}")
    written = (info["metadata"]["written"] or {}).get("tags", {})
    now = info["in_file"] or {}
    if written or now:
        print("in the file now / what florence-watch wrote:")
        for tag in dict.fromkeys([*now, *written]):
            mark = "" if now.get(tag) == written.get(tag) else "   (differs)" if tag in written else ""
            print(f"  {tag}\n      now:   {_short(now.get(tag))}\n      wrote: {_short(written.get(tag))}{mark}")


def _short(value: Any) -> str:
    """A tag's value on one line, cut at 100 characters."""
    if value is None:
        return "-"
    text = ", ".join(value) if isinstance(value, list) else str(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _metadata_now(config: Config, info: dict[str, Any]) -> dict[str, Any] | None:
    """Our fields as they are in the file (or sidecar) now; None when exiftool is missing."""
    from daemon.errors import MetadataError
    from daemon.metadata import MetadataWriter

    target = info["metadata"]["target"] or info["path"]
    try:
        with MetadataWriter(config.metadata) as writer:
            return writer.read(target)
    except MetadataError as exc:
        log.warning("cannot read the file's metadata: %s", exc)
        return None


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: {indexed, pending, failed, failures, queue, retrying, throughput, workers, ...}",
    )


@command(
    "status",
    "Counts of indexed, pending and failed files.",
    "florence-watch status --json",
    description="Counts of indexed, pending and failed files, and why each failure failed;\n"
    "the queue, its throughput and ETA, what waits for another try, and every worker.",
    arguments=_status_arguments,
)
def cmd_status(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    st = _index_status(config)
    if args.json:
        _json(st)
        return 0
    print(f"indexed {st['indexed']}   pending {st['pending']}   failed {st['failed']}")
    if st["paused"]:
        print(f"{st['paused']['describe']} (on this computer: no model run, no file written; queueing goes on)")
    q, sem = st["queue"], st["semantic"]
    print(f"queue: {q['pending']} waiting, {q['running']} being processed, {q['metadata']} metadata writes to do")
    print(_throughput_line(st["throughput"]))
    if sem["on"]:
        print(f"search by meaning: on ({sem['model']}: {sem['embedded']} image(s) embedded, {sem['missing']} to do)")
    else:
        print(f"search by meaning: off ({sem['reason']}); search is by words")
    for w in st["workers"]:
        print(
            f"  worker {w['host']}:{w['pid']}  {w['role']:5}  {w['device'] or '-':8}  {w['images_per_s']:6.2f} images/s"
            f"  {w['processed']} done  heartbeat {w['seconds_since_heartbeat']:.0f} s ago"
        )
    for r in st["retrying"]["jobs"]:
        tried = f"{r['attempts']} attempt(s) failed" if r["attempts"] else "given back"  # by a host without the file
        when = f"next try in {_duration(r['next_try_in_seconds'])}" if r["next_try_in_seconds"] > 0 else "due now"
        print(f"  retrying: {r['path']}\n          {tried}, {when}: {r['reason']}")
    if st["retrying"]["count"] > len(st["retrying"]["jobs"]):
        print(f"  ... and {st['retrying']['count'] - len(st['retrying']['jobs'])} more waiting for another try")
    for f in st["failures"]:
        print(f"  failed: {f['path']}\n          {f['reason']}")
    for f in st["metadata_failures"]:
        print(f"  indexed, {f['reason']}: {f['path']}")
    return 0


def _throughput_line(t: dict[str, Any]) -> str:
    """status's line on how fast the queue drains and when it will be empty."""
    if not t["live_workers"]:
        waiting = f"; {t['to_do']} image(s) wait for `florence-watch run`" if t["to_do"] else ""
        return f"throughput: no worker running{waiting}"
    rate = f"throughput: {t['images_per_s']:.2f} images/s from {t['live_workers']} worker(s)"
    if not t["to_do"]:
        return f"{rate}; the queue is empty"
    if t["eta_seconds"] is None:
        return f"{rate}; ETA unknown until the first images are done"
    return f"{rate}; ETA {_duration(t['eta_seconds'])} for {t['to_do']} image(s)"


def _duration(seconds: float) -> str:
    """12 s, 4 min, 2 h 05 min: how long, to the precision a person reads."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _pause_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 2h, 30m, 1h30m (default: until resume)")


@command(
    "pause",
    "Pause the daemon on this computer (for a game, a call).",
    "florence-watch pause --for 2h",
    description="The daemon on this computer keeps watching and queueing new files, but runs no model,\n"
    "writes no file and gives its model's memory back, until `florence-watch resume` or --for\n"
    "runs out. The pause outlives a restart; `status` shows it.",
    arguments=_pause_arguments,
)
def cmd_pause(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    paused = pause(parse_duration(args.duration) if args.duration is not None else None)
    print(f"{paused.describe()}: new files are queued, and described once it is over")
    print(f"(the daemon reads the pause from {state_file()})", file=sys.stderr)
    return 0


@command(
    "resume",
    "End a pause made with `pause`.",
    "florence-watch resume",
    description="End a pause made with `florence-watch pause`; the daemon carries on within a second.\n"
    "A pause by rule ([pause] on_battery, gpu_share) lasts while its condition holds.",
    arguments=_no_arguments,
)
def cmd_resume(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    print("resumed" if resume() else "was not paused by hand")
    # The battery rule only: which GPU memory is the daemon's own, only the index knows (status says).
    rule = Pauser(config.pause, gpu_share=lambda: None).check()
    if rule is not None:
        print(f"still {rule.describe()} ([pause] in {config_file or 'the configuration'})")
    return 0


def _doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON: {ok, checks: [{name, ok, state, detail, fix}]}")


@command(
    "doctor",
    "Check that this computer is ready to run florence-watch.",
    "florence-watch --config ~/florence-watch/config.toml doctor",
    description="Check what florence-watch needs and say how to fix what is wrong: exiftool;\n"
    "Python, torch and transformers; the GPU; the model on disk (nothing is downloaded);\n"
    "inotify limits; each watched folder; the index; the systemd unit; the web port.\n"
    "Exit status 0 when all is well (notes are fine), 1 when a check failed.",
    arguments=_doctor_arguments,
)
def cmd_doctor(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.doctor import diagnose

    report = diagnose(config)
    if args.json:
        _json(report.as_dict())
        return 0 if report.ok else 1
    print(f"configuration: {config_file or 'built-in defaults'}")
    for c in report.checks:
        print(f"{c.state.upper() if c.state == 'fail' else c.state:4}  {c.name:15}  {c.detail}")
        if c.fix:
            print(f"{'':23}{'fix' if c.state == 'fail' else 'to do'}: {c.fix}")
    failed = sum(not c.ok for c in report.checks)
    print("all is well" if not failed else f"{failed} problem(s) found")
    return 0 if report.ok else 1


def _reindex_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embeddings",
        action="store_true",
        required=True,
        help="embed the images that have no vector for [search] embedding_model yet (no Florence-2 run)",
    )


@command(
    "reindex",
    "Embed indexed images for search by meaning.",
    "florence-watch reindex --embeddings",
    description="Embed every indexed image that has no vector for the configured embedding model yet\n"
    "(an index made before search by meaning, or after changing search.embedding_model).\n"
    "Florence-2 does not run; a running daemon does the same in the background.",
    arguments=_reindex_arguments,
)
def cmd_reindex(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.vectors import embed_missing
    from daemon.model.embed import Embedder

    embedder = Embedder(config.search.embedding_model)
    with _open_db(config) as db, _progress() as progress:
        n = embed_missing(db, embedder, progress=progress)
    print(f"embedded {n} image(s) with {embedder.name}", file=sys.stderr)
    return 0


def _retag_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: every indexed file)")
    p.add_argument("--dry-run", action="store_true", help="only print, per file, what would change")


@command(
    "retag",
    "Rewrite metadata from the index, without the model.",
    "florence-watch retag ~/Pictures/Inbox --dry-run",
    description="Rewrite metadata into indexed files from the index, without running the model\n"
    "(after changing the [metadata] settings).",
    arguments=_retag_arguments,
)
def cmd_retag(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.metadata import MetadataWriter, retag

    if not config.metadata.write and not args.dry_run:
        raise FlorenceWatchError(f"{config.source}: metadata.write is false: nothing to retag (try --dry-run)")
    _no_such_path(args.paths)
    changed = failed = total = 0
    with MetadataWriter(config.metadata) as writer, _open_db(config) as db:
        for path, outcome in retag(db, writer, args.paths, dry_run=args.dry_run):
            total += 1
            if outcome is None:
                failed += 1
                print(f"{path}: not written (florence-watch status shows why)")
                continue
            if outcome.changed:
                changed += 1
                where = "" if outcome.target == path else f" -> {outcome.target}"
                print(f"{path}{where}")
                for tag in outcome.changed:
                    print(
                        f"  {tag}: {_short(outcome.before.get(tag))!r} -> {_short(outcome.written['tags'].get(tag))!r}"
                    )
            for tag in outcome.kept:
                # Under the file's own line when it changed; on a line of its own otherwise.
                print(f"{'  ' if outcome.changed else f'{path}: '}{tag}: kept, a person wrote it")
    verb = "would change" if args.dry_run else "changed"
    print(f"{total} indexed file(s): {changed} {verb}, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _task_table() -> str:
    """ask's own help: what it does, then one row per task."""
    from daemon.tasks import TASKS

    lines = [
        "Run any Florence-2 task on one image, now (the index is not changed).",
        "",
        "tasks (alias, token, input, what it gives):",
    ]
    for t in TASKS:
        takes = {"text": "TEXT", "region": "--box"}.get(t.takes, "")
        lines.append(f"  {t.aliases[0]:<22} {t.token:<36} {takes:<6} {t.about}")
    return "\n".join(lines)


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="an image file")
    p.add_argument("task", help="a task: an alias below or the raw token, e.g. objects or '<OD>'")
    p.add_argument("text", nargs="?", help="the TEXT a task takes (grounding, segmentation, open-vocabulary)")
    p.add_argument("--box", metavar="X1,Y1,X2,Y2", help="the region a region task takes, in pixels")
    p.add_argument("--json", action="store_true", help="print JSON: {image, task, text, box, result}")
    p.add_argument("--draw", metavar="OUT.png", help="also save a copy of the image with the regions drawn on it")


@command(
    "ask",
    "Run any Florence-2 task on one image, now.",
    'florence-watch ask photo.jpg ground "a red car" --draw found.png',
    description=_task_table,
    arguments=_ask_arguments,
)
def cmd_ask(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.imaging import decode
    from daemon.model.analyze import FlorenceAnalyzer
    from daemon.model.ask import ask
    from daemon.tasks import check_input, parse_box, task_named

    task = task_named(args.task)
    box = parse_box(args.box) if args.box else None
    decoded = decode(args.image)
    check_input(task, decoded.image.size, args.text, box)  # before the slow model load
    result = ask(FlorenceAnalyzer(config.model), decoded.image, task, args.text, box)
    if args.json:
        _json(
            {
                "image": os.path.abspath(args.image),
                "task": task.token,
                "text": args.text,
                "box": list(box) if box else None,
                "result": result,
            }
        )
    else:
        _print_result(result, task.token)
    if args.draw:
        _save_drawing(decoded.image, result, task.token, Path(args.draw))
    return 0


def _print_result(result: Any, task: str) -> None:
    """A task's result as text: a caption as is, regions one per line."""
    from daemon.draw import shapes

    if isinstance(result, str):
        print(result)
        return
    found = shapes(result, task)
    if not found:
        print("(nothing found)", file=sys.stderr)
    for shape in found:
        coords = ",".join(f"{v:.0f}" for v in shape.points)
        print(f"{shape.label or '(region)'}\t{shape.kind} {coords}")


def _save_drawing(image: Any, result: Any, task: str, out: Path) -> None:
    """Save a copy of *image* with *result*'s regions drawn on it."""
    from daemon.draw import draw, shapes

    found = shapes(result, task)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        draw(image, found).save(out)
    except (OSError, ValueError) as exc:  # ValueError: Pillow does not know the extension
        raise FlorenceWatchError(f"{out}: cannot save the drawing: {exc}") from None
    print(f"drew {len(found)} region(s) on {out}", file=sys.stderr)


def _find_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("phrase", help="what to look for, in words")
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")
    p.add_argument("--limit", type=int, default=5, help="ground the phrase in this many images (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{path, caption, boxes: [{label, box}]}]")
    p.add_argument("--draw-dir", metavar="DIR", help="save a copy of each image with the boxes drawn on it here")


@command(
    "find",
    "Find where something is in the indexed images.",
    'florence-watch find "a red car" --folder ~/Pictures/2024 --draw-dir /tmp/found',
    description="Find where something is: search the index for it, then ground the phrase\nin the best matches.",
    arguments=_find_arguments,
)
def cmd_find(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.meaning import Meaning
    from daemon.model.analyze import FlorenceAnalyzer
    from daemon.model.embed import Embedder
    from daemon.service.find import find

    with _open_db(config) as db:  # the search runs here; grounding needs no database
        matches = find(
            db,
            args.phrase,
            lambda: FlorenceAnalyzer(config.model),
            folder=args.folder,
            limit=args.limit,
            meaning=Meaning(config.search, Embedder),
        )
    found: list[dict[str, Any]] = []
    any_match = False
    for match in matches:
        any_match = True
        if match.skipped:
            print(f"skipped {match.path}: {match.skipped}", file=sys.stderr)  # moved or changed since indexed
            continue
        found.append(
            {
                "path": match.path,
                "caption": match.caption,
                "boxes": [{"label": b.label, "box": list(b.box)} for b in match.boxes],
            }
        )
        if args.draw_dir:
            # Ranked names: the order of the matches, and no clash between photo.jpg and photo.png.
            out = Path(args.draw_dir) / f"{match.rank:02d}-{Path(match.path).name}.png"
            _save_drawing(match.image, match.result, match.task.token, out)
        if not args.json:
            _print_found(match, args.phrase)
    if not any_match:
        print(f"no indexed image mentions {args.phrase!r}", file=sys.stderr)
    elif args.json:
        _json(found)
    return 0


def _print_found(match: Found, phrase: str) -> None:
    """One grounded match: its path, caption, and each box found."""
    print(match.path)
    print(f"    {match.caption}")
    for b in match.boxes:
        print(f"    {b.label or phrase}\tbox {','.join(f'{v:.0f}' for v in b.box)}")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="the file to write")
    p.add_argument("--format", choices=("coco", "jsonl"), default="coco", help="coco (default) or jsonl")
    p.add_argument(
        "--task",
        default="<OD>",
        help="whose regions: <OD> (default), <DENSE_REGION_CAPTION>, "
        "<REGION_PROPOSAL> or <OCR_WITH_REGION> (aliases work)",
    )
    p.add_argument("--folder", metavar="DIR", help="only files in this folder or below")


@command(
    "export",
    "Export detections and captions as COCO or JSON lines.",
    "florence-watch export --format coco --task objects dataset.json",
    description="Export the index's detections and captions for training data:\na COCO dataset or JSON lines.",
    arguments=_export_arguments,
)
def cmd_export(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.export import check_task, export
    from daemon.tasks import task_named

    task = task_named(args.task)
    check_task(task)
    folder = os.path.abspath(os.path.expanduser(args.folder)) if args.folder else None
    with _open_db(config) as db, db.transaction() as s:
        n = export(s, args.format, Path(args.out), task.token, folder)
    print(f"wrote {n} image(s) to {args.out}", file=sys.stderr)
    return 0


INDEX_COPY_EXAMPLE = "florence-watch index copy --to postgresql+psycopg://florence:secret@nas/florence"
INDEX_COPY_HELP = (
    "Copy the configured index (--database, or index.database) into another, empty\n"
    "database: SQLite to PostgreSQL or back. Images, files, results, search text,\n"
    "the queue and a person's decisions are copied as they are; the model is not run.\n"
    "Then point index.database at the copy."
)


def _index_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, title="actions")
    copy = actions.add_parser(
        "copy",
        help="copy the index into another, empty database",
        description=INDEX_COPY_HELP,
        epilog=f"example: {INDEX_COPY_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument(
        "--to", required=True, metavar="URL", help="the new, empty index: a file path (SQLite) or a PostgreSQL URL"
    )


@command(
    "index",
    "Manage the index: copy it into another database.",
    INDEX_COPY_EXAMPLE,
    description="Manage the index itself.\nflorence-watch index ACTION --help shows an action's own help and example.",
    arguments=_index_arguments,
)
def cmd_index(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.index.db import Database, display_url
    from daemon.index.transfer import copy_index

    def progress(table: str, rows: int) -> None:
        print(f"copied {table}: {rows} row(s)", file=sys.stderr, flush=True)

    url = database_url(args.to)  # copy is the one action so far (argparse requires it)
    with _open_db(config) as source:
        target = Database(url)
        try:
            counts = copy_index(source, target, progress)
        finally:
            target.close()
    print(f"copied {counts['images']} image(s) and {counts['files']} file(s) to {display_url(url)}")
    return 0


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default serve.host: 127.0.0.1, this computer only)")
    p.add_argument("--port", type=int, help="port (default serve.port: 8765)")


@command(
    "serve",
    "Serve the index as a web page on this computer.",
    "florence-watch serve --port 8765",
    description="Serve the index as a web page on this computer: search, thumbnails, and each\n"
    "image with its objects and text drawn over it.",
    arguments=_serve_arguments,
)
def cmd_serve(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.web.serve import make_server, url_of

    with _open_db(config) as db:
        server = make_server(config, db, args.host, args.port)
        print(f"serving the index at {url_of(server)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


def _install_service_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--role",
        choices=("all", "watch", "work"),
        default="all",
        help="all (default): florence-watch.service, one computer doing everything; watch or work: "
        "the template florence-watch@.service, enabled as florence-watch@watch or florence-watch@work",
    )


@command(
    "install-service",
    "Write the systemd user unit; print how to enable it.",
    "florence-watch --config ~/florence-watch/config.toml install-service --role work",
    description="Write the systemd user unit and print the commands that enable it.",
    arguments=_install_service_arguments,
)
def cmd_install_service(args: argparse.Namespace, config: Config, config_file: Path | None) -> int:
    from daemon.service.unit import install

    path, commands = install(str(config_file) if config_file else None, role=args.role)
    print(f"wrote {path}\nenable and start it with:")
    for c in commands:
        print(f"  {c}")
    return 0
