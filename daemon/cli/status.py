"""The index's counts, queue and workers: ``status``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cli.base import command, index_status, print_json
from daemon.config import Config

if TYPE_CHECKING:
    pass


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
    st = index_status(config)
    if args.json:
        print_json(st)
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
    if st["reconciled"]:
        print(_reconciled_line(st["reconciled"]))
    for u in st["unwatched"]:
        print(
            f"no longer watched: {u['folder']}: {u['files']} file(s) hidden from search "
            "(florence-watch forget-unwatched removes them; put the folder back in watch.folders to keep them)"
        )
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


def _reconciled_line(r: dict[str, Any]) -> str:
    """status's line on the last reconcile on this computer, and each folder it left alone."""
    from daemon.service.reconcile import summary

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["at"]))
    line = f"reconciled with the disk ({when}): {summary(r)}"
    return line + "".join(f"\n  not reconciled: {folder}: {why}" for folder, why in r["skipped"].items())


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
