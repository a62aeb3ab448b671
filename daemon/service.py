"""The systemd user service: the unit text and ``install-service``."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

UNIT_NAME = "florence-watch.service"

UNIT_TEMPLATE = """\
[Unit]
Description=florence-watch: describe new images with Florence-2 and tag them

[Service]
Type=simple
ExecStart={exec_start}
Restart=on-failure
RestartSec=10
# Plain lines on stderr go to the journal: journalctl --user -u florence-watch
Environment=PYTHONUNBUFFERED=1
# Describing images is background work: keep the desktop responsive.
Nice=10
IOSchedulingClass=idle
TimeoutStopSec=60

[Install]
WantedBy=default.target
"""

DEFAULT_EXEC_START = "%h/.local/bin/florence-watch run"


def render_unit(exec_start: str = DEFAULT_EXEC_START) -> str:
    return UNIT_TEMPLATE.format(exec_start=exec_start)


def user_unit_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "systemd" / "user"


def current_exec_start(config_path: str | None) -> str:
    """The command that runs this very installation of florence-watch."""
    exe = shutil.which("florence-watch")
    argv = [exe] if exe else [sys.executable, "-m", "daemon"]
    if config_path:
        argv += ["--config", str(Path(config_path).resolve())]
    return shlex.join(argv) + " run"


def install(config_path: str | None, unit_dir: Path | None = None) -> tuple[Path, list[str]]:
    """Write the user unit; returns its path and the commands that enable it."""
    unit_dir = unit_dir or user_unit_dir()
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / UNIT_NAME
    path.write_text(render_unit(current_exec_start(config_path)), encoding="utf-8")
    commands = [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now florence-watch",
        "journalctl --user -u florence-watch -f   # follow its log",
    ]
    return path, commands
