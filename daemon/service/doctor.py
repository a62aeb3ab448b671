"""``florence-watch doctor``: is this computer ready to run the daemon, and if not, what to do.

Each check is a small function of the configuration that returns what it
found: ``ok``, a ``note`` (worth knowing, nothing to fix: no GPU, no systemd
unit yet) or a ``fail``, with the fix a person can type. ``CHECKS`` lists
them in the order they print. Nothing here downloads, and nothing is
written except a probe file in each watched folder (removed at once) and,
as every command does, the index's pending migrations.
"""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
import platform
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import Config, database_url
from daemon.service.watch import walk_folders

log = logging.getLogger(__name__)

# Where the kernel's settings are read; a test points it at a folder of its own.
PROC = Path("/proc")

MIN_FREE_BYTES = 100 << 20  # below this the index cannot grow for long (SQLite's WAL, the thumbnails)
WATCHES_TO_SET = 524288  # what the fix suggests, unless the folders need more
INSTANCES_TO_SET = 512
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

EXIFTOOL_FIX = (
    "install exiftool: sudo apt-get install libimage-exiftool-perl (Fedora: sudo dnf install perl-Image-ExifTool, "
    "Arch: sudo pacman -S perl-image-exiftool, macOS: brew install exiftool), "
    "or set metadata.write = false to only index"
)
SETUP_FIX = "run `make setup` in the florence-watch checkout (it installs torch and transformers into .venv)"


