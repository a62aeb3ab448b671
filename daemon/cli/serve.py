"""The web page: ``serve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.base import command, open_db
from daemon.config import Config

if TYPE_CHECKING:
    pass


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
    from daemon.service.query import answering
    from daemon.web.serve import make_server, url_of

    # The page and the command line's searches share one warm embedding model and one copy of the vectors.
    with open_db(config) as db, answering(config, db, None, name="serve") as answerer:
        server = make_server(config, db, args.host, args.port, meaning=answerer.queries.meaning)
        print(f"serving the index at {url_of(server)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0
