"""MSD: saliency-aware multimodal KD (Jin et al., Findings of EMNLP 2021), as ``--method msd``.

Besides the towers' own retrieval objective and a usual KD term, MSD adds one KD term per
modality in which teacher and student see that modality alone, weighted by how *salient* the
modality is. Here:

* **Teacher** (training-only): :class:`~avret.distill.multimodal_teacher.MultimodalTeacher` over
  audio + visual + mean-pooled teacher view, each projected then fused (``fusion``: ``sum``
  or ``concat``), with a learned *missing token* per modality replacing a removed modality's
  projection. It is trained first on the train split (cross-entropy, modality dropout 0.3 so
  the tokens are learned; ``teacher_epochs`` at most, early stopping on val cross-entropy;
  by the one loop, :func:`avret.train.loop.fit`, on ``MethodContext.device``), then frozen; its
  posteriors on the training clips are computed once.
* **Student** = the towers, read out by two training-only linear classifier heads on the
  L2-normalised embeddings: audio-only student ``z_a = head_a(audio_emb)``, visual-only student
  ``z_v = head_v(visual_emb)``, full student ``(z_a + z_v) / 2`` (mean of the two heads' logits).
* **Loss** (per batch, ``T`` = ``MSDConfig.temperature``)::

      weight · [ KD_T(t_full, (z_a+z_v)/2) + Σ_m w_m · KD_T(t_only_m, z_m) ],   m ∈ {audio, visual}

  with ``KD_T(t, s) = T² · KL(softmax(t/T) || softmax(s/T))`` per clip, averaged over the batch.
  ``t_full`` = teacher with all three modalities; ``t_only_audio`` = teacher with visual *and*
  teacher view replaced by their missing tokens; ``t_only_visual`` = teacher with audio *and*
  teacher view replaced by their missing tokens (the teacher view is never a student modality).
* **Saliency** of modality m for clip i (temperature 1):
  ``s_im = KL(p_teacher(full) || p_teacher(m removed))``, m removed = its projection replaced by
  its missing token, the other two modalities present. Zero when the teacher ignores m.
* **Weights** ``w_m`` (``weighting``, ``--msd-weighting``; they always sum to 1 over m):

  - ``uniform``: ``1/2`` each;
  - ``population``: ``mean_i s_im`` normalised over m (one pair of weights for the whole run);
  - ``instance``: ``s_im / Σ_m s_im`` per clip (uniform where both saliencies are ~0);
  - ``learned``: ``w = softmax(α)``, α meta-learned online on the validation split by a
    one-step look-ahead (learning-to-reweight, Ren et al. 2018) on a *proxy student*: the
    tower trainer's :class:`~avret.losses.auxiliary.AuxiliaryLoss` only sees embeddings, so the
    towers themselves cannot take a virtual step or embed validation clips. The proxy is a pair
    of linear heads on the standardised raw audio/visual features, trained alongside the towers
    with the same MSD loss (full-student KD + weighted per-modality KD). Each training step:
    virtual SGD step of the proxy with the current ``w`` (``meta_inner_lr``) →
    cross-entropy of the virtually-updated full proxy on a random validation mini-batch →
    its gradient w.r.t. α (second order through the virtual step) → Adam step on α
    (``meta_lr``) → real SGD step of the proxy with the new ``w``. The towers use the new
    ``w`` (constant, no gradient to α). Extra cost per step: ~3 forward/backward passes of two
    linear maps on a batch plus one on a validation batch — small next to the towers.

The teacher, the heads and the proxy are training-only: the deployed towers are unchanged, so
inference cost is the same as ``--method none``. The loss terms (KD, saliency, weights) live in
:mod:`avret.losses.msd_terms`; this module holds the method: the teacher, the meta-learner and the
builder. Settings come from its :class:`~avret.distill.configs.MSDConfig` (the defaults are
written there); the teacher's validation accuracy and the weights in use are
logged in the training history (``msd_teacher_val_acc``, ``msd_w_audio``, ``msd_w_visual``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from avret.distill.configs import MSDConfig
from avret.distill.context import MethodContext
from avret.distill.multimodal_teacher import (
    FUSIONS,
    MODALITIES,
    STUDENT_MODALITIES,
    MultimodalTeacher,
    build_teacher,
    dataset_inputs,
    train_multimodal_teacher,
)
from avret.errors import AvretError
from avret.losses.auxiliary import Batch
from avret.losses.msd_terms import WEIGHTINGS, modality_weights, msd_kd_terms, saliency_from_logits


def teacher_views(teacher: MultimodalTeacher, inputs: dict[str, torch.Tensor],
                  modalities: tuple[str, ...] = STUDENT_MODALITIES) -> dict[str, torch.Tensor]:
    """The frozen teacher's logits on ``inputs``: ``full`` (N, C), ``only`` and ``without`` (N, M, C).

    ``only[:, j]`` keeps modality ``modalities[j]`` alone (every other modality, teacher view
    included, replaced by its missing token); ``without[:, j]`` removes just that modality.
    The logits are on the teacher's device.
    """
    full = teacher.predict_logits(inputs)
    only = torch.stack([teacher.predict_logits(inputs, present=(m,)) for m in modalities], dim=1)
    without = torch.stack([teacher.predict_logits(inputs, present=[k for k in MODALITIES if k != m])
                           for m in modalities], dim=1)
    return {"full": full, "only": only, "without": without}


def modality_saliency(teacher: MultimodalTeacher, inputs: dict[str, torch.Tensor],
                      modalities: tuple[str, ...] = STUDENT_MODALITIES) -> torch.Tensor:
    """Saliency ``(N, M)`` of each modality for each clip (see :func:`avret.losses.msd_terms.saliency_from_logits`)."""
    views = teacher_views(teacher, inputs, modalities)
    return saliency_from_logits(views["full"], views["without"])


class MetaWeightLearner(nn.Module):
    """``learned`` weighting: ``softmax(α)`` meta-learned on validation through a linear proxy student.

    See the module docstring for the procedure. ``α`` and the proxy have their own optimisers;
    they are not returned to the tower trainer. The validation clips and the standardisation are
    buffers, so the learner follows the tower trainer's ``.to(device)``; ``Module.to`` keeps the
    identity of ``α`` and of the proxy's parameters, so both optimisers stay valid after the move.
    """

    def __init__(self, train_audio: torch.Tensor, train_visual: torch.Tensor, val_audio: torch.Tensor,
                 val_visual: torch.Tensor, val_labels: torch.Tensor, num_classes: int, temperature: float,
                 meta_lr: float, inner_lr: float, val_batch: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.temperature = temperature
        self.inner_lr = inner_lr
        self.val_batch = val_batch
        for name, x in (("audio", train_audio), ("visual", train_visual)):
            self.register_buffer(f"{name}_mean", x.float().mean(0))
            self.register_buffer(f"{name}_std", x.float().std(0).clamp_min(1e-4))
        self.register_buffer("val_audio", val_audio.float())
        self.register_buffer("val_visual", val_visual.float())
        self.register_buffer("val_labels", val_labels.long())
        self.alpha = nn.Parameter(torch.zeros(len(STUDENT_MODALITIES)))
        self.proxy = nn.ModuleDict({"audio": nn.Linear(train_audio.shape[1], num_classes),
                                    "visual": nn.Linear(train_visual.shape[1], num_classes)})
        self.alpha_opt = torch.optim.Adam([self.alpha], lr=meta_lr)
        self.proxy_opt = torch.optim.SGD(self.proxy.parameters(), lr=inner_lr)
        self.gen = torch.Generator().manual_seed(seed)  # validation mini-batches (CPU: the same on every device)

    def weights(self) -> torch.Tensor:
        """The current weights ``softmax(α)`` (M,), detached."""
        return torch.softmax(self.alpha, 0).detach()

    def standardise(self, audio: torch.Tensor, visual: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw features → the proxy's standardised inputs (training-split statistics)."""
        return {"audio": (audio - self.audio_mean) / self.audio_std,
                "visual": (visual - self.visual_mean) / self.visual_std}

    def proxy_logits(self, params: dict[str, torch.Tensor], x: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N, M, C)`` logits of each single-modality proxy head under ``params`` (functional, for the look-ahead)."""
        return torch.stack([F.linear(x[m], params[f"{m}.weight"], params[f"{m}.bias"])
                            for m in STUDENT_MODALITIES], dim=1)

    def step(self, audio: torch.Tensor, visual: torch.Tensor, t_full: torch.Tensor,
             t_only: torch.Tensor) -> torch.Tensor:
        """One meta step on a training batch (raw features, teacher logits); returns the new weights."""
        with torch.enable_grad():
            x = self.standardise(audio.float(), visual.float())
            params = dict(self.proxy.named_parameters())
            inner, _, _ = msd_kd_terms(self.proxy_logits(params, x), t_full, t_only, torch.softmax(self.alpha, 0),
                                       self.temperature)
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
            fast = {k: p - self.inner_lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
            rows = torch.randint(len(self.val_labels), (min(self.val_batch, len(self.val_labels)),),
                                 generator=self.gen).to(self.val_labels.device)
            xv = self.standardise(self.val_audio[rows], self.val_visual[rows])
            val_loss = F.cross_entropy(self.proxy_logits(fast, xv).mean(1), self.val_labels[rows])
            (g_alpha,) = torch.autograd.grad(val_loss, [self.alpha])
            self.alpha_opt.zero_grad(set_to_none=True)
            self.alpha.grad = g_alpha
            self.alpha_opt.step()
            w = self.weights()
            real, _, _ = msd_kd_terms(self.proxy_logits(params, x), t_full, t_only, w, self.temperature)
            self.proxy_opt.zero_grad(set_to_none=True)
            real.backward()
            self.proxy_opt.step()
        return w


class MSDLoss(nn.Module):
    """The MSD auxiliary loss on the towers' embeddings (see the module docstring).

    ``teacher_full`` ``(N_train, C)`` and ``teacher_only`` ``(N_train, M, C)`` are the frozen
    teacher's logits of the training clips (buffers); per-modality weights come either from
    ``sample_weights`` ``(N_train, M)`` (uniform / population / instance) or from ``learner``.
    """

    def __init__(self, teacher_full: torch.Tensor, teacher_only: torch.Tensor, embed_dim: int,
                 sample_weights: torch.Tensor | None = None, learner: MetaWeightLearner | None = None,
                 *, temperature: float, weight: float, constant_logs: dict[str, float] | None = None) -> None:
        super().__init__()
        if (sample_weights is None) == (learner is None):
            raise ValueError("MSDLoss: give exactly one of sample_weights and learner")
        num_classes = teacher_full.shape[1]
        self.register_buffer("teacher_full", teacher_full.float())
        self.register_buffer("teacher_only", teacher_only.float())
        self.register_buffer("sample_weights", None if sample_weights is None else sample_weights.float())
        self.learner = learner
        self.temperature = temperature
        self.weight = weight
        self.constant_logs = dict(constant_logs or {})
        self.heads = nn.ModuleDict({m: nn.Linear(embed_dim, num_classes) for m in STUDENT_MODALITIES})

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The parameters the tower trainer optimises: the two classifier heads only."""
        return self.heads.parameters(recurse)

    def forward(self, batch: Batch, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, dict]:
        rows = batch.rows
        t_full, t_only = self.teacher_full[rows], self.teacher_only[rows]
        if self.learner is not None:
            w = self.learner.step(batch.audio, batch.visual, t_full, t_only).expand(len(rows), -1)
        else:
            w = self.sample_weights[rows]
        students = {"audio": audio, "visual": visual}
        z = torch.stack([self.heads[m](students[m]) for m in STUDENT_MODALITIES], dim=1)
        loss, kd_full, kd_m = msd_kd_terms(z, t_full, t_only, w, self.temperature)
        logs = {"msd_kd_full": kd_full.item(), **self.constant_logs}
        for j, m in enumerate(STUDENT_MODALITIES):
            logs[f"msd_kd_{m}"] = kd_m[:, j].mean().item()
            logs[f"msd_w_{m}"] = w[:, j].mean().item()
        return self.weight * loss, logs


