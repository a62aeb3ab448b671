"""Assembling the daemon: config -> database, model, exiftool, pipeline, watcher.

``Daemon.run`` is the long-running loop behind ``florence-watch run``;
``open_pipeline`` serves the one-shot ``scan`` as well. SIGTERM and SIGINT
become one shutdown request: the current batch finishes and commits,
threads are joined, and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .analyze import Analyzer, FlorenceAnalyzer
from .config import Config, database_url
from .db import Database
from .metadata import MetadataWriter, remove_stale_temp_files
from .pipeline import Pipeline
from .watch import FolderWatcher

log = logging.getLogger(__name__)


@contextmanager
def open_pipeline(
    config: Config, analyzer: Analyzer | None = None, tag_threads: int | None = None
) -> Iterator[Pipeline]:
    """Database, model and exiftool, opened in the order that fails fastest.

    *analyzer* replaces the Florence-2 model (the load tests use a fast fake);
    *tag_threads* = 0 writes metadata in the caller's thread.
    """
    db = Database(database_url(config.index.database))
    # Two exiftool processes let metadata writes use both cores of a small machine.
    writer = MetadataWriter(config.metadata, processes=min(2, os.cpu_count() or 1)) if config.metadata.write else None
    try:
        if analyzer is None:
            analyzer = FlorenceAnalyzer(config.model)
            log.info("model: %s", analyzer.describe())
        pipeline = Pipeline(config, db, analyzer, writer, tag_threads)
        try:
            yield pipeline
        finally:
            pipeline.close()
    finally:
        if writer is not None:
            writer.close()
        db.close()


class Daemon:
    """Watch, reconcile, process; until asked to stop."""

    def __init__(self, config: Config, analyzer: Analyzer | None = None) -> None:
        self.config = config
        self.analyzer = analyzer
        self.stop_event = threading.Event()
        self.wakeup = threading.Event()

    def request_stop(self, signum: int | None = None, _frame: object = None) -> None:
        if not self.stop_event.is_set():
            log.info(
                "shutting down: finishing the current batch%s",
                f" (signal {signal.Signals(signum).name})" if signum else "",
            )
        self.stop_event.set()
        self.wakeup.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> None:
        folders = self.config.folders
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        log.info("watching: %s", ", ".join(str(f) for f in folders))
        log.info("index: %s", database_url(self.config.index.database))
        remove_stale_temp_files(folders)
        with open_pipeline(self.config, self.analyzer) as pipeline:
            pipeline.recover()
            watcher = FolderWatcher(
                folders,
                on_settled=lambda paths: self._queue(pipeline, paths),
                on_deleted=pipeline.forget,
                settle_seconds=self.config.watch.settle_seconds,
                polling=self.config.watch.polling,
                recursive=self.config.watch.recursive,
                follow_symlinks=self.config.watch.follow_symlinks,
            )
            watcher.start()
            try:
                queued = pipeline.offer(watcher.scan())  # files that arrived while we were down
                log.info("start-up scan: %d file(s) to process", queued)
                self._loop(pipeline)
            finally:
                watcher.stop()
        log.info("stopped")

    def _queue(self, pipeline: Pipeline, paths: list[str]) -> None:
        if pipeline.offer(paths):
            self.wakeup.set()

    def _loop(self, pipeline: Pipeline) -> None:
        while not self.stop_event.is_set():
            if pipeline.process_batch(self.stop_event):
                continue
            # Idle: sleep until a new file settles, or a retry falls due.
            self.wakeup.wait(timeout=1.0)
            self.wakeup.clear()