@dataclass(frozen=True)
class Check:
    """What one check found: *state* is ``ok``, ``note`` (nothing to fix) or ``fail`` (with a *fix*)."""

    name: str
    state: str
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.state != "fail"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "state": self.state, "detail": self.detail, "fix": self.fix}


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def note(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name, "note", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


@dataclass(frozen=True)
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All is well: no check failed (notes allowed)."""
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """``doctor --json``: {"ok", "checks": [{"name", "ok", "state", "detail", "fix"}]}."""
        return {"ok": self.ok, "checks": [c.as_dict() for c in self.checks]}


@dataclass(frozen=True)
class Context:
    config: Config
    proc: Path


CheckFunction = Callable[[Context], Check | list[Check]]


def diagnose(config: Config, proc: Path | None = None, more: list[tuple[str, CheckFunction]] | None = None) -> Report:
    """Run every check in ``CHECKS``, then *more* (a higher layer's: the desktop search); a check that
    breaks is reported as failed, never raised."""
    ctx = Context(config, proc or PROC)
    checks: list[Check] = []
    for name, check in [*CHECKS, *(more or [])]:
        try:
            found = check(ctx)
        except Exception as exc:  # one broken check must not hide the others' findings
            log.debug("the %s check broke", name, exc_info=True)
            found = fail(name, f"the check itself failed: {type(exc).__name__}: {exc}", "run with -v and report it")
        checks.extend(found if isinstance(found, list) else [found])
    return Report(checks)


# --- the checks, in the order CHECKS runs them -----------------------------------------------


def check_exiftool(ctx: Context) -> Check:
    """exiftool on PATH, and its version (it writes the metadata; without it florence-watch only indexes)."""
    exe = shutil.which("exiftool")
    needed = ctx.config.metadata.write
    if exe is None:
        if not needed:
            return note("exiftool", "not on PATH; metadata.write = false, so only the index is kept")
        return fail("exiftool", "not on PATH: metadata cannot be written", EXIFTOOL_FIX)
    try:
        proc = subprocess.run([exe, "-ver"], capture_output=True, text=True, timeout=30)
        version, why = proc.stdout.strip(), (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
    except (OSError, subprocess.TimeoutExpired) as exc:
        version, why = "", str(exc)
    if not version or proc.returncode != 0:
        return (fail if needed else note)("exiftool", f"{exe} does not run: {why}", EXIFTOOL_FIX)
    return ok("exiftool", f"{version} ({exe})")


def check_versions(ctx: Context) -> Check:
    """Python, torch and transformers: what runs the model."""
    found, missing = [f"Python {platform.python_version()}"], []
    for dist in ("torch", "transformers"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        return fail("python", f"{', '.join(found)}; not installed: {', '.join(missing)}", SETUP_FIX)
    return ok("python", ", ".join(found))


def check_cuda(ctx: Context) -> Check:
    """The GPU the model would use: name, driver, free memory, bf16/fp16; no GPU is a note unless asked for."""
    import torch

    device = ctx.config.model.device
    if not torch.cuda.is_available():
        if not device.startswith("cuda"):
            return note("cuda", "no CUDA GPU: the model runs on the CPU")
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch finds no GPU or driver"
        return fail(
            "cuda",
            f"model.device = {device!r} but there is no CUDA GPU ({why})",
            "install the NVIDIA driver and a CUDA build of torch (pip install torch from "
            'https://download.pytorch.org/whl/), or set model.device = "auto" to use the CPU',
        )
    index = int(device.partition(":")[2] or torch.cuda.current_device()) if device.startswith("cuda") else 0
    if index >= torch.cuda.device_count():
        return fail(
            "cuda",
            f"model.device = {device!r} but torch sees {torch.cuda.device_count()} GPU(s)",
            'set model.device = "cuda" (the first GPU) or "cuda:N" with N below the number of GPUs',
        )
    free, total = torch.cuda.mem_get_info(index)
    major, minor = torch.cuda.get_device_capability(index)
    bf16 = torch.cuda.is_bf16_supported()
    fp16 = (major, minor) >= (5, 3)
    detail = (
        f"{torch.cuda.get_device_name(index)} (cuda:{index}, compute {major}.{minor}), "
        f"driver {_nvidia_driver(ctx.proc)}, CUDA {torch.version.cuda}, "
        f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free, "
        f"bf16 {'yes' if bf16 else 'no'}, fp16 {'yes' if fp16 else 'no'}"
    )
    if ctx.config.model.dtype == "bfloat16" and not bf16:
        return fail("cuda", detail, 'this GPU has no bf16: set model.dtype = "float16" (or "auto")')
    return ok("cuda", detail)


def _nvidia_driver(proc: Path) -> str:
    """The NVIDIA kernel driver's version, from /proc or nvidia-smi; "unknown" without either."""
    try:
        words = (proc / "driver" / "nvidia" / "version").read_text(encoding="utf-8").split()
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..."
        return next(w for w in words if w[:1].isdigit() and "." in w)
    except (OSError, StopIteration):
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
            ).stdout.split()
            return out[0] if out else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "unknown"


def check_model(ctx: Context) -> Check:
    """The Florence-2 checkpoint ``run`` would load, on disk (a folder, or the Hugging Face cache)."""
    from daemon.model.analyze import resolve_model_name

    cfg = ctx.config
    name = resolve_model_name(cfg.model.name, _device(cfg.model.device))
    shown = f"{name} (model.name = auto)" if cfg.model.name == "auto" else name
    problem, where = _locate(name)
    if problem is None:
        return ok("model", f"{shown}: {where}")
    if where == "folder":
        fix = (
            f"set model.name {_in(cfg)} to a folder holding a Florence-2 checkpoint in transformers' "
            "native format, or to a hub id such as florence-community/Florence-2-base"
        )
    else:
        fix = (
            f"connect to the internet once and start florence-watch: it downloads {name} into the Hugging Face "
            "cache; or set model.name to a local folder holding a Florence-2 checkpoint"
        )
    return fail("model", f"{shown}: {problem}", fix)


def check_embedding_model(ctx: Context) -> Check:
    """The sentence-embedding model of search by meaning; without it search is by words (a note)."""
    search = ctx.config.search
    if not search.semantic:
        return note("embedding model", "search.semantic = false: search is by words")
    problem, where = _locate(search.embedding_model)
    if problem is None:
        return ok("embedding model", f"{search.embedding_model}: {where}")
    return note(
        "embedding model",
        f"{search.embedding_model}: {problem}; until it is there, search is by words",
        "connect to the internet once and start florence-watch (it downloads the model), "
        "or set search.embedding_model to a local folder",
    )


def _device(device: str) -> str:
    """model.device as ``run`` resolves it, without failing on a missing GPU (check_cuda says that)."""
    from daemon.model.analyze import resolve_device

    return resolve_device(device) if device == "auto" else device


def _locate(name: str) -> tuple[str | None, str]:
    """(None, where it is) for a checkpoint on disk; else (what is wrong, "folder" or "cache")."""
    from daemon.model import hub

    folder = Path(name).expanduser()
    try:
        local = hub.is_local(name)
    except OSError:  # it names a path (hub ids are owner/name): one this user cannot reach
        local = True
    if local:
        try:
            if not folder.is_dir():
                return "no such folder", "folder"
            if not (folder / "config.json").is_file():
                return "no config.json there: not a checkpoint folder", "folder"
            if not any((folder / w).is_file() for w in WEIGHT_FILES):
                return "no weights there (model.safetensors)", "folder"
        except OSError as exc:  # a folder on the way that this user cannot enter
            return f"{_user()} cannot read it ({exc.strerror or exc})", "folder"
        return None, f"the folder {folder}"
    # The cache only, by its layout: never a request to the hub.
    from huggingface_hub import try_to_load_from_cache

    config_file = try_to_load_from_cache(name, "config.json")
    if not isinstance(config_file, str):
        return "not in the local Hugging Face cache", "cache"
    if not any(isinstance(try_to_load_from_cache(name, w), str) for w in WEIGHT_FILES):
        return "in the Hugging Face cache without its weights (an interrupted download?)", "cache"
    return None, f"in the Hugging Face cache ({Path(config_file).parent})"


def check_inotify(ctx: Context) -> Check:
    """The kernel's inotify limits against the folders to watch (one watch per folder, one instance per root)."""
    cfg = ctx.config.watch
    if cfg.polling:
        return note("inotify", "watch.polling = true: the folders are polled, inotify is not used")
    limits = ctx.proc / "sys" / "fs" / "inotify"
    try:
        watches = int((limits / "max_user_watches").read_text(encoding="ascii"))
        instances = int((limits / "max_user_instances").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return note("inotify", f"no inotify limits at {limits} (not Linux?): the folders may be polled")
    roots = ctx.config.folders
    count = _count_folders(roots, cfg.recursive, cfg.follow_symlinks, stop_after=watches)
    counted = f"more than {watches}" if count > watches else str(count)
    detail = (
        f"{counted} folder(s) to watch under {len(roots)} watched folder(s); "
        f"max_user_watches {watches}, max_user_instances {instances}"
    )
    if count <= watches and len(roots) <= instances:
        return ok("inotify", detail)
    want_watches = max(WATCHES_TO_SET, watches, 2 * count)
    want_instances = max(INSTANCES_TO_SET, instances, 2 * len(roots))
    settings = f"fs.inotify.max_user_watches={want_watches} fs.inotify.max_user_instances={want_instances}"
    lines = "\\n".join(settings.split())
    fix = (
        f"sudo sysctl {settings}; to keep them after a restart: "
        f"printf '{lines}\\n' | sudo tee /etc/sysctl.d/90-florence-watch.conf "
        "(or set watch.polling = true, which is slower)"
    )
    return fail("inotify", detail + ": too few, florence-watch falls back to polling", fix)


def _count_folders(roots: list[Path], recursive: bool, follow_symlinks: bool, stop_after: int) -> int:
    """Folders inotify would watch under *roots* (hidden ones too), counting no further than past *stop_after*."""
    count = 0
    for root in roots:
        if not root.is_dir():
            continue
        if not recursive:
            count += 1
            continue
        for _ in walk_folders(root, follow_symlinks):
            count += 1
            if count > stop_after:
                return count
    return count


def check_folders(ctx: Context) -> list[Check]:
    """Each watched folder: there, readable, and writable when metadata is written into the files.

    And each one the last reconcile left alone (missing, an empty mount point, an I/O error).
    """
    from daemon.service.reconcile import last

    skipped = (last(ctx.config) or {}).get("skipped")
    if not isinstance(skipped, dict):
        skipped = {}
    checks = [_check_folder(folder, ctx.config) for folder in ctx.config.folders]
    return checks + [
        note(
            "folder",
            f"{folder}: the last reconcile with the index left it alone ({why}); nothing under it was removed",
            "mount it or bring it back; the running daemon reconciles it when it returns",
        )
        for folder, why in skipped.items()
    ]


def _check_folder(folder: Path, config: Config) -> Check:
    user = _user()
    try:
        folder.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a folder on the way that this user cannot enter
        return fail("folder", f"{folder}: {user} cannot reach it ({exc.strerror or exc})", _access_fix(user, folder))
    if not folder.exists():
        parent = _nearest_folder(folder)
        if os.access(parent, os.W_OK | os.X_OK):  # the watcher makes it at start
            return note("folder", f"{folder}: not there yet; `run` creates it", f"mkdir -p {folder}")
        return fail(
            "folder",
            f"{folder}: no such folder, and {user} cannot create it in {parent}",
            f"mkdir -p {folder} as a user who can, then give it to {user}; or correct watch.folders {_in(config)}",
        )
    if not folder.is_dir():
        return fail("folder", f"{folder}: not a folder", f"correct watch.folders {_in(config)}")
    if not os.access(folder, os.R_OK | os.X_OK):
        return fail("folder", f"{folder}: {user} cannot read it", _access_fix(user, folder))
    if not config.metadata.write:
        return ok("folder", f"{folder}: readable (metadata.write = false: nothing is written there)")
    problem = _write_probe(folder)
    if problem:
        return fail(
            "folder",
            f"{folder}: {user} cannot write there ({problem}), so no metadata or sidecar can be written",
            f"give {user} write access: sudo chown -R {user} {folder} (or chmod -R u+w), "
            "or set metadata.write = false to only index",
        )
    return ok("folder", f"{folder}: readable and writable")


def _access_fix(user: str, folder: Path) -> str:
    return f"give {user} access to {folder} and the folders above it (ls -ld each; chmod o+rx or chown {user})"


def _in(config: Config) -> str:
    """Where a setting is changed: the configuration file in use, or the one to make."""
    if config.source.startswith("<"):
        return "in a config file (~/.config/florence-watch/config.toml)"
    return f"in {config.source}"


def _write_probe(folder: Path) -> str | None:
    """None when a file can be made in *folder* (then removed), else why not."""
    if not os.access(folder, os.W_OK):
        return "permission denied"
    try:
        # A dot-file: the watcher ignores it.
        fd, probe = tempfile.mkstemp(prefix=".florence-watch-doctor-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    return None


def _user() -> str:
    """Who runs this (by uid: $USER may be someone else's after su)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no name
        return str(os.geteuid())


def check_index(ctx: Context) -> Check:
    """The index opens, its migrations are all known to this version, and the disk it is on has room."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from daemon.errors import DatabaseError
    from daemon.index.db import MIGRATIONS, Database, display_url

    url = database_url(ctx.config.index.database)
    shown = display_url(url)
    sqlite_file = Path(make_url(url).database or "") if url.startswith("sqlite") else None
    if sqlite_file is not None and not sqlite_file.exists():
        return _index_not_created(ctx, sqlite_file)
    try:
        db = Database(url)  # applies pending migrations, as every command does
    except DatabaseError as exc:
        fix = (
            f"check that {_user()} can read and write {sqlite_file} and its folder, or set index.database"
            if sqlite_file
            else "check that the PostgreSQL server runs and that index.database's user, password and database are right"
        )
        return fail("index", str(exc), fix)
    try:
        with db.transaction() as s:
            applied = set(s.scalars(text("SELECT name FROM schema_migrations")))
    finally:
        db.close()
    unknown = sorted(applied - {name for name, _ in MIGRATIONS})
    if unknown:
        return fail(
            "index",
            f"{shown}: made by a newer florence-watch (migrations {', '.join(unknown)})",
            "upgrade florence-watch on this computer to the version that made the index",
        )
    detail = f"{shown}: opens, {len(applied)} migrations, all current"
    if sqlite_file is None:
        return ok("index", f"{detail}; its disk space is the PostgreSQL server's to watch")
    if shutil.disk_usage(sqlite_file.parent).free < MIN_FREE_BYTES:
        return fail(
            "index",
            f"{detail}; {_free(sqlite_file.parent)}",
            f"free space on the disk holding {sqlite_file.parent}, or move the index (index.database)",
        )
    return ok("index", f"{detail}; {_free(sqlite_file.parent)}")


def _index_not_created(ctx: Context, sqlite_file: Path) -> Check:
    """A SQLite index not made yet: fine if this user can create it, a failure if not."""
    parent = _nearest_folder(sqlite_file.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return fail(
            "index",
            f"{sqlite_file} does not exist and {_user()} cannot create it in {parent}",
            f"set index.database {_in(ctx.config)} to a path in a folder {_user()} can write",
        )
    return note("index", f"{sqlite_file}: not created yet (the first command that needs it does); {_free(parent)}")


def _nearest_folder(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free(folder: Path) -> str:
    free = shutil.disk_usage(folder).free
    return f"{free / 2**30:.1f} GiB free in {folder}" if free >= 2**30 else f"{free >> 20} MiB free in {folder}"


def check_service(ctx: Context) -> Check:
    """The systemd user unit: installed, enabled, running (a note when not: ``run`` works by hand too)."""
    from daemon.service.unit import ROLE_UNIT_NAME, ROLES, UNIT_NAME, user_unit_dir

    unit_dir = user_unit_dir()
    try:
        units = ["florence-watch"] if (unit_dir / UNIT_NAME).is_file() else []
        if (unit_dir / ROLE_UNIT_NAME).is_file():
            # The template's instances that `systemctl --user enable` linked, else the one a worker enables.
            wants = unit_dir / "default.target.wants"
            linked = [
                f"florence-watch@{r}" for r in ROLES[1:] if os.path.lexists(wants / f"florence-watch@{r}.service")
            ]
            units += linked or ["florence-watch@work"]
    except OSError as exc:  # $HOME is another user's (sudo without -H)
        return note("service", f"cannot look for the systemd user unit in {unit_dir}: {exc.strerror or exc}")
    if not units:
        return note(
            "service",
            f"no systemd user unit in {unit_dir}: the daemon runs only when started by hand",
            "florence-watch install-service (then the commands it prints)",
        )
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return note("service", f"{', '.join(units)} installed in {unit_dir}; no systemctl here to ask about it")
    states = {u: (_systemctl(systemctl, "is-enabled", u), _systemctl(systemctl, "is-active", u)) for u in units}
    if all(enabled is None and active is None for enabled, active in states.values()):
        return note("service", f"{', '.join(units)} installed; systemctl --user cannot reach the user's manager here")
    detail = "; ".join(f"{u}: {enabled or 'unknown'}, {active or 'unknown'}" for u, (enabled, active) in states.items())
    for unit, (enabled, active) in states.items():
        if active == "failed":
            return fail(
                "service", detail, f"see why: journalctl --user -u {unit} -e, then systemctl --user restart {unit}"
            )
        if enabled != "enabled" or active != "active":
            return note("service", detail, f"systemctl --user enable --now {unit}")
    return ok("service", detail)


def _systemctl(exe: str, verb: str, unit: str) -> str | None:
    """``systemctl --user VERB UNIT``'s one-word answer (enabled, active, failed, ...); None without one."""
    try:
        proc = subprocess.run([exe, "--user", verb, unit], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = proc.stdout.strip()
    return answer if answer and " " not in answer else None


def check_port(ctx: Context) -> Check:
    """serve.host:serve.port free for ``serve`` (bound and let go at once)."""
    host, port = ctx.config.serve.host, ctx.config.serve.port
    where = f"{host}:{port}"
    if port == 0:
        return ok("web port", f"serve.port = 0: serve takes any free port on {host}")
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as serve's http.server does
            s.bind(address)
    except socket.gaierror as exc:
        return fail(
            "web port",
            f"serve.host {host!r}: {exc.strerror}",
            "set serve.host to 127.0.0.1 or an address of this computer",
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return fail(
                "web port",
                f"{where} is in use by another program (a running `florence-watch serve`?)",
                f"stop it (ss -ltnp 'sport = :{port}' shows which), or set serve.port to a free port",
            )
        fix = (
            "set serve.port to 1024 or above"
            if exc.errno == errno.EACCES and port < 1024
            else "set serve.host to an address of this computer (127.0.0.1: this computer only)"
        )
        return fail("web port", f"cannot listen on {where}: {exc.strerror or exc}", fix)
    return ok("web port", f"{where} is free for `florence-watch serve`")


CHECKS: list[tuple[str, CheckFunction]] = [
    ("exiftool", check_exiftool),
    ("python", check_versions),
    ("cuda", check_cuda),
    ("model", check_model),
    ("embedding model", check_embedding_model),
    ("inotify", check_inotify),
    ("folder", check_folders),
    ("index", check_index),
    ("service", check_service),
    ("web port", check_port),
]