def build_msd(ctx: MethodContext, cfg: MSDConfig) -> MSDLoss:
    """Train the multimodal teacher on ``ctx.train``, then build :class:`MSDLoss` from its frozen outputs.

    The teacher trains on ``ctx.device`` (early stopping on ``ctx.val``); the returned loss is on
    the CPU, and the tower trainer moves it to the towers' device.
    """
    if cfg.weighting not in WEIGHTINGS:
        raise AvretError(f"--msd-weighting '{cfg.weighting}': expected one of {' | '.join(WEIGHTINGS)}")
    if cfg.fusion not in FUSIONS:
        raise AvretError(f"--msd-fusion '{cfg.fusion}': expected 'sum' or 'concat'")
    torch.manual_seed(ctx.seed)
    teacher = build_teacher(ctx.train, int(cfg.teacher_hidden), cfg.fusion)
    fitted = train_multimodal_teacher(teacher, ctx.train, ctx.val, epochs=int(cfg.teacher_epochs),
                                      seed=ctx.seed, device=ctx.device)
    teacher.requires_grad_(False)
    views = {k: v.cpu() for k, v in teacher_views(teacher, dataset_inputs(ctx.train)).items()}
    saliency = saliency_from_logits(views["full"], views["without"])
    temperature = float(cfg.temperature)
    logs = {"msd_teacher_val_acc": float(fitted.best.get("val_accuracy", 0.0))}
    for j, m in enumerate(STUDENT_MODALITIES):
        logs[f"msd_saliency_{m}"] = float(saliency[:, j].mean())
    learner, weights = None, None
    if cfg.weighting == "learned":
        learner = MetaWeightLearner(
            torch.from_numpy(ctx.train.audio), torch.from_numpy(ctx.train.visual), torch.from_numpy(ctx.val.audio),
            torch.from_numpy(ctx.val.visual), torch.from_numpy(ctx.val.labels), ctx.train.num_classes,
            temperature, float(cfg.meta_lr), float(cfg.meta_inner_lr), seed=ctx.seed)
    else:
        weights = modality_weights(cfg.weighting, saliency)
    return MSDLoss(views["full"], views["only"], ctx.embed_dim, weights, learner, temperature=temperature,
                   weight=float(cfg.weight), constant_logs=logs)
