"""Default-model preparation: converts once, atomically, and only for the default id."""

from pathlib import Path

import pytest

from serve_app.core import default_model
from serve_app.core.constants import DEFAULT_MODEL_ID


def fake_convert(calls: list[Path]):
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    return convert


def test_conversion_happens_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(default_model, "_convert", fake_convert(calls))
    target = tmp_path / "model"
    assert default_model.prepare_default_model(target) == target
    assert default_model.prepare_default_model(target) == target
    assert len(calls) == 1
    assert (target / "config.json").exists()


def test_interrupted_conversion_leaves_no_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_convert(gguf: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(default_model, "_convert", half_convert)
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        default_model.prepare_default_model(target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.lock"]


def test_conversion_respects_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_model.hf_constants, "HF_HOME", str(tmp_path))
    assert default_model.converted_model_dir().is_relative_to(tmp_path)


def test_other_models_pass_through_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_model, "prepare_default_model", lambda: Path("/converted"))
    assert default_model.resolve_model("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    assert default_model.resolve_model(DEFAULT_MODEL_ID) == "/converted"


def test_bundled_gguf_is_installed() -> None:
    gguf = default_model.bundled_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
