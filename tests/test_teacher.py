"""VideoAdviser teacher and step 1 (avret.distill): tiny open_clip loaded from a local file, public API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avret.distill.prompts import ClipTextEncoder
from avret.distill.step1 import RelevanceHead, bhattacharyya_relevance, fit_relevance_head
from avret.distill.teacher import TeacherConfig, VideoAdviserTeacher, train_teacher
from avret.distill.video_encoder import VideoEncoder
from avret.errors import ModelError
from avret.losses.relevance import relevance_loss, same_class_targets
from avret.models.clip import RANDOM_INIT, load_clip, load_clip_tokenizer
from avret.sentiment.sentiment_teacher import (
    SENTIMENT_CLASS_NAMES,
    SentimentRegressionHead,
    SentimentTeacher,
    sentiment_loss,
    text_as_frames,
    train_sentiment_teacher,
)
from tests.fixtures_clip import make_class_frames, make_tiny_clip

CLASSES = ["dog barking", "baby crying", "chainsaw", "fireworks"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one intra-op thread is fastest and avoids spin-waiting on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(tiny: tuple[str, str]) -> torch.nn.Module:
    return load_clip(*tiny)


def _teacher(tiny: tuple[str, str], clip: torch.nn.Module | None = None, **kw) -> VideoAdviserTeacher:
    cfg = TeacherConfig(
        clip_model=tiny[0], clip_weights=tiny[1], class_names=list(kw.pop("classes", CLASSES)), **kw
    )
    return VideoAdviserTeacher(cfg, clip_model=clip)


# ---------------------------------------------------------------------------- CLIP loading
def test_load_clip_reads_the_local_file(tiny, clip):
    saved = torch.load(tiny[1], weights_only=True)
    for key, value in clip.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_load_clip_refuses_bad_files(tiny, tmp_path):
    name, weights = tiny
    with pytest.raises(ModelError, match="does not exist"):
        load_clip(name, tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="unreadable"):
        load_clip(name, garbage)
    state = torch.load(weights, weights_only=True)
    bad = dict(state)
    bad["token_embedding.weight"] = torch.zeros(10, 32)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(
        ModelError, match=r"'token_embedding\.weight' has shape \(10, 32\), expected \(49408, 32\)"
    ):
        load_clip(name, tmp_path / "shape.pt")
    missing = {k: v for k, v in state.items() if k != "ln_final.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match=r"key 'ln_final\.weight' is missing"):
        load_clip(name, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="not an open_clip architecture.*ViT-B-32"):
        load_clip("no-such-clip", weights)
    with pytest.raises(ModelError, match="no weights file"):
        load_clip(name, None)
    a = load_clip(name, None, allow_random=True)
    b = load_clip(name, RANDOM_INIT, allow_random=True)
    assert torch.equal(a.token_embedding.weight, b.token_embedding.weight)  # seeded, deterministic


def test_text_encoder_matches_open_clip_encode_text(tiny, clip):
    tokens = load_clip_tokenizer(tiny[0])(["a video of a dog.", "fireworks at night"])
    enc = ClipTextEncoder(clip)
    assert torch.allclose(enc.encode_tokens(tokens), clip.encode_text(tokens), atol=1e-6)


def test_prompts_equal_encode_text_of_the_spelled_out_sentence(tiny, clip):
    """With ctx = embeddings of 'x x x x', the (truncated) prompt path is CLIP's encode_text."""
    teacher = _teacher(tiny, clip, prompt_conditioning="shared")
    tok = load_clip_tokenizer(tiny[0])
    with torch.no_grad():
        x_ids = tok(["x x x x"])[0, 1:5]
        teacher.prompt_learner.ctx.copy_(clip.token_embedding(x_ids))
        got = teacher.class_text_features()
        want = F.normalize(clip.encode_text(tok([f"x x x x a video of {c}." for c in CLASSES])), dim=-1)
    assert torch.allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------- teacher
