"""A session bus of the tests' own (Debian's dbus-daemon), the shells' calls on it, and a viewer that records.

The bus reads activation files from ``$XDG_DATA_HOME/dbus-1/services`` (its
standard session service folders), so the provider the tests call is the one
``install-service --desktop`` installed, started by the bus as a desktop's
would start it. What opens a file is the real ``xdg-open``: it asks the XDG
MIME database for the default application, which the tests make a desktop
entry whose command appends its argument to a file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from daemon.desktop.files import BUS_NAME, GNOME_PATH, KRUNNER_PATH
from daemon.testing.helpers import wait_until

GNOME = ("org.gnome.Shell.SearchProvider2", GNOME_PATH)
KRUNNER = ("org.kde.krunner1", KRUNNER_PATH)


class SessionBus:
    """``dbus-daemon --session`` on a socket of its own; every process it starts sees *env*."""

    def __init__(self, env: dict[str, str], log: Path | None = None) -> None:
        if shutil.which("dbus-daemon") is None:
            pytest.fail("dbus-daemon is missing: make test-tools installs Debian's dbus")
        self.dir = Path(tempfile.mkdtemp(prefix="fw-bus-"))
        self.address = f"unix:path={self.dir / 'bus'}"
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={self.address}", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=open(log or os.devnull, "ab"),  # the provider's log too: the bus gives it its own stderr
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline(), "dbus-daemon did not start"

    def call(self, where: tuple[str, str], member: str, signature: str = "", *body: Any) -> Any:
        """One method call on the provider, as a shell makes it: the bus starts the provider if need be."""
        return asyncio.run(self._call(BUS_NAME, where[1], where[0], member, signature, list(body)))

    def provider_pid(self) -> int | None:
        try:
            pid = asyncio.run(
                self._call(
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "GetConnectionUnixProcessID",
                    "s",
                    [BUS_NAME],
                )
            )
        except RuntimeError:
            return None
        return int(pid)

    async def _call(self, dest: str, path: str, iface: str, member: str, signature: str, body: list[Any]) -> Any:
        bus = await MessageBus(bus_address=self.address).connect()
        try:
            msg = Message(destination=dest, path=path, interface=iface, member=member, signature=signature, body=body)
            reply = await bus.call(msg)
        finally:
            bus.disconnect()
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{reply.error_name}: {reply.body}")
        return reply.body[0] if len(reply.body) == 1 else reply.body or None

    def gdbus(self, where: tuple[str, str], member: str, *args: str) -> str:
        """The call made with GLib's GDBus, which GNOME Shell itself uses: its printed reply."""
        method = f"{where[0]}.{member}"
        done = subprocess.run(
            [
                "gdbus",
                "call",
                "--address",
                self.address,
                "--dest",
                BUS_NAME,
                "--object-path",
                where[1],
                "-m",
                method,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        pid = self.provider_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=15)
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


class Viewer:
    """The desktop's default application for images, folders and web pages: it records what it was given."""

    MIME = ("image/jpeg", "image/png", "image/webp", "inode/directory", "x-scheme-handler/http")

    def __init__(self, root: Path) -> None:
        self.log = root / "opened.txt"
        script = root / "viewer.sh"
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {self.log}\n')
        script.chmod(0o755)
        apps = root / "data" / "applications"
        apps.mkdir(parents=True, exist_ok=True)
        (apps / "recorder.desktop").write_text(
            f"[Desktop Entry]\nType=Application\nName=Recorder\nExec={script} %u\nMimeType={';'.join(self.MIME)};\n"
        )
        (root / "config").mkdir(exist_ok=True)
        lines = "".join(f"{m}=recorder.desktop\n" for m in self.MIME)
        (root / "config" / "mimeapps.list").write_text(f"[Default Applications]\n{lines}")

    def opened(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def desktop_env(root: Path) -> dict[str, str]:
    """The environment of a desktop session under *root*: data, config and cache folders, and a display
    (xdg-open asks the MIME database only when there is one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "XDG_CURRENT_DESKTOP", "DESKTOP_SESSION")}
    env.update(
        XDG_DATA_HOME=str(root / "data"),
        XDG_CONFIG_HOME=str(root / "config"),
        WAYLAND_DISPLAY="wayland-florence-test",
        PYTHONUNBUFFERED="1",
    )
    return env
