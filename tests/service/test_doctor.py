"""``florence-watch doctor``: each check against real parts (exiftool, an SQLite index, folders, a socket)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from daemon.cli import main
from daemon.config import database_url
from daemon.index.db import Database
from daemon.service import doctor
from daemon.testing.helpers import REPO, write_config

NAMES = ["exiftool", "python", "cuda", "model", "embedding model", "inotify", "folder", "index", "service", "web port"]
NAMES += ["desktop search"]  # not installed: one note (tests/desktop/test_files.py checks the rest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy_config(root: Path, model: Path, port: int | None = None) -> Path:
    """A config whose every check passes here: an inbox, an SQLite index made once, a free web port."""
    cfg = write_config(root, model)
    with cfg.open("a", encoding="utf-8") as fh:
        fh.write(f"[serve]\nport = {port or free_port()}\n")
    (root / "inbox").mkdir(exist_ok=True)
    Database(database_url(str(root / "index.db"))).close()
    return cfg


def fake_proc(root: Path, watches: int, instances: int = 128) -> Path:
    limits = root / "proc" / "sys" / "fs" / "inotify"
    limits.mkdir(parents=True)
    (limits / "max_user_watches").write_text(f"{watches}\n")
    (limits / "max_user_instances").write_text(f"{instances}\n")
    return root / "proc"


@pytest.fixture(autouse=True)
def no_user_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The systemd unit is looked for here: none, whatever this machine's user has installed."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def doctor_json(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, object]]]:
    """Exit status and the checks of ``doctor --json``, by name (the folder check: the first folder's)."""
    status = main(["--config", str(cfg), "doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is (status == 0) and status in (0, 1)
    checks: dict[str, dict[str, object]] = {}
    for c in report["checks"]:
        checks.setdefault(c["name"], c)
    return status, checks


def test_healthy_config_exits_0(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = healthy_config(tmp_path, tiny_model)
    assert main(["--config", str(cfg), "doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"configuration: {cfg}" and out[-1] == "all is well"
    assert not any(line.startswith("FAIL") for line in out)
    assert f"ok    folder           {tmp_path / 'inbox'}: readable and writable" in out
    assert f"ok    model            {tiny_model}: the folder {tiny_model}" in out
    assert "note  cuda             no CUDA GPU: the model runs on the CPU" in out or any(
        line.startswith("ok    cuda ") for line in out
    )
    index_line = next(line for line in out if line.startswith("ok    index "))
    assert f"{tmp_path / 'index.db'}: opens, " in index_line and "migrations, all current; " in index_line
    version = subprocess.run(["exiftool", "-ver"], capture_output=True, text=True, check=True).stdout.strip()
    assert f"ok    exiftool         {version} ({shutil.which('exiftool')})" in out
    assert (
        f"note  service          no systemd user unit in {tmp_path / 'xdg/systemd/user'}: "
        "the daemon runs only when started by hand" in out
    )
    assert not list((tmp_path / "inbox").iterdir())  # the write probe is gone


def test_json_shape(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = healthy_config(tmp_path, tiny_model)
    assert main(["--config", str(cfg), "doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"ok", "checks"} and report["ok"] is True
    assert [c["name"] for c in report["checks"]] == NAMES  # one watched folder: one folder check
    for c in report["checks"]:
        assert set(c) == {"name", "ok", "state", "detail", "fix"}
        assert c["state"] in ("ok", "note") and c["ok"] is True and isinstance(c["detail"], str) and c["detail"]
        assert c["fix"] is None or c["state"] == "note"


EXIFTOOL_FIX = (
    "install exiftool: sudo apt-get install libimage-exiftool-perl (Fedora: sudo dnf install perl-Image-ExifTool, "
    "Arch: sudo pacman -S perl-image-exiftool, macOS: brew install exiftool), "
    "or set metadata.write = false to only index"
)


def test_exiftool_missing_from_path(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = healthy_config(tmp_path, tiny_model)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no exiftool (and no systemctl) here
    assert main(["--config", str(cfg), "doctor"]) == 1
    out = capsys.readouterr().out.splitlines()
    i = out.index("FAIL  exiftool         not on PATH: metadata cannot be written")
    assert out[i + 1] == f"{'':23}fix: {EXIFTOOL_FIX}"
    assert [line for line in out if line.startswith("FAIL")] == [out[i]]
    assert out[-1] == "1 problem(s) found"

    status, checks = doctor_json(cfg, capsys)
    assert status == 1 and checks["exiftool"]["fix"] == EXIFTOOL_FIX and checks["exiftool"]["ok"] is False


def test_low_inotify_limit(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = healthy_config(tmp_path, tiny_model)
    for i in range(12):  # 1 + 12 + 12 folders, past a limit of 8
        (tmp_path / "inbox" / f"{i:02d}" / "sub").mkdir(parents=True)
    monkeypatch.setattr(doctor, "PROC", fake_proc(tmp_path, watches=8))
    assert main(["--config", str(cfg), "doctor"]) == 1
    out = capsys.readouterr().out.splitlines()
    i = out.index(
        "FAIL  inotify          more than 8 folder(s) to watch under 1 watched folder(s); "
        "max_user_watches 8, max_user_instances 128: too few, florence-watch falls back to polling"
    )
    assert out[i + 1] == (
        f"{'':23}fix: sudo sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512; "
        "to keep them after a restart: printf 'fs.inotify.max_user_watches=524288\\n"
        "fs.inotify.max_user_instances=512\\n' | sudo tee /etc/sysctl.d/90-florence-watch.conf "
        "(or set watch.polling = true, which is slower)"
    )

    # Enough watches for the 25 folders: all is well again.
    monkeypatch.setattr(doctor, "PROC", fake_proc(tmp_path / "more", watches=25))
    status, checks = doctor_json(cfg, capsys)
    assert status == 0, checks
    assert checks["inotify"]["detail"] == (
        "25 folder(s) to watch under 1 watched folder(s); max_user_watches 25, max_user_instances 128"
    )


def test_web_port_in_use(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, checks = doctor_json(healthy_config(tmp_path, tiny_model, port), capsys)
    assert status == 1
    assert checks["web port"] == {
        "name": "web port",
        "ok": False,
        "state": "fail",
        "detail": f"127.0.0.1:{port} is in use by another program (a running `florence-watch serve`?)",
        "fix": f"stop it (ss -ltnp 'sport = :{port}' shows which), or set serve.port to a free port",
    }


def test_model_folder_missing(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = healthy_config(tmp_path, tiny_model)
    cfg.write_text(cfg.read_text().replace(str(tiny_model), str(tmp_path / "no-model")))
    status, checks = doctor_json(cfg, capsys)
    assert status == 1
    assert checks["model"]["detail"] == f"{tmp_path / 'no-model'}: no such folder"
    assert checks["model"]["fix"] == (
        f"set model.name in {cfg} to a folder holding a Florence-2 checkpoint in transformers' native format, "
        "or to a hub id such as florence-community/Florence-2-base"
    )


def test_index_made_by_a_newer_version(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = healthy_config(tmp_path, tiny_model)
    db = Database(database_url(str(tmp_path / "index.db")))
    with db.transaction(write=True) as s:
        s.execute(text("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_future', 0)"))
    db.close()
    status, checks = doctor_json(cfg, capsys)
    assert status == 1
    assert (
        checks["index"]["detail"] == f"{tmp_path / 'index.db'}: made by a newer florence-watch (migrations 9999_future)"
    )


# As root every folder is writable: the doctor runs in a child process that gives up root for
# nobody. The interpreter may live under root's home (pyenv), which nobody cannot enter: the
# child runs the doctor once as root (so every module it needs is loaded), then as nobody.
_AS_NOBODY = """
import contextlib, io, os, sys
sys.path.insert(0, sys.argv[1])
from daemon.cli import main
argv = ["--config", sys.argv[2], "doctor", "--json"]
with contextlib.redirect_stdout(io.StringIO()):
    main(argv)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(main(argv))
"""


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A folder nobody can reach (pytest's tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="fw-doctor-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


@pytest.mark.skipif(os.getuid() != 0, reason="gives up root for nobody")
def test_unwritable_watched_folder(shared_root: Path, tiny_model: Path) -> None:
    cfg = healthy_config(shared_root, tiny_model)
    inbox = shared_root / "inbox"
    inbox.chmod(0o755)  # root's: nobody reads it, cannot write it
    (shared_root / "index.db").unlink()
    os.chown(shared_root, 65534, -1)  # the index: nobody's to create
    proc = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, str(REPO), str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=shared_root,
        env={**os.environ, "XDG_CONFIG_HOME": str(shared_root / "xdg")},
    )
    assert proc.returncode == 1, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["folder"] == {
        "name": "folder",
        "ok": False,
        "state": "fail",
        "detail": f"{inbox}: nobody cannot write there (permission denied), so no metadata or sidecar can be written",
        "fix": f"give nobody write access: sudo chown -R nobody {inbox} (or chmod -R u+w), "
        "or set metadata.write = false to only index",
    }
    assert not any(str(c["detail"]).startswith("the check itself failed") for c in checks.values()), checks


def test_nvidia_driver_version_from_proc(tmp_path: Path) -> None:
    """The GPU line's driver comes from /proc/driver/nvidia/version (no GPU here to ask torch about)."""
    version = tmp_path / "driver" / "nvidia" / "version"
    version.parent.mkdir(parents=True)
    version.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)  "
        "Tue Mar  5 22:15:33 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert doctor._nvidia_driver(tmp_path) == "550.54.15"


def test_a_folder_the_reconcile_left_alone_is_shown(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.config import load_config
    from daemon.service.reconcile import reconcile

    cfg = healthy_config(tmp_path, tiny_model)
    (tmp_path / "inbox").rmdir()  # a share not mounted when the daemon started
    config = load_config(cfg)
    db = Database(database_url(config.index.database))
    try:
        reconcile(db, config)
    finally:
        db.close()
    main(["--config", str(cfg), "doctor"])
    out = capsys.readouterr().out.splitlines()
    assert (
        f"note  folder           {tmp_path / 'inbox'}: the last reconcile with the index left it alone "
        "(the folder is missing); nothing under it was removed" in out
    ), out