def test_gradients_reach_prompt_context_not_frozen_clip(tiny, clip):
    teacher = _teacher(tiny, clip, frame_dim=48, pooling="transformer")
    frames, mask = (
        torch.randn(3, 4, 48),
        torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool),
    )
    loss = F.cross_entropy(teacher(frames, mask), torch.tensor([0, 1, 2]))
    loss.backward()
    ctx = teacher.prompt_learner.ctx
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert teacher.prompt_learner.meta_video[0].weight.grad.abs().sum() > 0
    assert teacher.video_encoder.proj.weight.grad.abs().sum() > 0
    for name, p in teacher.text_encoder.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    frozen = {id(p) for p in teacher.text_encoder.parameters()}
    assert frozen and not frozen & {id(p) for p in teacher.trainable_parameters()}


def test_per_clip_prompts_follow_the_video_shared_do_not(tiny, clip):
    v1, v2 = F.normalize(torch.randn(2, 32), dim=-1).unbind(0)
    per_clip = _teacher(tiny, clip)
    with torch.no_grad():
        t = per_clip.class_text_features(torch.stack([v1, v2]))
    assert t.shape == (2, len(CLASSES), 32)
    assert not torch.allclose(t[0], t[1], atol=1e-4)
    shared = _teacher(tiny, clip, prompt_conditioning="shared")
    with torch.no_grad():
        assert torch.equal(shared.class_text_features(v1[None]), shared.class_text_features(v2[None]))
        frames = torch.randn(2, 3, 32)
        logits = shared(frames)
        t_shared = shared.class_text_features()
        v = shared.encode_video(frames)
    assert logits.shape == (2, len(CLASSES))
    assert torch.allclose(logits, shared.logit_scale * v @ t_shared.t(), atol=1e-5)


def test_mean_pooling_respects_the_mask():
    enc = VideoEncoder(8, 8, pooling="mean")
    frames = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    junk = frames.clone()
    junk[~mask] = 1e6
    unit = F.normalize(frames, dim=-1)
    want = torch.stack([unit[0, :2].mean(0), unit[1, 0]])
    assert torch.allclose(enc(junk, mask), F.normalize(want, dim=-1), atol=1e-6)
    trans = VideoEncoder(8, 16, pooling="transformer")
    out = trans(
        torch.cat([junk, torch.randn(1, 3, 8)]), torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    )
    assert torch.allclose(out[:2], trans(frames, mask)[:2], atol=1e-5)
    assert torch.equal(out[2], torch.zeros(16))  # a clip without frames: zero embedding, no NaN


def test_save_load_round_trip_and_checkpoint_errors(tiny, clip, tmp_path):
    teacher = _teacher(tiny, clip, frame_dim=24, audio_dim=6)
    with torch.no_grad():
        for p in teacher.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    frames, audio = torch.randn(5, 4, 24), torch.randn(5, 6)
    out = teacher.save_pretrained(tmp_path / "t")
    doc = json.loads((out / "config.json").read_text())
    assert doc["model_type"] == "videoadviser-teacher" and doc["format_version"] == 1
    assert doc["clip_weights"] == tiny[1] and len(doc["clip_fingerprint"]) == 64
    from safetensors.torch import load_file, save_file

    tensors = load_file(out / "model.safetensors")
    assert tensors and not any(k.startswith("text_encoder.") for k in tensors)
    again = VideoAdviserTeacher.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(teacher.eval()(frames, audio=audio), again(frames, audio=audio))

    with pytest.raises(ModelError, match="model directory not found"):
        VideoAdviserTeacher.from_pretrained(tmp_path / "missing")
    other = make_tiny_clip(tmp_path, seed=1, filename="other.pt")
    with pytest.raises(ModelError, match="fingerprint"):
        VideoAdviserTeacher.from_pretrained(out, clip_weights=other[1])
    tensors["prompt_learner.ctx"] = torch.zeros(2, 32)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ModelError, match=r"'prompt_learner\.ctx' has shape \(2, 32\), expected \(4, 32\)"):
        VideoAdviserTeacher.from_pretrained(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"model\.safetensors: file not found"):
        VideoAdviserTeacher.from_pretrained(out)


def test_random_init_clip_is_recorded_and_reloads(tiny, tmp_path):
    cfg = TeacherConfig(
        clip_model=tiny[0], clip_weights=RANDOM_INIT, class_names=CLASSES, prompt_conditioning="shared"
    )
    teacher = VideoAdviserTeacher(cfg)
    assert teacher.metadata()["clip_weights"] == "random-init"
    again = VideoAdviserTeacher.from_pretrained(teacher.save_pretrained(tmp_path / "r"))
    frames = torch.randn(2, 3, 32)
    with torch.no_grad():
        assert torch.equal(teacher(frames), again(frames))


