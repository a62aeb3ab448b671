"""The systemd user service: the unit texts and ``install-service``.

One computer runs ``florence-watch.service`` (``run``: watch and work).
Several machines sharing one PostgreSQL index run the template
``florence-watch@.service`` instead, whose instance name is the role:
``florence-watch@watch`` on the host that has the folders (a NAS),
``florence-watch@work`` on each host with a GPU.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from daemon.config import xdg_home
from daemon.errors import FlorenceWatchError

UNIT_NAME = "florence-watch.service"
ROLE_UNIT_NAME = "florence-watch@.service"  # a template: florence-watch@watch, florence-watch@work
ROLES = ("all", "watch", "work")

# One text for both units; the template unit's instance name (%i) is the role.
UNIT_TEMPLATE = """\
[Unit]
Description={description}

[Service]
# READY=1 once the model is loaded and the folders are watched; WATCHDOG=1 from
# the main loop (also between the model's decoding steps): a daemon that hangs
# for WatchdogSec is restarted. The first start may download the model.
Type=notify
NotifyAccess=main
WatchdogSec=300
TimeoutStartSec=1h
ExecStart={exec_start}
Restart=on-failure
RestartSec=10
# Hardening that works in a user unit without namespaces (the watched folders,
# the index and the model cache stay writable; the GPU's device files reachable).
NoNewPrivileges=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
SystemCallArchitectures=native
# Plain lines on stderr go to the journal: journalctl --user -u {journal}
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
    """The unit of one computer doing everything (``florence-watch.service``)."""
    return UNIT_TEMPLATE.format(
        description="florence-watch: describe new images with Florence-2 and tag them",
        exec_start=exec_start,
        journal="florence-watch",
    )


def render_role_unit(exec_start: str = DEFAULT_EXEC_START) -> str:
    """The template unit whose instance name is the role (``florence-watch@.service``)."""
    return UNIT_TEMPLATE.format(
        description="florence-watch, role %i: one of several machines sharing one index",
        exec_start=f"{exec_start} --role %i",
        journal="florence-watch@%i",
    )


def unit_name(role: str = "all") -> str:
    """The unit a person enables for *role*: florence-watch, florence-watch@watch, florence-watch@work."""
    _check(role)
    return "florence-watch" if role == "all" else f"florence-watch@{role}"


def user_unit_dir() -> Path:
    return xdg_home("CONFIG") / "systemd" / "user"


def current_argv(config_path: str | None) -> list[str]:
    """This very installation of florence-watch, with its config file, as a command's first words."""
    exe = shutil.which("florence-watch")
    argv = [exe] if exe else [sys.executable, "-m", "daemon"]
    if config_path:
        argv += ["--config", str(Path(config_path).resolve())]
    return argv


def current_exec_start(config_path: str | None) -> str:
    """The command that runs this very installation of florence-watch."""
    # systemd reads % as a specifier and $ as a variable, even inside quotes.
    return shlex.join(current_argv(config_path)).replace("%", "%%").replace("$", "$$") + " run"


def remove(unit_dir: Path | None = None, role: str = "all") -> tuple[Path | None, list[str]]:
    """Delete the user unit for *role* and its enablement (what ``systemctl disable`` removes: older
    systemd cannot disable a unit whose file is gone); returns its path (None: there was none) and
    the commands that stop what runs."""
    _check(role)
    unit_dir = unit_dir or user_unit_dir()
    path = unit_dir / (UNIT_NAME if role == "all" else ROLE_UNIT_NAME)
    if not path.exists():
        return None, []
    running = ["florence-watch"] if role == "all" else [f"florence-watch@{r}" for r in ROLES[1:]]
    for name in running:
        link = unit_dir / "default.target.wants" / f"{name}.service"
        if os.path.lexists(link):
            link.unlink()
    path.unlink()
    return path, [*(f"systemctl --user stop {n}" for n in running), "systemctl --user daemon-reload"]


def install(config_path: str | None, unit_dir: Path | None = None, role: str = "all") -> tuple[Path, list[str]]:
    """Write the user unit for *role*; returns its path and the commands that enable it.

    ``all`` writes ``florence-watch.service``; ``watch`` and ``work`` write
    the template ``florence-watch@.service``, whose instance for the role
    the commands enable. A host that had the all-in-one unit enabled is told to
    disable it, or it would watch (or work) twice.
    """
    _check(role)
    unit_dir = unit_dir or user_unit_dir()
    unit_dir.mkdir(parents=True, exist_ok=True)
    exec_start = current_exec_start(config_path)
    name = unit_name(role)
    commands = ["systemctl --user daemon-reload"]
    if role == "all":
        path = unit_dir / UNIT_NAME
        path.write_text(render_unit(exec_start), encoding="utf-8")
        others = [f"florence-watch@{r}" for r in ROLES[1:] if _enabled(unit_dir, f"florence-watch@{r}.service")]
    else:
        path = unit_dir / ROLE_UNIT_NAME
        path.write_text(render_role_unit(exec_start), encoding="utf-8")
        others = ["florence-watch"] if _enabled(unit_dir, UNIT_NAME) else []
    commands += [f"systemctl --user disable --now {other}   # enabled before; {name} replaces it" for other in others]
    commands += [
        f"systemctl --user enable --now {name}",
        f"journalctl --user -u {name} -f   # follow its log",
    ]
    if role != "all":
        commands.append("loginctl enable-linger $USER   # keep it running while nobody is logged in")
    return path, commands


def _enabled(unit_dir: Path, unit: str) -> bool:
    """Whether ``systemctl --user enable`` linked *unit* into default.target (its [Install] target)."""
    return os.path.lexists(unit_dir / "default.target.wants" / unit)


def _check(role: str) -> None:
    if role not in ROLES:
        raise FlorenceWatchError(f"unknown role {role!r}: choose all, watch or work")
