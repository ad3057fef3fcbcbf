"""The CLIP loader reads the three forms CLIP weights come in, each written here in exactly that form.

Each form is checked against the same weights loaded the native way: open_clip's own
``create_model`` + ``load_state_dict`` (open_clip checkpoints), open_clip's ``load_openai_model``
(OpenAI's TorchScript archive), and transformers' ``CLIPModel`` (a Hugging Face folder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from avret.errors import ModelError
from avret.models.clip import WEIGHT_FORMS, clip_weights_form, hf_clip_to_open_clip, load_clip, register_model_config

ATOL = 1e-5
# OpenAI's archive fixes the heads at width // 64 (open_clip's build_model_from_openai_state_dict), so width 64
# (no quick_gelu, as open_clip's own ViT-B-32 config: the loader takes QuickGELU from the form)
OPENAI_TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 1, "layers": 2},
}
HF_TINY = {  # an open_clip architecture with the same sizes as the HF config below
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2},
}


def _arch(tmp: Path, name: str, cfg: dict) -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return register_model_config(path)


def _inputs(vocab: int = 100, context: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    images = torch.randn(3, 3, 32, 32, generator=g)
    text = torch.randint(3, vocab - 1, (3, context), generator=g)
    for row, eot in enumerate((5, 9, context - 1)):  # the end token (the largest id) ends each text
        text[row, eot] = vocab - 1
        text[row, eot + 1:] = 0
    return images, text


def _embed(model, images, text) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return (F.normalize(model.encode_image(images), dim=-1), F.normalize(model.encode_text(text), dim=-1))


def _same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------- open_clip


def test_open_clip_checkpoints_load_like_open_clip_itself(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    name = _arch(tmp_path, "avret-test-oc-tiny", HF_TINY)
    torch.manual_seed(0)
    native = open_clip.create_model(name, pretrained=None, load_weights=False).eval()
    state = native.state_dict()
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "open_clip_pytorch_model.safetensors"))
    images, text = _inputs()
    want = _embed(native, images, text)
    for file in ("open_clip_pytorch_model.bin", "open_clip_pytorch_model.safetensors"):
        assert clip_weights_form(tmp_path / file) == "open_clip"
        _same(_embed(load_clip(name, tmp_path / file), images, text), want)


# ------------------------------------------------------------------------------- OpenAI TorchScript


def _openai_archive(tmp: Path) -> tuple[str, Path]:
    """A tiny CLIP in OpenAI's module layout, traced to TorchScript and saved in fp16 as OpenAI's ViT-B-32.pt is."""
    import open_clip

    name = _arch(tmp, "avret-test-openai-tiny", OPENAI_TINY)
    torch.manual_seed(1)
    model = open_clip.create_model(name, pretrained=None, load_weights=False, force_quick_gelu=True).eval()
    mask = model.attn_mask
    del model.attn_mask  # OpenAI's causal mask is a plain attribute, not a (saved) buffer
    model.attn_mask = mask
    del model.context_length, model.vocab_size  # OpenAI's archive carries these as tensors next to the weights
    for key, value in (("input_resolution", 32), ("context_length", 16), ("vocab_size", 100)):
        model.register_buffer(key, torch.tensor(value))
    images, text = _inputs()
    traced = torch.jit.trace(model, (images, text), check_trace=False)
    traced = traced.half()  # OpenAI's weights are fp16
    path = tmp / "ViT-B-32.pt"
    torch.jit.save(traced, str(path))
    return name, path


def test_openai_torchscript_archive_loads_like_open_clips_openai_loader(tmp_path):
    from open_clip import load_openai_model

    name, path = _openai_archive(tmp_path)
    assert clip_weights_form(path) == "openai"
    images, text = _inputs()
    native = load_openai_model(str(path), precision="fp32", device="cpu").eval()
    ours = load_clip(name, path)
    assert not any(p.dtype == torch.float16 for p in ours.parameters())
    _same(_embed(ours, images, text), _embed(native, images, text))
    torch.testing.assert_close(ours.logit_scale, native.logit_scale)
    # and the activation matters: the same weights under plain GELU embed differently
    import open_clip

    plain = open_clip.create_model(name, pretrained=None, load_weights=False).eval()
    plain.load_state_dict(ours.state_dict())
    assert not torch.allclose(_embed(plain, images, text)[1], _embed(ours, images, text)[1], atol=1e-3)


def test_openai_archive_of_the_wrong_architecture_names_the_key(tmp_path):
    _, path = _openai_archive(tmp_path)
    other = _arch(tmp_path, "avret-test-openai-other", {**OPENAI_TINY, "embed_dim": 16})
    with pytest.raises(ModelError, match=r"key 'text_projection' has shape \(64, 24\), expected \(64, 16\)") as exc:
        load_clip(other, path)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------- Hugging Face


def _hf_folder(tmp: Path, **vision) -> tuple[object, Path]:
    from transformers import CLIPConfig, CLIPModel

    text_cfg = dict(vocab_size=100, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    max_position_embeddings=16, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
                    pad_token_id=1)
    vision_cfg = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=32, patch_size=16, hidden_act="quick_gelu", **vision)
    torch.manual_seed(2)
    model = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=24)).eval()
    with torch.no_grad():  # HF initialises the biases and layer norms to constants; make every tensor count
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp / "models--openai--clip-tiny" / "snapshots" / "abc123"
    model.save_pretrained(folder)
    return model, folder


def test_hugging_face_clip_folder_gives_transformers_embeddings(tmp_path):
    hf, folder = _hf_folder(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    name = _arch(tmp_path, "avret-test-hf-tiny", HF_TINY)
    images, text = _inputs()
    with torch.no_grad():
        out = hf(input_ids=text, pixel_values=images)
    want = (out.image_embeds, out.text_embeds)
    for weights in (folder, folder / "model.safetensors"):
        assert clip_weights_form(weights) == "hf"
        ours = load_clip(name, weights)
        _same(_embed(ours, images, text), want)
        torch.testing.assert_close(ours.logit_scale.detach(), hf.logit_scale.detach())
    # a folder with pytorch_model.bin (older saves) reads the same way
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(folder / "config.json", old / "config.json")
    torch.save(hf.state_dict(), old / "pytorch_model.bin")
    _same(_embed(load_clip(name, old), images, text), want)


def test_hf_conversion_concatenates_q_k_v_and_transposes_projections():
    state = {
        "text_model.encoder.layers.0.self_attn.q_proj.weight": torch.full((2, 2), 1.0),
        "text_model.encoder.layers.0.self_attn.k_proj.weight": torch.full((2, 2), 2.0),
        "text_model.encoder.layers.0.self_attn.v_proj.weight": torch.full((2, 2), 3.0),
        "vision_model.encoder.layers.1.mlp.fc1.bias": torch.zeros(4),
        "visual_projection.weight": torch.arange(6.0).reshape(2, 3),
        "text_model.embeddings.position_ids": torch.arange(4)[None],
    }
    out = hf_clip_to_open_clip(state)
    assert sorted(out) == ["transformer.resblocks.0.attn.in_proj_weight", "visual.proj",
                           "visual.transformer.resblocks.1.mlp.c_fc.bias"]
    assert out["transformer.resblocks.0.attn.in_proj_weight"][:, 0].tolist() == [1, 1, 2, 2, 3, 3]
    assert torch.equal(out["visual.proj"], torch.arange(6.0).reshape(2, 3).t())


def test_hf_folder_that_disagrees_with_the_architecture_is_one_line(tmp_path):
    _, folder = _hf_folder(tmp_path, layer_norm_eps=1e-6)
    name = _arch(tmp_path, "avret-test-hf-tiny", HF_TINY)
    with pytest.raises(ModelError, match="vision_config.layer_norm_eps is 1e-06") as exc:
        load_clip(name, folder)
    assert "\n" not in str(exc.value)
    _, folder = _hf_folder(tmp_path / "b")
    heads = _arch(tmp_path, "avret-test-hf-heads", {**HF_TINY, "text_cfg": {**HF_TINY["text_cfg"], "heads": 4}})
    with pytest.raises(ModelError, match="text_config.num_attention_heads is 2, the architecture .* has 4"):
        load_clip(heads, folder)
    # a config that leaves a setting out has transformers' default (text heads 8)
    partial = json.loads((folder / "config.json").read_text())
    del partial["text_config"]["num_attention_heads"]
    (folder / "config.json").write_text(json.dumps(partial))
    with pytest.raises(ModelError, match="text_config.num_attention_heads is 8, the architecture .* has 2"):
        load_clip(name, folder)
    gelu = json.loads((folder / "config.json").read_text())
    gelu["text_config"]["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(gelu))
    with pytest.raises(ModelError, match=r"hidden_act \['quick_gelu', 'relu'\] is not supported"):
        load_clip(name, folder)


# ------------------------------------------------------------------------------- wrong files


def _forms_named(message: str) -> None:
    assert "\n" not in message
    for form in WEIGHT_FORMS:
        assert form in message, message


def test_a_file_of_no_accepted_form_names_the_forms(tmp_path):
    name = _arch(tmp_path, "avret-test-hf-tiny", HF_TINY)
    (tmp_path / "notes.pt").write_text("not weights")
    (tmp_path / "empty").mkdir()
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    for bad, message in (("notes.pt", "is unreadable"), ("empty", "folder without config.json"),
                         ("bert", "model_type 'bert' is not a Hugging Face CLIPModel"),
                         ("absent.pt", "does not exist")):
        with pytest.raises(ModelError, match=message) as exc:
            load_clip(name, tmp_path / bad)
        _forms_named(str(exc.value))


def test_the_cli_refuses_a_wrong_weights_file_with_exit_2(tmp_path):
    from avret_cli.main import app

    name = _arch(tmp_path, "avret-test-hf-tiny", HF_TINY)
    media = tmp_path / "media"
    media.mkdir()
    from avret.features.synthetic_media import write_media

    write_media(media / "a.mp4", seconds=1.0, freq=440.0)
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["features", "extract", "--media", str(media), "--out", str(tmp_path / "out"),
                                   "--audio-encoder", "logmel", "--clip-model", str(tmp_path / f"{name}.json"),
                                   "--clip-weights", str(tmp_path / "empty"), "--no-progress"])
    assert res.exit_code == 2, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "folder without config.json" in line[0]
    _forms_named(line[0])


def test_features_extract_takes_a_hugging_face_folder(tmp_path):
    from avret.data.folder import load_folder
    from avret.features.synthetic_media import write_media
    from avret_cli.main import app

    hf, folder = _hf_folder(tmp_path)
    name = _arch(tmp_path, "avret-test-hf-tiny", HF_TINY)
    media = tmp_path / "media"
    media.mkdir()
    write_media(media / "a.mp4", seconds=1.0, freq=440.0)
    res = CliRunner().invoke(app, ["features", "extract", "--media", str(media), "--out", str(tmp_path / "out"),
                                   "--audio-encoder", "logmel", "--clip-model", str(tmp_path / f"{name}.json"),
                                   "--clip-weights", str(folder), "--fps", "1", "--max-frames", "1",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = load_folder(tmp_path / "out")
    assert ds.visual.shape == (1, 24)
    recorded = json.loads((tmp_path / "out" / "extract_config.json").read_text())
    from avret.features.encoders import file_fingerprint

    # the folder is fingerprinted (its files' names and bytes), and a changed file changes it
    assert recorded["visual"]["weights_sha256"] == file_fingerprint(folder)
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert file_fingerprint(folder) != recorded["visual"]["weights_sha256"]