def test_teacher_learns_an_easy_problem_deterministically(tiny, clip):
    frames, mask, labels = make_class_frames(30, 4, frames=4, dim=512, noise=1.0, seed=0)
    vf, vm, vl = make_class_frames(10, 4, frames=4, dim=512, noise=1.0, seed=1)
    # same class means for validation: regenerate with the train seed's means
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 512))
    vf = (means[vl][:, None, :] + np.random.default_rng(5).normal(size=vf.shape)).astype(np.float32)
    runs = []
    for _ in range(2):
        teacher = _teacher(tiny, clip, frame_dim=512)
        hist = train_teacher(
            teacher,
            frames,
            mask,
            labels,
            val=(vf, vm, vl),
            epochs=12,
            lr=1e-2,
            batch_size=32,
            seed=3,
            patience=4,
        )
        runs.append((hist, teacher.predict_logits(vf, vm)))
    hist, logits = runs[0]
    assert hist["best"]["val_acc"] >= 0.9
    assert (logits.argmax(-1).numpy() == vl).mean() >= 0.9
    assert torch.equal(runs[0][1], runs[1][1])
    assert [e["train_loss"] for e in runs[0][0]["epochs"]] == [e["train_loss"] for e in runs[1][0]["epochs"]]


# ---------------------------------------------------------------------------- step 1: relevance
def test_bhattacharyya_relevance_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    r = bhattacharyya_relevance(p, p)
    want = torch.tensor(
        [[1.0, 0.0, math.sqrt(0.5)], [0.0, 1.0, math.sqrt(0.5)], [math.sqrt(0.5)] * 2 + [1.0]]
    )
    assert torch.allclose(r, want, atol=1e-5)
    # tau = 0.5 squares then renormalises: [0.8, 0.2] -> [0.64, 0.04] / 0.68; uniform stays uniform
    a, b = torch.tensor([[0.8, 0.2]]), torch.tensor([[0.5, 0.5]])
    sharp = (0.64 / 0.68, 0.04 / 0.68)
    want_ab = math.sqrt(sharp[0] * 0.5) + math.sqrt(sharp[1] * 0.5)
    assert abs(float(bhattacharyya_relevance(a, b, tau=0.5)) - want_ab) < 1e-5
    head = RelevanceHead(init_tau=0.5)
    with torch.no_grad():
        assert abs(float(head.relevance_matrix(a, b)) - want_ab) < 1e-5
        assert abs(float(head.pair_relevance(a, b)) - want_ab) < 1e-5


