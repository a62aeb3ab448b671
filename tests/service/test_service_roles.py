"""install-service per role: the template unit florence-watch@.service, its instances, the commands printed."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon import cli
from daemon.errors import FlorenceWatchError
from daemon.service.unit import ROLE_UNIT_NAME, UNIT_NAME, install, render_role_unit, render_unit, unit_name
from daemon.testing.helpers import REPO, verify_unit


def exec_start(unit_text: str, instance: str | None = None) -> list[str]:
    """The ExecStart command as systemd runs it: %i is the instance name, %% a percent sign, $$ a dollar."""
    line = next(line for line in unit_text.splitlines() if line.startswith("ExecStart="))
    command = line.removeprefix("ExecStart=")
    if instance is not None:
        command = command.replace("%i", instance)
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(command)]


def test_repo_template_unit_is_what_install_service_renders() -> None:
    text = (REPO / "systemd" / ROLE_UNIT_NAME).read_text()
    assert text == render_role_unit()
    assert exec_start(text, "work")[-3:] == ["run", "--role", "work"]
    assert exec_start(text, "watch")[-3:] == ["run", "--role", "watch"]


def test_the_template_is_the_single_unit_plus_the_role() -> None:
    """Same command, restart policy, priorities and stop timeout as florence-watch.service."""
    single = {line for line in render_unit().splitlines() if not line.startswith(("Description=", "#"))}
    role = {line for line in render_role_unit().splitlines() if not line.startswith(("Description=", "#"))}
    assert role - single == {"ExecStart=%h/.local/bin/florence-watch run --role %i"}
    assert single - role == {"ExecStart=%h/.local/bin/florence-watch run"}


@pytest.mark.parametrize("role", ["work", "watch"])
def test_install_service_for_a_role(tmp_path: Path, role: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    units = tmp_path / "units"
    path, commands = install(str(config), unit_dir=units, role=role)
    assert path == units / ROLE_UNIT_NAME and not (units / UNIT_NAME).exists()
    argv = exec_start(path.read_text(), role)
    assert argv[-5:] == ["--config", str(config), "run", "--role", role]
    assert commands[:2] == ["systemctl --user daemon-reload", f"systemctl --user enable --now florence-watch@{role}"]
    assert commands[2] == f"journalctl --user -u florence-watch@{role} -f   # follow its log"
    assert commands[3].startswith("loginctl enable-linger $USER")
    verify_unit(tmp_path, units / f"florence-watch@{role}.service")  # the instance, as systemd builds it


def test_install_service_all_is_the_unit_of_one_computer(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    path, commands = install(str(config), tmp_path / "units")  # the call the CLI makes without --role
    text = path.read_text()
    assert path.name == UNIT_NAME and not (tmp_path / "units" / ROLE_UNIT_NAME).exists()
    assert text == render_unit(text.split("ExecStart=")[1].split("\n")[0])
    assert exec_start(text)[-3:] == ["--config", str(config), "run"]
    assert commands == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now florence-watch",
        "journalctl --user -u florence-watch -f   # follow its log",
    ]


def test_switching_a_host_to_a_role_disables_the_unit_it_had(tmp_path: Path) -> None:
    """A desktop that ran everything becomes a worker: the all-in-one unit must not run beside it."""
    units = tmp_path / "units"
    path, _ = install(None, units)
    wants = units / "default.target.wants"
    wants.mkdir()
    (wants / UNIT_NAME).symlink_to(path)  # what `systemctl --user enable florence-watch` leaves
    _, commands = install(None, units, role="work")
    assert commands[1] == (
        "systemctl --user disable --now florence-watch   # enabled before; florence-watch@work replaces it"
    )
    assert commands[2] == "systemctl --user enable --now florence-watch@work"

    (wants / UNIT_NAME).unlink()
    (wants / "florence-watch@work.service").symlink_to(units / ROLE_UNIT_NAME)
    _, commands = install(None, units, role="all")
    assert commands[1].startswith("systemctl --user disable --now florence-watch@work   #")
    _, commands = install(None, units, role="watch")  # a watcher beside a worker is two roles, not a conflict
    assert not any("disable" in c for c in commands)


def test_a_config_path_with_percent_and_dollar_reaches_the_command_intact(tmp_path: Path) -> None:
    folder = tmp_path / "100% $HOME"
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text("")
    path, _ = install(str(config), tmp_path / "units", role="work")
    text = path.read_text()
    assert "100%% $$HOME" in text
    assert exec_start(text, "work")[-5:] == ["--config", str(config), "run", "--role", "work"]
    verify_unit(tmp_path, tmp_path / "units" / "florence-watch@work.service")


def test_unknown_role() -> None:
    assert unit_name("watch") == "florence-watch@watch"
    with pytest.raises(FlorenceWatchError, match="unknown role 'gpu': choose all, watch or work"):
        install(None, Path("/nonexistent"), role="gpu")


def _cli_has_role() -> bool:
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return any("--role" in a.option_strings for a in sub.choices["install-service"]._actions)


@pytest.mark.skipif(not _cli_has_role(), reason="daemon/cli/__init__.py's install-service has no --role option yet")
def test_install_service_command_with_a_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FLORENCE_WATCH_CONFIG", raising=False)
    assert cli.main(["install-service", "--role", "work"]) == 0
    out = capsys.readouterr().out
    unit = tmp_path / "systemd" / "user" / ROLE_UNIT_NAME
    assert out.splitlines()[0] == f"wrote {unit}"
    assert "systemctl --user enable --now florence-watch@work" in out
    assert exec_start(unit.read_text(), "work")[-3:] == ["run", "--role", "work"]


def test_security_exposure_is_the_one_the_readme_quotes(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true` on the unit: the score README.md quotes, no worse."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit())
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)], capture_output=True, text=True
    ).stdout
    score = re.search(r"Overall exposure level for florence-watch\.service: (\d+\.\d+)", out)
    assert score is not None, out
    quoted = re.search(r"rates its exposure (\d+\.\d+)", (REPO / "README.md").read_text())
    assert quoted is not None and float(score[1]) <= float(quoted[1]), (score[1], quoted)
