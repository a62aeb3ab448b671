"""The thin CLI: help texts, JSON shapes, error messages, the systemd unit."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from daemon import cli
from daemon.cli import COMMANDS, build_parser, main
from daemon.config import database_url, load_config
from daemon.index import jobs
from daemon.index.db import Database, Job, Worker, now
from daemon.service.pipeline import Pipeline
from daemon.service.unit import UNIT_NAME, install, render_unit
from daemon.service.watch import walk_candidates
from daemon.tasks import TASKS
from daemon.testing.helpers import REPO, copy_corpus, verify_unit, write_config


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: florence-watch {command} ")
    assert "\nexample: florence-watch " in out


# The search language and ask's task table, as a person reads them in the command's own help.
SEARCH_TABLE = [
    "  red car            every word, in any field",
    '  "red car"          a phrase',
    '  caption:"red car"  in one field: caption: desc: text: (OCR) label: path:',
    "  -dog               must not match",
    "  cat OR dog         either",
]


def _task_rows() -> list[str]:
    return [rf"  {re.escape(t.aliases[0])} +{re.escape(t.token)} +(TEXT|--box)? +{re.escape(t.about)}" for t in TASKS]


def test_top_level_help_lists_each_command_with_its_summary_and_no_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    text = build_parser().format_help()
    # A command's entry: indented four, its name, then its whole summary on the same line.
    entries = [m.groups() for m in re.finditer(r"^    (\S+) +(\S.*)$", text, re.MULTILINE)]
    assert entries == [(c.name, c.summary) for c in COMMANDS.values()]
    assert all("\n" not in c.summary for c in COMMANDS.values())
    for row in SEARCH_TABLE:
        assert row.strip() not in text
    assert 'caption:"red car"' not in text and "tasks (alias, token" not in text
    assert not any(re.search(row.strip(), text) for row in _task_rows())
    assert "<CAPTION_TO_PHRASE_GROUNDING>" not in text


@pytest.mark.parametrize("command", ["search", "ask"])
def test_search_and_ask_help_show_their_tables_line_by_line(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # narrower than the task table: it must not be rewrapped anyway
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    if command == "search":
        start = lines.index(SEARCH_TABLE[0])
        assert lines[start : start + len(SEARCH_TABLE)] == SEARCH_TABLE
    else:
        start = lines.index("tasks (alias, token, input, what it gives):") + 1
        rows = _task_rows()
        for line, row in zip(lines[start : start + len(rows)], rows, strict=True):
            assert re.fullmatch(row, line), (line, row)


def test_progress_bar_is_tqdm_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with cli.base.progress_bar() as progress:  # stderr is captured here: not a terminal
        assert progress is None

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with cli.base.progress_bar() as progress:
        assert progress is not None
        progress(2, 4)
        progress(5, 5)  # the queue grew while it drained
    last = err.getvalue().rstrip("\n").rsplit("\r", 1)[-1]
    assert "100%" in last and "5/5" in last


def test_missing_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "status"]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.toml'}: (file): no such file\n"


def test_bad_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[index]\ndatabse = 'x'\n")
    assert main(["--config", str(cfg), "status"]) == 1
    assert (
        capsys.readouterr().err
        == f"error: {cfg}: index.databse: unknown key (known: database, max_attempts, lease_seconds, path_map)\n"
    )


def test_show_of_an_unknown_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--database", str(tmp_path / "i.db"), "show", str(tmp_path / "x.jpg")]) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'x.jpg'}: not in the index (is it inside a watched folder? try `florence-watch scan`)\n"
    )


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_missing_model_stops_with_advice_and_no_traceback(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tmp_path / "no-model")
    (tmp_path / "inbox").mkdir()
    proc = run_cli("--config", str(cfg), "scan", str(tmp_path / "inbox"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot load the model {str(tmp_path / 'no-model')!r}: no such folder. Connect to the internet once "
        "so it can be downloaded into the Hugging Face cache, or set model.name in config.toml to a local folder "
        "holding a Florence-2 checkpoint"
    )


def test_scan_then_status_show_search_json(tmp_path: Path, tiny_model: Path) -> None:
    cfg = write_config(tmp_path, tiny_model)
    files = copy_corpus(["pillow/hopper.jpg", "pillow/bad/truncated_jpeg.jpg"], tmp_path / "inbox")
    scan = run_cli("--config", str(cfg), "scan", str(tmp_path / "inbox"))
    assert scan.returncode == 0, scan.stderr
    assert scan.stdout.strip() == "indexed 1, failed 1, pending 0"

    status = json.loads(run_cli("--config", str(cfg), "status", "--json").stdout)
    assert {k: status[k] for k in ("indexed", "pending", "failed")} == {"indexed": 1, "pending": 0, "failed": 1}
    assert status["failures"] == [
        {"path": str(files[1]), "reason": "corrupt or truncated image: image file is truncated (8 bytes not processed)"}
    ]

    show = json.loads(run_cli("--config", str(cfg), "show", str(files[0]), "--json").stdout)
    assert {"path", "sha256", "caption", "description", "keywords", "ocr", "objects", "model"} <= set(show)
    assert show["path"] == str(files[0]) and show["model"] == str(tiny_model) and show["caption"]
    for obj in show["objects"]:
        assert set(obj) == {"label", "box"} and len(obj["box"]) == 4

    word = show["caption"].split()[0]
    hits = json.loads(run_cli("--config", str(cfg), "search", word, "--json").stdout)
    assert hits and hits[0]["path"] == str(files[0])
    assert set(hits[0]) == {"path", "page", "caption", "score", "snippet"} and hits[0]["caption"] == show["caption"]
    assert hits[0]["page"] is None  # an image has no pages
    assert "[" in hits[0]["snippet"] and "]" in hits[0]["snippet"]  # the matched word is marked
    listed = run_cli("--config", str(cfg), "search", word, "--folder", str(tmp_path / "inbox")).stdout.splitlines()
    assert listed[0] == str(files[0]) and listed[-1] == f"    {show['caption']}"
    elsewhere = run_cli("--config", str(cfg), "search", word, "--folder", str(tmp_path / "elsewhere"))
    assert elsewhere.stdout == "" and elsewhere.stderr.strip() == "no matches"
    bad = run_cli("--config", str(cfg), "search", word, "--since", "yesterday")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --since 'yesterday': not a date")

    text = run_cli("--config", str(cfg), "show", str(files[0])).stdout
    assert text.splitlines()[0] == f"path         {files[0]}"


def test_repo_unit_file_is_what_install_service_renders() -> None:
    assert (REPO / "systemd" / UNIT_NAME).read_text() == render_unit()
    assert "WantedBy=default.target" in render_unit() and "Restart=on-failure" in render_unit()


def test_install_service_writes_a_unit_systemd_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    path, commands = install(str(config), unit_dir=tmp_path / "units")
    text = path.read_text()
    assert f"--config {config}" in text and text.rstrip().endswith("WantedBy=default.target")
    assert commands[0] == "systemctl --user daemon-reload"
    assert commands[1] == "systemctl --user enable --now florence-watch"
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_line.endswith(" run")
    verify_unit(tmp_path, path)


def test_install_service_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FLORENCE_WATCH_CONFIG", raising=False)
    assert main(["install-service"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"wrote {tmp_path / 'systemd' / 'user' / UNIT_NAME}"
    assert "systemctl --user enable --now florence-watch" in out


def test_retag_dry_run_then_for_real_without_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], open_test_pipeline: Callable[..., Pipeline]
) -> None:
    inbox = tmp_path / "inbox"
    [path] = copy_corpus(["exiftool/XMP.jpg"], inbox)
    cfg = tmp_path / "config.toml"
    base = f'[watch]\nfolders = ["{inbox}"]\n[index]\ndatabase = "{tmp_path / "i.db"}"\n'
    cfg.write_text(base)
    pipeline = open_test_pipeline(load_config(cfg))  # the fake model, the real exiftool
    pipeline.offer(walk_candidates(inbox))
    pipeline.drain()
    before = path.read_bytes()

    # The user asks for a keyword parent and leaves alt text alone from now on.
    cfg.write_text(base + '[metadata]\nkeyword_parent = "florence"\nalt_text = "off"\n')
    assert main(["--config", str(cfg), "retag", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == str(path)
    assert (
        "  XMP-lr:HierarchicalSubject: 'bright thing, ExifTool, Test, XMP' -> "
        "'ExifTool, Test, XMP, florence|bright thing'" in out
    )
    assert "XMP-dc:Description: kept, a person wrote it" in out
    assert err.strip() == "1 indexed file(s): 1 would change, 0 failed"
    assert path.read_bytes() == before  # a dry run writes nothing

    assert main(["--config", str(cfg), "retag", str(inbox)]) == 0
    assert capsys.readouterr().err.strip() == "1 indexed file(s): 1 changed, 0 failed"
    got = subprocess.run(
        ["exiftool", "-j", "-XMP-lr:HierarchicalSubject", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(got)[0]["HierarchicalSubject"] == ["ExifTool", "Test", "XMP", "florence|bright thing"]

    assert main(["--config", str(cfg), "show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "in the file now / what florence-watch wrote:" in shown
    assert (
        "XMP-lr:HierarchicalSubject\n      now:   ExifTool, Test, XMP, florence|bright thing\n"
        "      wrote: ExifTool, Test, XMP, florence|bright thing\n" in shown
    )
    assert main(["--config", str(cfg), "show", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["in_file"]["XMP-dc:Subject"] == ["ExifTool", "Test", "XMP", "bright thing"]
    assert data["metadata"]["written"]["keywords"] == ["bright thing"]


def test_search_with_nothing_to_search_for_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "index.db")
    for query in ([], ['"'], ["--"]):
        assert main(["--database", db, "search", *query]) == 1
        assert capsys.readouterr().err == "error: nothing to search for: give words, or a filter such as --folder\n"
    assert main(["--database", db, "search", "--has-text"]) == 0  # a filter alone is a search
    assert capsys.readouterr().err == "no matches\n"


def test_status_lists_retries_and_the_queue_eta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job given back with a delay and a reason, and one whose attempt failed, show as retrying (one
    given back at shutdown or queued anew does not); with workers' rates, the queue gets an ETA."""
    database = str(tmp_path / "index.db")
    db = Database(database_url(database))
    with db.transaction(write=True) as s:
        jobs.enqueue(s, [f"/photos/{n}.jpg" for n in ("a", "b", "c", "d")])
    with db.transaction(write=True) as s:
        claimed = {j.path: j.id for j in jobs.claim(s, 4, owner="other:1:1")}
    with db.transaction(write=True) as s:
        jobs.release(s, [claimed["/photos/a.jpg"]], delay_s=600, reason="not visible on this host")
        jobs.fail(s, claimed["/photos/b.jpg"], "cannot decode: truncated", max_attempts=3)
        b_due = s.scalar(select(Job.not_before).where(Job.path == "/photos/b.jpg"))
        jobs.release(s, [claimed["/photos/c.jpg"]])  # a shutdown: no reason, not a retry
        jobs.fail(s, claimed["/photos/d.jpg"], "cannot decode: truncated", max_attempts=3)
    with db.transaction(write=True) as s:
        jobs.enqueue(s, ["/photos/d.jpg"])  # changed again: a fresh start, not a retry
    db.close()

    def status() -> tuple[list[str], dict[str, Any]]:
        assert main(["--database", database, "status"]) == 0
        text = capsys.readouterr().out.splitlines()
        assert main(["--database", database, "status", "--json"]) == 0
        return text, json.loads(capsys.readouterr().out)

    text, st = status()
    assert "throughput: no worker running; 4 image(s) wait for `florence-watch run`" in text
    assert st["throughput"] == {"to_do": 4, "live_workers": 0, "images_per_s": 0.0, "eta_seconds": None}
    # Soonest first: b's first retry is 5 s away, a's in 10 minutes.
    i = text.index("  retrying: /photos/b.jpg")
    assert re.fullmatch(
        r" {10}1 attempt\(s\) failed, (next try in [1-5] s|due now): cannot decode: truncated", text[i + 1]
    )
    assert text[i + 2 : i + 4] == [
        "  retrying: /photos/a.jpg",
        "          given back, next try in 10 min: not visible on this host",
    ]
    assert st["retrying"]["count"] == 2
    assert [{k: r[k] for k in ("path", "attempts", "next_try", "reason")} for r in st["retrying"]["jobs"]] == [
        {"path": "/photos/b.jpg", "attempts": 1, "next_try": b_due, "reason": "cannot decode: truncated"},
        {
            "path": "/photos/a.jpg",
            "attempts": 0,
            "next_try": pytest.approx(now() + 600, abs=30),
            "reason": "not visible on this host",
        },
    ]
    assert 0 < st["retrying"]["jobs"][1]["next_try_in_seconds"] <= 600

    # Two live workers at 1.5 and 0.5 images/s, a watcher and one silent for longer than a lease: 4 / 2.0 = 2 s.
    db = Database(database_url(database))
    with db.transaction(write=True) as s:
        for wid, role, rate, age in (
            ("h:1:1", "work", 1.5, 1),
            ("h:2:1", "all", 0.5, 5),
            ("h:3:1", "watch", 0.0, 1),
            ("h:4:1", "work", 9.0, 600),
        ):
            s.add(
                Worker(
                    id=wid,
                    host="h",
                    pid=int(wid.split(":")[1]),
                    role=role,
                    device="cpu",
                    images_per_s=rate,
                    heartbeat=now() - age,
                )
            )
    db.close()
    text, st = status()
    assert "throughput: 2.00 images/s from 2 worker(s); ETA 2 s for 4 image(s)" in text
    assert st["throughput"] == {"to_do": 4, "live_workers": 2, "images_per_s": 2.0, "eta_seconds": 2.0}
