"""Configuration: ``config.toml`` read once into frozen dataclasses.

Precedence: defaults in code, then the file, then command-line overrides.
Every key is checked on load; a bad one names the key and the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError
from daemon.tasks import DEFAULT_TASKS, default_max_new_tokens, inputless

CONFIG_ENV = "FLORENCE_WATCH_CONFIG"


# The XDG base directories: $XDG_*_HOME, else their default under the home folder.
XDG_DEFAULTS = {"DATA": ".local/share", "STATE": ".local/state", "CACHE": ".cache", "CONFIG": ".config"}


def xdg_home(kind: str) -> Path:
    """``xdg_home("DATA")``: $XDG_DATA_HOME, else ~/.local/share (likewise STATE, CACHE, CONFIG)."""
    return Path(os.environ.get(f"XDG_{kind}_HOME") or Path.home() / XDG_DEFAULTS[kind])


def default_database() -> str:
    return str(xdg_home("DATA") / "florence-watch" / "index.db")


@dataclass(frozen=True)
class WatchConfig:
    folders: tuple[str, ...] = ("~/Pictures/Inbox",)
    recursive: bool = True
    settle_seconds: float = 2.0
    polling: bool = False  # force the polling observer (NFS/SMB mounts)
    follow_symlinks: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: str = "auto"
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    tasks: tuple[str, ...] = DEFAULT_TASKS
    batch_size: int = 0  # 0 or "auto": 4 on a CPU, sized from free memory on a GPU
    num_beams: int | dict[str, int] = 3  # a number for all tasks, or a table per task
    max_new_tokens: dict[str, int] = field(default_factory=default_max_new_tokens)
    # With nothing queued this long, the model leaves (GPU) memory; the next file loads it again. 0: never.
    idle_unload_seconds: float = 300.0
    # "6GiB": the most GPU memory the model and its batches may take (cards of 4-8 GB); "": no bound.
    max_gpu_memory: str = ""
    # How prompts become generate calls: auto | tasks | folded, +static, +vision (daemon/model/engine.py).
    engine: str = "auto"

    def __post_init__(self) -> None:
        # One number means the same limit for every task.
        if isinstance(self.max_new_tokens, int):
            object.__setattr__(self, "max_new_tokens", dict.fromkeys(default_max_new_tokens(), self.max_new_tokens))
        else:  # a partial table keeps the defaults of the tasks it does not name
            object.__setattr__(self, "max_new_tokens", {**default_max_new_tokens(), **self.max_new_tokens})


@dataclass(frozen=True)
class IndexConfig:
    database: str = field(default_factory=default_database)
    max_attempts: int = 3
    # A job claim lasts this long without a heartbeat; then any worker may take the job.
    lease_seconds: float = 60.0
    # Paths as the watcher records them -> where this host sees them ("/volume1/photos" = "/mnt/photos").
    path_map: dict[str, str] = field(default_factory=dict)

    def local(self, path: str) -> str:
        """*path* (the index's form) as this host sees it: the longest matching prefix is replaced."""
        return _remap(path, self.path_map)

    def indexed(self, path: str) -> str:
        """*path* as this host sees it, in the index's (the watcher's) form."""
        return _remap(path, {v: k for k, v in self.path_map.items()})


def _remap(path: str, prefixes: dict[str, str]) -> str:
    for src in sorted(prefixes, key=len, reverse=True):
        root = src.rstrip("/")
        if path == root or path.startswith(root + "/"):
            return prefixes[src].rstrip("/") + path[len(root) :]
    return path


POLICIES = ("fill", "overwrite", "off")
SIDECAR_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class MetadataConfig:
    write: bool = True
    # Per field: fill = only where empty or still what we wrote; overwrite =
    # always ours (keywords: the list becomes exactly ours); off = never touched.
    alt_text: str = "fill"
    description: str = "fill"
    keywords: str = "fill"
    keyword_parent: str = ""  # e.g. "florence": hierarchical keywords florence|dog
    sidecar: str = "auto"  # auto | always | never
    sidecar_name: str = "{name}.xmp"  # photo.jpg.xmp; "{stem}.xmp" gives photo.xmp
    alt_text_max: int = 250


def default_thumbnails() -> str:
    return str(xdg_home("CACHE") / "florence-watch" / "thumbnails")


@dataclass(frozen=True)
class ServeConfig:
    # Loopback only by default: the page shows every indexed photo to whoever can reach it.
    host: str = "127.0.0.1"
    port: int = 8765
    thumbnails: str = field(default_factory=default_thumbnails)  # made once, kept here


@dataclass(frozen=True)
class SearchConfig:
    # Search by meaning as well as by words: each image's text as a sentence embedding.
    semantic: bool = True
    # A Hugging Face hub id (downloaded once into its cache) or a local folder.
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class PauseConfig:
    # Rules that pause the daemon by themselves (``florence-watch pause`` is the manual one).
    on_battery: bool = False  # while the computer runs on battery (/sys/class/power_supply)
    # While other processes hold more than this share (0-1) of the GPU's memory (a game, a call); 0: off.
    gpu_share: float = 0.0


@dataclass(frozen=True)
class OcrConfig:
    # Read big images with text again in tiles at the model's input size (daemon/tiling.py):
    # auto: when the model shrank the image at least 2x and its first OCR found text; never: one pass.
    tiles: str = "auto"


@dataclass(frozen=True)
class PdfConfig:
    # Pages are rendered at this resolution for the model: 200 dpi makes 10-point body text about
    # 28 pixels high, which the tiles read; 300 would only cost more tiles (daemon/pdf.py).
    dpi: int = 200
    # A scanner's documents are a few pages; a longer file is read up to here, with a line saying so.
    max_pages: int = 50


@dataclass(frozen=True)
class Config:
    watch: WatchConfig = field(default_factory=WatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    pause: PauseConfig = field(default_factory=PauseConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    pdf: PdfConfig = field(default_factory=PdfConfig)
    source: str = "<defaults>"

    @property
    def folders(self) -> list[Path]:
        return [expand(f) for f in self.watch.folders]

    def with_overrides(self, *, model: str | None = None, database: str | None = None) -> Config:
        """Apply command-line flags over the file's values."""
        cfg = self
        if model:
            cfg = replace(cfg, model=replace(cfg.model, name=model))
        if database:
            cfg = replace(cfg, index=replace(cfg.index, database=database))
        return cfg


def expand(path: str | Path) -> Path:
    return Path(os.path.expandvars(str(path))).expanduser()


def mask_password(url: str) -> str:
    """*url* with its password as ``***``, for logs and messages (no URL parser needed)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def database_url(database: str) -> str:
    """A path becomes an SQLite URL; an SQLAlchemy URL is passed through."""
    if "://" in database:
        return database
    return f"sqlite:///{expand(database)}"


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """ "6GiB", "6 GB", "512MiB" -> bytes; ValueError names the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m[2].upper() not in _UNITS or float(m[1]) <= 0:
        raise ValueError(f'must be a size such as "6GiB", "6GB" or "512MiB", not {text!r}')
    return int(float(m[1]) * _UNITS[m[2].upper()])


def find_config_file(explicit: str | None) -> Path | None:
    """--config, else $FLORENCE_WATCH_CONFIG, else the XDG config file if it exists."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    candidate = xdg_home("CONFIG") / "florence-watch" / "config.toml"
    return candidate if candidate.exists() else None


def load_config(path: str | Path | None) -> Config:
    """Read and validate *path*; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(file)", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(path, "(file)", exc.strerror or str(exc)) from None
    return parse_config(data, source=str(path))


_SECTIONS: dict[str, type] = {
    "watch": WatchConfig,
    "model": ModelConfig,
    "index": IndexConfig,
    "metadata": MetadataConfig,
    "serve": ServeConfig,
    "search": SearchConfig,
    "pause": PauseConfig,
    "ocr": OcrConfig,
    "pdf": PdfConfig,
}


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(source, name, f"unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(source, name, "must be a table, e.g. [" + name + "]")
        sections[name] = _parse_section(name, _SECTIONS[name], value, source)
    return Config(**sections, source=source)


def _parse_section(section: str, cls: type, values: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{section}.{key}"
        if key not in known:
            raise ConfigError(source, dotted, f"unknown key (known: {', '.join(known)})")
        if dotted == "model.batch_size" and value == "auto":
            value = 0
        if dotted == "index.path_map":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k.startswith("/") and v.startswith("/")
                for k, v in value.items()
            ):
                raise ConfigError(
                    source,
                    dotted,
                    f'must be a table of absolute paths, e.g. {{ "/volume1/photos" = "/mnt/photos" }}, not {value!r}',
                )
            kwargs[key] = dict(value)
            continue
        if dotted == "model.num_beams" and isinstance(value, dict):
            kwargs[key] = _check(dotted, value, dict.fromkeys(inputless(), defaults.num_beams), source)
            continue
        kwargs[key] = _check(dotted, value, getattr(defaults, key), source)
    obj = cls(**kwargs)
    _validate(section, obj, source)
    return obj


def _check(key: str, value: Any, default: Any, source: str) -> Any:
    """Coerce *value* to the type of *default*, or raise ConfigError."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"must be a whole number, not {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, f"must be a number, not {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str) or (not value and default):
            raise ConfigError(source, key, f"must be a non-empty string, not {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(source, key, f"must be a list of strings, not {value!r}")
        return tuple(value)
    if isinstance(default, dict):  # model.max_new_tokens: a number for all tasks, or a table per task
        if isinstance(value, int) and not isinstance(value, bool):
            return {task: value for task in default}
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        ):
            raise ConfigError(source, key, f"must be a number or a table of task = number, not {value!r}")
        return {**default, **value}
    raise ConfigError(source, key, "unsupported value")  # pragma: no cover - every default type is above


def _validate(section: str, obj: Any, source: str) -> None:
    """Check what the types of *section*'s values do not: ranges, names, formats."""
    validator = _VALIDATORS.get(section)
    if validator is not None:
        validator(obj, source)


def _validate_watch(obj: WatchConfig, source: str) -> None:
    if obj.settle_seconds < 0:
        raise ConfigError(source, "watch.settle_seconds", "must be 0 or more")


def _validate_model(obj: ModelConfig, source: str) -> None:
    if obj.device not in ("auto", "cpu", "cuda") and not obj.device.startswith("cuda:"):
        raise ConfigError(source, "model.device", f"must be auto, cuda or cpu, not {obj.device!r}")
    if obj.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise ConfigError(source, "model.dtype", f"must be auto, float32, float16 or bfloat16, not {obj.dtype!r}")
    _validate_model_tasks(obj, source)
    if obj.batch_size < 0:
        raise ConfigError(source, "model.batch_size", 'must be "auto" or at least 1')
    if obj.idle_unload_seconds < 0:
        raise ConfigError(source, "model.idle_unload_seconds", "must be 0 (never) or more")
    if obj.max_gpu_memory:
        try:
            parse_size(obj.max_gpu_memory)
        except ValueError as exc:
            raise ConfigError(source, "model.max_gpu_memory", str(exc)) from None
    if obj.engine != "auto":
        try:
            parse_engine(obj.engine)
        except ValueError as exc:
            raise ConfigError(source, "model.engine", str(exc)) from None
    beams = obj.num_beams if isinstance(obj.num_beams, dict) else {"": obj.num_beams}
    for task, n in beams.items():
        if task and task not in inputless():
            raise ConfigError(source, "model.num_beams", f"unknown task {task!r}")
        if n < 1:
            raise ConfigError(source, "model.num_beams", "must be at least 1")


def _validate_model_tasks(obj: ModelConfig, source: str) -> None:
    """model.tasks and model.max_new_tokens: Florence-2 tasks that take no input, and lengths of at least 1."""
    allowed = inputless()
    for task in obj.tasks:
        if task not in allowed:
            raise ConfigError(
                source,
                "model.tasks",
                f"{task!r} is not a Florence-2 task without input (choose from {', '.join(allowed)})",
            )
    for task, n in obj.max_new_tokens.items():
        if task not in allowed:
            raise ConfigError(source, "model.max_new_tokens", f"unknown task {task!r}")
        if n < 1:
            raise ConfigError(source, "model.max_new_tokens", f"{task} must be at least 1")


def _validate_pause(obj: PauseConfig, source: str) -> None:
    if not 0 <= obj.gpu_share < 1:
        raise ConfigError(source, "pause.gpu_share", "must be a share between 0 (off) and 1, e.g. 0.3")


def _validate_ocr(obj: OcrConfig, source: str) -> None:
    if obj.tiles not in ("auto", "never"):
        raise ConfigError(source, "ocr.tiles", f"must be auto or never, not {obj.tiles!r}")


def _validate_pdf(obj: PdfConfig, source: str) -> None:
    if not 36 <= obj.dpi <= 600:
        raise ConfigError(source, "pdf.dpi", "must be between 36 and 600 (200 suits OCR)")
    if obj.max_pages < 1:
        raise ConfigError(source, "pdf.max_pages", "must be at least 1")


def _validate_serve(obj: ServeConfig, source: str) -> None:
    if not 0 <= obj.port <= 65535:
        raise ConfigError(source, "serve.port", "must be between 0 and 65535 (0: any free port)")


def _validate_index(obj: IndexConfig, source: str) -> None:
    if obj.max_attempts < 1:
        raise ConfigError(source, "index.max_attempts", "must be at least 1")
    if obj.lease_seconds < 3:
        raise ConfigError(source, "index.lease_seconds", "must be at least 3")


def _validate_metadata(obj: MetadataConfig, source: str) -> None:
    if "{name}" not in obj.sidecar_name and "{stem}" not in obj.sidecar_name:
        raise ConfigError(source, "metadata.sidecar_name", 'must contain {name} or {stem}, e.g. "{name}.xmp"')
    for key in ("alt_text", "description", "keywords"):
        if getattr(obj, key) not in POLICIES:
            raise ConfigError(source, f"metadata.{key}", f"must be fill, overwrite or off, not {getattr(obj, key)!r}")
    if obj.sidecar not in SIDECAR_MODES:
        raise ConfigError(source, "metadata.sidecar", f"must be auto, always or never, not {obj.sidecar!r}")
    if not 16 <= obj.alt_text_max <= 250:
        raise ConfigError(source, "metadata.alt_text_max", "must be between 16 and 250")


# Each section's checks beyond the types of its values; search has none.
_VALIDATORS: dict[str, Callable[[Any, str], None]] = {
    "watch": _validate_watch,
    "model": _validate_model,
    "pause": _validate_pause,
    "ocr": _validate_ocr,
    "pdf": _validate_pdf,
    "serve": _validate_serve,
    "index": _validate_index,
    "metadata": _validate_metadata,
}


# --- model.engine: the variants' names (daemon/model/engine.py does the work) ---

BASES = ("tasks", "folded")
EXTRAS = ("static", "vision")
CPU_DEFAULT = "tasks"
CUDA_DEFAULT = "folded+static"


@dataclass(frozen=True)
class Engine:
    """One engine variant: how tasks are grouped and what is compiled."""

    fold: bool = False
    static: bool = False
    compile_vision: bool = False

    @property
    def name(self) -> str:
        extras = [e for e, on in (("static", self.static), ("vision", self.compile_vision)) if on]
        return "+".join(["folded" if self.fold else "tasks", *extras])


def parse_engine(name: str) -> Engine:
    """``tasks``, ``folded``, either with ``+static`` and/or ``+vision``; ValueError otherwise."""
    base, *extras = [part.strip() for part in name.split("+")]
    if base not in BASES or any(e not in EXTRAS for e in extras) or len(set(extras)) != len(extras):
        raise ValueError(
            f'must be "auto" or one of {" or ".join(BASES)}, optionally with +static and/or +vision '
            f'(e.g. "folded+static"), not {name!r}'
        )
    return Engine(fold=base == "folded", static="static" in extras, compile_vision="vision" in extras)


def resolve_engine(name: str, device: str) -> Engine:
    """The engine *name* selects on *device* (``auto``: the default for that device)."""
    if name == "auto":
        name = CUDA_DEFAULT if device.startswith("cuda") else CPU_DEFAULT
    return parse_engine(name)
