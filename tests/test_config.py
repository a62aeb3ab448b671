from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Config, database_url, find_config_file, load_config, parse_size
from daemon.errors import ConfigError
from daemon.tasks import DEFAULT_TASKS

REPO = Path(__file__).resolve().parents[1]


def test_repo_config_loads_with_the_documented_defaults() -> None:
    cfg = load_config(REPO / "config.toml")
    assert cfg.watch.folders == ("~/Pictures/Inbox",)
    assert cfg.model.name == "auto" and cfg.model.device == "auto"
    assert cfg.model.tasks == DEFAULT_TASKS
    assert cfg.index.database == "~/.local/share/florence-watch/index.db"
    assert cfg.metadata.write is True
    assert str(cfg.folders[0]) == str(Path.home() / "Pictures" / "Inbox")


def test_defaults_without_a_file() -> None:
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[watch]\nfolder = ['x']\n",
            "bad.toml: watch.folder: unknown key (known: folders, recursive, settle_seconds, polling, follow_symlinks)",
        ),
        (
            "[modle]\nname='x'\n",
            "bad.toml: modle: unknown section (known: watch, model, index, metadata, serve, search, pause, ocr, pdf)",
        ),
        ("[model]\ndevice = 'gpu'\n", "bad.toml: model.device: must be auto, cuda or cpu, not 'gpu'"),
        ("[metadata]\nwrite = 'yes'\n", "bad.toml: metadata.write: must be true or false, not 'yes'"),
        ("[watch]\nfolders = []\n", "bad.toml: watch.folders: must be a list of strings, not []"),
        (
            "[model]\ntasks = ['<CAPTION_TO_PHRASE_GROUNDING>']\n",
            "bad.toml: model.tasks: '<CAPTION_TO_PHRASE_GROUNDING>' is not a Florence-2 task without input",
        ),
        ("[model]\nbatch_size = -1\n", 'bad.toml: model.batch_size: must be "auto" or at least 1'),
        ("[index\n", "bad.toml: (file): not valid TOML"),
        (
            "[model]\nmax_gpu_memory = 'lots'\n",
            'bad.toml: model.max_gpu_memory: must be a size such as "6GiB", "6GB" or "512MiB", not \'lots\'',
        ),
        ("[model]\nmax_gpu_memory = '0GiB'\n", "bad.toml: model.max_gpu_memory: must be a size such as"),
        ("[model]\nidle_unload_seconds = -1\n", "bad.toml: model.idle_unload_seconds: must be 0 (never) or more"),
        ("[pause]\ngpu_share = 1.5\n", "bad.toml: pause.gpu_share: must be a share between 0 (off) and 1"),
        ("[pause]\non_battery = 'yes'\n", "bad.toml: pause.on_battery: must be true or false, not 'yes'"),
        ("[pdf]\ndpi = 1200\n", "bad.toml: pdf.dpi: must be between 36 and 600 (200 suits OCR)"),
        ("[pdf]\nmax_pages = 0\n", "bad.toml: pdf.max_pages: must be at least 1"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).replace(str(tmp_path) + "/", "").startswith(message)


def test_gpu_memory_sizes() -> None:
    assert [parse_size(s) for s in ("6GiB", "6 GiB", "512MiB", "1.5GB", "2048")] == [
        6 << 30,
        6 << 30,
        512 << 20,
        1_500_000_000,
        2048,
    ]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_env_variable_selects_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[model]\nname = '/models/x'\n")
    monkeypatch.setenv("FLORENCE_WATCH_CONFIG", str(path))
    assert find_config_file(None) == path
    assert find_config_file("explicit.toml") == Path("explicit.toml")
    assert load_config(find_config_file(None)).model.name == "/models/x"


def test_cli_overrides_win_over_the_file() -> None:
    cfg = Config().with_overrides(model="/m", database="/d.db")
    assert (cfg.model.name, cfg.index.database) == ("/m", "/d.db")


def test_max_new_tokens_number_or_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[model.max_new_tokens]\n'<CAPTION>' = 10\n")
    cfg = load_config(path)
    assert cfg.model.max_new_tokens["<CAPTION>"] == 10
    assert cfg.model.max_new_tokens["<OCR_WITH_REGION>"] == 1024


def test_database_url() -> None:
    assert database_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert database_url("/tmp/x.db") == "sqlite:////tmp/x.db"
    assert database_url("~/x.db") == f"sqlite:///{Path.home()}/x.db"


def test_batch_size_auto_or_a_number(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[model]\nbatch_size = 'auto'\n")
    assert load_config(path).model.batch_size == 0
    path.write_text("[model]\nbatch_size = 16\n")
    assert load_config(path).model.batch_size == 16


def test_num_beams_number_or_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[model.num_beams]\n'<OCR_WITH_REGION>' = 1\n")
    beams = load_config(path).model.num_beams
    assert isinstance(beams, dict) and beams["<OCR_WITH_REGION>"] == 1 and beams["<CAPTION>"] == 3
    path.write_text("[model.num_beams]\n'<BOGUS>' = 1\n")
    with pytest.raises(ConfigError, match=r"model\.num_beams: unknown task '<BOGUS>'"):
        load_config(path)
