"""avret's one open_clip loader (avret.models.clip), shared by features extract and the distillation teachers."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avret.distill.prompts import ClipTextEncoder
from avret.distill.teacher import TeacherConfig, VideoAdviserTeacher
from avret.errors import AvretError, ModelError
from avret.features.clip_frames import load_clip_frame_encoder
from avret.features.encoders import get_clip
from avret.features.extract import ExtractConfig
from avret.models.clip import (
    CONFIG_DIR,
    RANDOM_INIT,
    SYNTHETIC_CLIP,
    clip_image_transform,
    load_clip,
    load_clip_tokenizer,
    register_model_config,
    resolve_model_name,
    tensor_fingerprint,
)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["dog", "cat", "rain"]
# A tiny architecture whose name, like ViT-B-32, has a slash spelling: avret-tiny-B/4.
TINY_NAME = "avret-tiny-B-4"
TINY_SLASH = "avret-tiny-B/4"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The tiny config registered from a .json, and seeded random weights saved with torch.save."""
    d = tmp_path_factory.mktemp("clip")
    (d / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    name = register_model_config(d / f"{TINY_NAME}.json")
    weights = d / "tiny.pt"
    torch.save(load_clip(name, None, allow_random=True, seed=3).state_dict(), weights)
    return name, weights


def _teacher(model: str, weights: Path | str) -> VideoAdviserTeacher:
    return VideoAdviserTeacher(TeacherConfig(clip_model=model, clip_weights=str(weights), class_names=CLASSES))


def _one_line_model_error(exc: pytest.ExceptionInfo[BaseException]) -> str:
    assert isinstance(exc.value, ModelError)
    assert "\n" not in str(exc.value)
    return str(exc.value)


# ---------------------------------------------------------------------------- names


def test_slash_and_dash_spellings_are_one_architecture(tiny):
    name, weights = tiny
    assert name == TINY_NAME
    assert resolve_model_name("ViT-B/32") == resolve_model_name("ViT-B-32") == "ViT-B-32"
    assert resolve_model_name(TINY_SLASH) == TINY_NAME
    # Both spellings preprocess and tokenize as ViT-B-32 (cheap: no weights needed).
    from PIL import Image

    image = Image.new("RGB", (320, 240), (10, 200, 30))
    assert torch.equal(clip_image_transform("ViT-B/32")(image), clip_image_transform("ViT-B-32")(image))
    assert clip_image_transform("ViT-B/32")(image).shape == (3, 224, 224)
    assert torch.equal(load_clip_tokenizer("ViT-B/32")(["a dog"]), load_clip_tokenizer("ViT-B-32")(["a dog"]))

    # features: the slash spelling is accepted, recorded as the architecture name, and loads the same tower
    cfg = ExtractConfig(vggish=weights, clip_model="ViT-B/32", clip_weights=weights, device="cpu")
    cfg.validate()
    assert cfg.model_settings()["clip_model"] == "ViT-B-32"
    slash = load_clip_frame_encoder(TINY_SLASH, weights)
    dash = load_clip_frame_encoder(TINY_NAME, weights)
    assert slash.name == dash.name == TINY_NAME and slash.dim == dash.dim == TINY_CONFIG["embed_dim"]
    assert tensor_fingerprint(slash.visual.state_dict()) == tensor_fingerprint(dash.visual.state_dict())

    # teacher: both spellings give the same frozen text tower
    assert _teacher(TINY_SLASH, weights).config.clip_fingerprint == _teacher(TINY_NAME, weights).config.clip_fingerprint


def test_avret_configs_are_package_data():
    import tomllib

    assert (CONFIG_DIR / f"{SYNTHETIC_CLIP}.json").is_file()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package_dir = ROOT / "avret" / "models"
    shipped = {p for pattern in patterns["avret.models"] for p in package_dir.glob(pattern)}
    assert set(CONFIG_DIR.glob("*.json")) <= shipped


def test_synthetic_clip_loads_for_features_in_a_fresh_process(tmp_path):
    """avret's own architectures are known in any process: no distill code has to run first."""
    weights = tmp_path / "synth.safetensors"
    from safetensors.torch import save_file

    model = load_clip(SYNTHETIC_CLIP, RANDOM_INIT, allow_random=True, seed=5)
    save_file(model.state_dict(), str(weights))
    want = tensor_fingerprint(model.visual.state_dict())
    script = (
        "import sys\n"
        "from avret.features.encoders import get_clip\n"
        "from avret.models.clip import resolve_model_name, tensor_fingerprint\n"
        "from avret.utils.device import resolve_device\n"
        "enc = get_clip(sys.argv[1], sys.argv[2], resolve_device('cpu'))\n"
        "resolve_model_name('avret-sentiment-clip-small')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('avret.distill', 'avret.sentiment')))\n"
        "print(enc.dim, tensor_fingerprint(enc.visual.state_dict()), loaded)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", script, SYNTHETIC_CLIP, str(weights)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["64", want, "[]"]
    # open_clip builds the model empty before the file is loaded: its "initialized randomly"
    # warning must not reach the user (nothing configures logging here, so it would hit stderr).
    assert "initialized randomly" not in res.stderr and "No pretrained weights" not in res.stderr


# ---------------------------------------------------------------------------- one loader


def test_features_image_tower_and_teacher_text_tower_come_from_the_same_file(tiny):
    name, weights = tiny
    saved = torch.load(weights, weights_only=True)
    reference = load_clip(name, weights)
    visual = {k[len("visual."):]: v for k, v in saved.items() if k.startswith("visual.")}
    enc = get_clip(name, weights, torch.device("cpu"))
    assert tensor_fingerprint(enc.visual.state_dict()) == tensor_fingerprint(visual)
    assert tensor_fingerprint(reference.visual.state_dict()) == tensor_fingerprint(visual)
    teacher = _teacher(name, weights)
    assert teacher.config.clip_fingerprint == tensor_fingerprint(ClipTextEncoder(reference).state_dict())
    other = weights.with_name("other.pt")
    torch.save(load_clip(name, None, allow_random=True, seed=4).state_dict(), other)
    assert _teacher(name, other).config.clip_fingerprint != teacher.config.clip_fingerprint


_OPEN_CLIP_LOADING = re.compile(
    r"\b(create_model|create_model_and_transforms|create_model_from_pretrained|load_checkpoint|add_model_config)\("
)


def test_only_avret_models_clip_builds_or_registers_open_clip_models():
    """One loader: no other avret module builds, loads or registers an open_clip model by itself."""
    offenders = []
    for path in sorted((ROOT / "avret").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py")):
        if path == ROOT / "avret" / "models" / "clip.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _OPEN_CLIP_LOADING.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_open_clip_private_registry_is_never_written(tiny):
    """Configs go through open_clip's public add_model_config, never into its private registry dict."""
    import open_clip.factory

    private = "_MODEL_" + "CONFIGS"  # spelled apart so that this file does not match itself
    hits = [
        str(path.relative_to(ROOT))
        for top in ("avret", "cli", "tests", "benchmarks", "scripts")
        for path in sorted((ROOT / top).rglob("*.py"))
        if private in path.read_text(encoding="utf-8")
    ]
    assert hits == [], hits
    # Behaviour: after avret registered its own and the tiny config, every entry of open_clip's
    # registry is backed by a file on open_clip's public config paths (a rescan from nothing rebuilds it).
    resolve_model_name(SYNTHETIC_CLIP)
    assert resolve_model_name(TINY_SLASH) == TINY_NAME
    assert CONFIG_DIR in [Path(p) for p in open_clip.factory._MODEL_CONFIG_PATHS]
    before = getattr(open_clip.factory, private)
    try:
        setattr(open_clip.factory, private, {})
        open_clip.factory._rescan_model_configs()
        assert getattr(open_clip.factory, private) == before
    finally:
        setattr(open_clip.factory, private, before)


def test_no_random_init_warning_when_weights_are_given(tiny, caplog):
    import open_clip

    name, weights = tiny
    with caplog.at_level(logging.WARNING):
        open_clip.create_model(name, pretrained=None)  # the warning exists, and caplog sees it ...
    assert "initialized randomly" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_clip(name, weights)  # ... but not when avret loads weights after building
        load_clip_frame_encoder(TINY_SLASH, weights)
    assert "initialized randomly" not in caplog.text and "No pretrained weights" not in caplog.text


# ---------------------------------------------------------------------------- weights and errors


def test_local_weight_formats_and_seeded_random_weights(tiny, tmp_path):
    from safetensors.torch import save_file

    name, weights = tiny
    want = tensor_fingerprint(load_clip(name, weights).state_dict())
    state = torch.load(weights, weights_only=True)
    torch.save(state, tmp_path / "w.bin")
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for path in ("w.bin", "w.safetensors", "w.pth"):
        assert tensor_fingerprint(load_clip(name, tmp_path / path).state_dict()) == want, path
    a = load_clip(name, None, allow_random=True, seed=3)
    assert tensor_fingerprint(a.state_dict()) == want  # the fixture saved seed 3: deterministic
    assert tensor_fingerprint(load_clip(name, RANDOM_INIT, allow_random=True, seed=4).state_dict()) != want


def test_device_argument(tiny):
    name, weights = tiny
    assert next(load_clip(name, weights, device="cpu").parameters()).device.type == "cpu"
    assert next(load_clip(name, weights, device="auto").parameters()).device.type == (
        "cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        enc = load_clip_frame_encoder(name, weights, device="cuda")
        assert next(enc.visual.parameters()).is_cuda
    else:
        with pytest.raises(AvretError, match="no CUDA GPU"):
            load_clip(name, weights, device="cuda")


def test_missing_remote_and_misfit_weights_are_one_line_model_errors(tiny, tmp_path):
    name, weights = tiny
    state = torch.load(weights, weights_only=True)
    shaped = dict(state, **{"token_embedding.weight": torch.zeros(10, 16)})
    torch.save(shaped, tmp_path / "shape.pt")
    torch.save({k: v for k, v in state.items() if k != "ln_final.weight"}, tmp_path / "missing.pt")
    torch.save(dict(state, extra=torch.zeros(1)), tmp_path / "extra.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    cases = [
        (name, tmp_path / "nope.pt", "nope.pt does not exist"),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", weights, "schema names are not supported"),
        ("local-dir:/some/dir", weights, "schema names are not supported"),
        (name, "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "remote weights are not supported"),
        (name, tmp_path / "shape.pt", r"key 'token_embedding\.weight' has shape \(10, 16\), expected \(49408, 16\)"),
        (name, tmp_path / "missing.pt", r"key 'ln_final\.weight' is missing \(expected shape \(16,\)"),
        (name, tmp_path / "extra.pt", "unexpected key 'extra'"),
        (name, tmp_path / "garbage.pt", "garbage.pt is unreadable"),
        (name, tmp_path / "garbage.safetensors", "garbage.safetensors is unreadable"),
        ("no-such-clip", weights, "not an open_clip architecture.*ViT-B-32"),
        (name, None, "no weights file"),
    ]
    for model, path, message in cases:
        with pytest.raises(ModelError, match=message) as exc:
            load_clip(model, path)
        _one_line_model_error(exc)
    # the same errors reach features and the teacher, through the same loader
    with pytest.raises(ModelError, match=r"'token_embedding\.weight' has shape") as exc:
        get_clip(TINY_SLASH, tmp_path / "shape.pt", torch.device("cpu"))
    _one_line_model_error(exc)
    with pytest.raises(ModelError, match=r"key 'ln_final\.weight' is missing") as exc:
        _teacher(TINY_SLASH, tmp_path / "missing.pt")
    _one_line_model_error(exc)
    with pytest.raises(ModelError, match="schema names are not supported") as exc:
        ExtractConfig(vggish=weights, clip_model="hf-hub:org/model", clip_weights=weights).validate()
    _one_line_model_error(exc)
    with pytest.raises(ModelError, match="schema names are not supported") as exc:
        _teacher("hf-hub:org/model", weights)
    _one_line_model_error(exc)


def test_bad_config_files_are_refused_without_breaking_open_clip(tmp_path):
    (tmp_path / "broken.json").write_text("{ not json")
    (tmp_path / "partial.json").write_text(json.dumps({"embed_dim": 8}))
    for path, message in [("broken.json", "not valid JSON"), ("partial.json", "expected an open_clip model config"),
                          ("absent.json", "does not exist")]:
        with pytest.raises(ModelError, match=message) as exc:
            resolve_model_name(str(tmp_path / path))
        _one_line_model_error(exc)
    # a refused file is never handed to open_clip, so later registrations still work
    (tmp_path / "fine-clip.json").write_text(json.dumps(TINY_CONFIG))
    assert resolve_model_name(str(tmp_path / "fine-clip.json")) == "fine-clip"