def test_relevance_loss_hand_computed():
    r = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    y = same_class_targets(torch.tensor([2, 2]), torch.tensor([2, 2]))
    assert abs(float(relevance_loss(r, y)) + math.log(0.8)) < 1e-5  # only positives: plain mean
    assert abs(float(relevance_loss(r, y, loss="mse")) - 0.04) < 1e-6
    # 3 clips, labels [0, 0, 1]: positive pair (0,1); negatives (0,2), (1,2) (and transposes)
    r3 = torch.tensor([[1.0, 0.9, 0.2], [0.9, 1.0, 0.4], [0.2, 0.4, 1.0]])
    y3 = same_class_targets(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    pos, neg = -math.log(0.9), (-math.log(0.8) - math.log(0.6)) / 2
    assert abs(float(relevance_loss(r3, y3)) - (0.5 * pos + 0.5 * neg)) < 1e-5
    unbalanced = (2 * pos - 2 * math.log(0.8) - 2 * math.log(0.6)) / 6
    assert abs(float(relevance_loss(r3, y3, balanced=False)) - unbalanced) < 1e-5


def test_fit_relevance_head_lowers_the_pair_loss():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(50)
    logits = 1.5 * F.one_hot(labels, 4).float() + torch.randn(200, 4, generator=gen)  # mostly right, soft
    post = logits.softmax(-1)
    head = RelevanceHead()
    with torch.no_grad():
        before = float(relevance_loss(head(post, post), same_class_targets(labels, labels)))
    hist = fit_relevance_head(
        head, post[:150], labels[:150], val=(post[150:], labels[150:]), epochs=30, seed=0
    )
    with torch.no_grad():
        after = float(relevance_loss(head(post, post), same_class_targets(labels, labels)))
        r = head(post, post)
    assert after < before and hist["tau"] != 1.0
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0


# ---------------------------------------------------------------------------- step 1: sentiment
@torch.no_grad()
def test_sentiment_head_and_loss_hand_computed():
    head = SentimentRegressionHead()
    one_hot = torch.full((1, 7), -1e4)
    one_hot[0, 5] = 0.0  # level +2
    assert abs(float(head(one_hot)) - 2.0) < 1e-5
    assert abs(float(head(torch.zeros(1, 7)))) < 1e-6  # uniform -> E = 0
    head.scale.fill_(2.0)
    head.bias.fill_(0.5)
    assert abs(float(head(one_hot)) - 4.5) < 1e-5
    score, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert abs(float(sentiment_loss(score, target)) - 1.5) < 1e-6
    assert abs(float(sentiment_loss(score, target, kind="mse")) - 2.5) < 1e-6
    logits = torch.randn(2, 7)
    target = torch.tensor([0.4, -2.6])  # rounded levels 0 (index 3) and -3 (index 0)
    want = F.l1_loss(score, target) + 0.5 * F.cross_entropy(logits, torch.tensor([3, 0]))
    got = sentiment_loss(score, target, logits=logits, levels=head.levels, ce_weight=0.5)
    assert abs(float(got) - float(want)) < 1e-5


def test_sentiment_teacher_video_and_text_inputs(tiny, clip, tmp_path):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(7, 40))
    level = rng.integers(0, 7, size=120)
    emb = (means[level] + 0.3 * rng.normal(size=(120, 40))).astype(np.float32)
    scores = (level - 3).astype(np.float32)
    frames, mask = text_as_frames(emb)
    model = SentimentTeacher.create(tiny[0], tiny[1], frame_dim=40, teacher_input="text", clip=clip)
    assert model.config.class_names == list(SENTIMENT_CLASS_NAMES)
    hist = train_sentiment_teacher(
        model,
        frames[:90],
        mask[:90],
        scores[:90],
        val=(frames[90:], mask[90:], scores[90:]),
        epochs=8,
        lr=2e-2,
        batch_size=30,
    )
    first = hist["epochs"][0]["val_mae"]
    assert hist["best"]["val_mae"] < first and hist["best"]["val_mae"] < 1.5
    out = model.save_pretrained(tmp_path / "s")
    assert json.loads(Path(out / "config.json").read_text())["teacher_input"] == "text"
    again = SentimentTeacher.from_pretrained(out)
    assert torch.equal(model.predict(frames, mask), again.predict(frames, mask))
    assert model.predict(frames[:3], mask[:3]).shape == (3,)
    video = SentimentTeacher.create(tiny[0], tiny[1], frame_dim=None, teacher_input="video", clip=clip)
    assert video(torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)).shape == (2,)


def test_teacher_from_a_dataset(tiny, clip):
    from avret.data.dataset import AVDataset
    from avret.distill.teacher import teacher_config_for_dataset, train_teacher_on_dataset

    frames, mask, labels = make_class_frames(12, 4, frames=3, dim=20, noise=0.3, seed=0)
    n = len(labels)
    split = np.array(["train"] * 36 + ["test"] * (n - 36))
    ds = AVDataset(
        name="tiny-synth",
        clip_ids=[f"c{i}" for i in range(n)],
        labels=labels,
        class_names=CLASSES,
        audio=np.random.default_rng(0).normal(size=(n, 6)),
        visual=np.zeros((n, 5)),
        split=split,
        teacher_frames=frames,
        teacher_mask=mask,
        synthetic=True,
    )
    cfg = teacher_config_for_dataset(ds, tiny[0], tiny[1], use_audio=True, n_ctx=2)
    assert (cfg.frame_dim, cfg.audio_dim, cfg.class_names) == (20, 6, CLASSES)
    teacher = VideoAdviserTeacher(cfg, clip_model=clip)
    hist = train_teacher_on_dataset(teacher, ds, epochs=2, batch_size=16)
    assert len(hist["epochs"]) == 2 and "val_acc" in hist["epochs"][0]
    real = AVDataset(**{**ds.__dict__, "synthetic": False})
    with pytest.raises(ModelError, match="clip-weights is required"):
        teacher_config_for_dataset(real, tiny[0], None)
