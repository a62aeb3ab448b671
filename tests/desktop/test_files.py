"""``install-service --desktop`` and ``--remove``, and what ``doctor`` says of each piece.

The files are checked by the programs that read them: desktop-file-validate
(Debian's desktop-file-utils, installed by ``make test``) for both desktop
entries, and a real dbus-daemon for the activation file, with a config path
that needs quoting.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.desktop import files
from daemon.desktop.files import APP_ID, BUS_NAME, GNOME_KEY_FILE, GNOME_PATH, KRUNNER_PATH, desktop_exec
from daemon.errors import FlorenceWatchError
from daemon.service.unit import current_argv
from daemon.testing.helpers import wait_until
from tests.desktop.bus import KRUNNER, SessionBus, desktop_env

ODD_CONFIG = 'my "photos" $HOME 100% \\ done.toml'  # spaces, quotes, $, %, a backslash


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "system"))  # GNOME Shell's folders: none has ours yet
    monkeypatch.setenv("XDG_CURRENT_DESKTOP", "GNOME")
    monkeypatch.delenv("FLORENCE_WATCH_CONFIG", raising=False)
    return tmp_path / "data"


def _config(tmp_path: Path, name: str = "config.toml") -> Path:
    cfg = tmp_path / name
    cfg.write_text(f'[index]\ndatabase = "{tmp_path / "index.db"}"\n[search]\nsemantic = false\n')
    return cfg


def _doctor(cfg: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, tuple[str, str | None]]:
    import json

    main(["--config", str(cfg), "doctor", "--json"])
    checks = json.loads(capsys.readouterr().out)["checks"]
    names = {"desktop search", "D-Bus service", "desktop entry", "KRunner plugin", "GNOME key file", "GNOME provider"}
    return {c["name"]: (c["state"], c["fix"]) for c in checks if c["name"] in names}


def test_install_writes_four_files_the_desktop_reads_and_doctor_checks_each(
    tmp_path: Path, data_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path)
    assert _doctor(cfg, capsys) == {
        "desktop search": ("note", "florence-watch install-service --desktop")
    }  # nothing installed: a note, nothing failed

    assert main(["--config", str(cfg), "install-service", "--desktop"]) == 0
    out = capsys.readouterr().out
    written = [Path(line.removeprefix("wrote ")) for line in out.splitlines() if line.startswith("wrote ")]
    assert sorted(p.relative_to(data_home).as_posix() for p in written) == sorted(
        [
            f"dbus-1/services/{BUS_NAME}.service",
            f"applications/{APP_ID}.desktop",
            f"krunner/dbusplugins/{APP_ID}.desktop",
            GNOME_KEY_FILE,
        ]
    )
    system_copy = tmp_path / "system" / GNOME_KEY_FILE  # /usr/local/share is not in this $XDG_DATA_DIRS
    copy = f"sudo install -D -m 644 {data_home / GNOME_KEY_FILE} {system_copy}"
    assert copy in out

    keys = configparser.ConfigParser(interpolation=None)
    keys.optionxform = str  # type: ignore[assignment,method-assign]  # the keys are case-sensitive
    keys.read(data_home / GNOME_KEY_FILE)
    assert dict(keys["Shell Search Provider"]) == {
        "DesktopId": f"{APP_ID}.desktop",
        "BusName": BUS_NAME,
        "ObjectPath": GNOME_PATH,
        "Version": "2",
    }
    assert (data_home / "applications" / keys["Shell Search Provider"]["DesktopId"]).is_file()
    runner = configparser.ConfigParser(interpolation=None)
    runner.optionxform = str  # type: ignore[assignment,method-assign]
    runner.read(data_home / "krunner" / "dbusplugins" / f"{APP_ID}.desktop")
    entry = runner["Desktop Entry"]
    assert (entry["X-Plasma-API"], entry["X-Plasma-DBusRunner-Service"]) == ("DBus", BUS_NAME)
    assert (entry["X-Plasma-DBusRunner-Path"], entry["X-KDE-PluginInfo-EnabledByDefault"]) == (KRUNNER_PATH, "true")
    app = (data_home / "applications" / f"{APP_ID}.desktop").read_text()
    assert not {"NoDisplay", "Hidden", "OnlyShowIn", "NotShowIn"} & {line.split("=")[0] for line in app.splitlines()}

    found = _doctor(cfg, capsys)
    assert {k: v[0] for k, v in found.items()} == {
        "D-Bus service": "ok",
        "desktop entry": "ok",
        "KRunner plugin": "ok",
        "GNOME key file": "ok",
        "GNOME provider": "fail",
    }
    assert found["GNOME provider"][1] == copy
    monkeypatch.setenv("XDG_CURRENT_DESKTOP", "KDE")
    if shutil.which("gnome-shell") is None:  # Plasma without GNOME Shell: worth saying, nothing to fix
        assert _doctor(cfg, capsys)["GNOME provider"] == ("note", copy)
    subprocess.run(copy.removeprefix("sudo "), shell=True, check=True)  # the printed command, as root
    assert _doctor(cfg, capsys)["GNOME provider"][0] == "ok"

    other = _config(tmp_path, "other.toml")  # installed for another config: stale for this one
    assert _doctor(other, capsys)["D-Bus service"] == ("fail", "florence-watch install-service --desktop")

    (data_home / "krunner" / "dbusplugins" / f"{APP_ID}.desktop").unlink()
    assert _doctor(cfg, capsys)["KRunner plugin"][0] == "fail"

    assert main(["--config", str(cfg), "install-service", "--desktop", "--remove"]) == 0
    out = capsys.readouterr().out
    assert f"sudo rm {system_copy}" in out and "kquitapp6 krunner" in out
    assert not [p for p in written if p.exists()]
    system_copy.unlink()
    assert _doctor(cfg, capsys) == {"desktop search": ("note", "florence-watch install-service --desktop")}


def test_both_desktop_entries_pass_desktop_file_validate(tmp_path: Path, data_home: Path) -> None:
    validate = shutil.which("desktop-file-validate")
    if validate is None:
        pytest.fail("desktop-file-validate is missing: make test-tools installs desktop-file-utils")
    files.install(current_argv(str(_config(tmp_path, ODD_CONFIG))))
    for entry in (
        data_home / "applications" / f"{APP_ID}.desktop",
        data_home / "krunner/dbusplugins" / f"{APP_ID}.desktop",
    ):
        done = subprocess.run([validate, str(entry)], capture_output=True, text=True)
        assert done.returncode == 0 and not done.stdout.strip(), (entry, done.stdout, done.stderr)


def test_desktop_exec_quotes_as_the_specification_says() -> None:
    assert desktop_exec(["/usr/bin/fw", "open"]) == "/usr/bin/fw open"
    assert desktop_exec(["/a b/fw", "100%", 'say "hi"', "$HOME", "back\\slash"]) == (
        '"/a b/fw" 100%% "say \\\\"hi\\\\"" "\\\\$HOME" "back\\\\\\\\slash"'
    )


def test_the_bus_starts_the_provider_from_an_activation_file_with_an_awkward_config_path(
    tmp_path: Path, data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, ODD_CONFIG)
    assert main(["--config", str(cfg), "install-service", "--desktop"]) == 0
    service = (data_home / "dbus-1" / "services" / f"{BUS_NAME}.service").read_text()
    exec_line = next(line for line in service.splitlines() if line.startswith("Exec="))
    unescaped = exec_line.removeprefix("Exec=").replace("\\\\", "\\")  # the key file's escape, then the shell's
    assert shlex.split(unescaped)[-3:] == ["--config", str(cfg), "search-provider"]
    env = desktop_env(tmp_path)
    bus = SessionBus(env, tmp_path / "bus.log")
    try:
        assert [a[0] for a in bus.call(KRUNNER, "Actions")] == ["folder"]  # the bus parsed Exec and started it
        assert bus.call(KRUNNER, "Match", "s", "anything") == []  # an empty index answers nothing, not an error
    finally:
        bus.stop()


def test_install_service_remove_takes_the_unit_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FLORENCE_WATCH_CONFIG", raising=False)
    assert main(["install-service"]) == 0
    unit = tmp_path / "systemd" / "user" / "florence-watch.service"
    wants = tmp_path / "systemd" / "user" / "default.target.wants"
    wants.mkdir()
    (wants / "florence-watch.service").symlink_to(unit)  # what systemctl --user enable made
    capsys.readouterr()
    assert main(["install-service", "--remove"]) == 0
    out = capsys.readouterr().out
    assert not unit.exists() and not os.path.lexists(wants / "florence-watch.service")
    assert out.splitlines()[1:] == ["  systemctl --user stop florence-watch", "  systemctl --user daemon-reload"]
    assert main(["install-service", "--remove"]) == 0
    assert capsys.readouterr().out.strip() == "no such unit was installed"


def test_the_provider_gives_its_name_back_when_idle_and_the_bus_starts_it_again(
    tmp_path: Path, data_home: Path
) -> None:
    cfg = _config(tmp_path)
    assert main(["--config", str(cfg), "install-service", "--desktop"]) == 0
    bus = SessionBus(desktop_env(tmp_path), tmp_path / "bus.log")
    env = {**desktop_env(tmp_path), "DBUS_SESSION_BUS_ADDRESS": bus.address}
    provider = subprocess.Popen(
        [*current_argv(str(cfg)), "search-provider", "--idle-exit", "1"], env=env, stderr=subprocess.PIPE
    )
    try:
        assert wait_until(lambda: bus.provider_pid() == provider.pid, timeout=30)
        assert bus.call(KRUNNER, "Match", "s", "anything") == []
        assert provider.wait(timeout=15) == 0  # a second of quiet, then it left
        assert bus.provider_pid() is None
        assert bus.call(KRUNNER, "Match", "s", "anything") == []  # the bus started a new one
        assert bus.provider_pid() not in (None, provider.pid)
    finally:
        if provider.poll() is None:
            provider.kill()
        bus.stop()


def test_a_config_path_with_a_line_break_is_refused_not_written(tmp_path: Path, data_home: Path) -> None:
    with pytest.raises(FlorenceWatchError, match="control character"):
        files.install(current_argv(str(_config(tmp_path, "two\nlines.toml"))))
    assert not data_home.exists()
