"""Open what a person picked in a search bar: a photo, its folder, or the web page's search.

``xdg-open`` hands a file to the desktop's default application for its type
(the viewer the person chose in GNOME's or KDE's settings), as GNOME Files
and Dolphin do. The web page is the daemon's ``serve``; when nothing answers
on its port, it is started here, in its own session, so that it outlives
this provider.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

from daemon.config import Config, xdg_home
from daemon.files import shown

log = logging.getLogger(__name__)

PAGE_START_S = 20.0  # the web page loads the index (and the vectors) before it listens


def open_with_desktop(target: str) -> bool:
    """Hand *target* (an absolute path or an http URL) to the desktop's default application; False,
    logged, if it cannot."""
    if not (os.path.isabs(target) or target.startswith("http://")):  # never an option to xdg-open
        log.error("refused to open %r: not an absolute path", shown(target))
        return False
    opener = shutil.which("xdg-open")
    if opener is None:
        log.error("cannot open %s: xdg-open is not installed (Debian: apt install xdg-utils)", shown(target))
        return False
    subprocess.Popen(
        [opener, target],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the viewer is the person's, not a child that dies with this provider
    )
    return True


def _host(config: Config) -> str:
    """Where this computer reaches the page: a page listening on every address is on loopback too."""
    return "127.0.0.1" if config.serve.host in ("", "0.0.0.0", "::") else config.serve.host


def page_url(config: Config, query: str = "") -> str:
    """The web page's search for *query* on this computer."""
    host = _host(config)
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    return f"http://{host}:{config.serve.port}/" + (f"?{urlencode({'q': query})}" if query else "")


def open_page(config: Config, config_file: str | None, query: str = "") -> bool:
    """Open the web page's search for *query*, starting ``serve`` first if nothing listens on its port."""
    if not _listening(config) and not _start_page(config, config_file):
        return False
    return open_with_desktop(page_url(config, query))


def _listening(config: Config) -> bool:
    try:
        with socket.create_connection((_host(config), config.serve.port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_page(config: Config, config_file: str | None) -> bool:
    log_path = xdg_home("STATE") / "florence-watch" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "daemon", *(["--config", config_file] if config_file else []), "serve"]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + PAGE_START_S
    while time.monotonic() < deadline:
        if _listening(config):
            return True
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    log.error("the web page did not start on port %d; see %s", config.serve.port, log_path)
    return False


def folder_of(path: str) -> str:
    return str(Path(path).parent)
