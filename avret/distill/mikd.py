"""MI-based cross-modal KD with a training-only modality (after Chen et al., CVPR 2023), ``--method mi-kd``.

The *auxiliary modality* is the teacher view (mean-pooled ``teacher_frames``), which the students
(the towers) never see. Three networks are trained jointly with the towers:

* **Teacher** ``T``: a :class:`~avret.distill.multimodal_teacher.MultimodalTeacher` over audio +
  visual + teacher view (``MIKDConfig.fusion``); its representation ``t`` is the
  trunk output. It is trained by the tower trainer's optimiser (its parameters are returned by
  :meth:`MIKDLoss.parameters`) with a cross-entropy classification loss (weight
  ``teacher_ce``) so that the MI terms cannot make it weak or collapse it.
* **Auxiliary-modality model** ``A``: an MLP encoder of the teacher view alone, representation ``u``.
* **Students** ``S``: the audio and visual towers' L2-normalised embeddings ``s_audio``, ``s_visual``.

Objective added to the towers' own task loss (λ = ``lambdas``, ``--mi-weights``;
the settings are :class:`~avret.distill.configs.MIKDConfig`'s, whose defaults are written there)::

    weight · [ λ1 · ½ Σ_m InfoNCE(t, s_m) + λ2 · InfoNCE(t, u) + λ3 · ½ Σ_m Adv_m ] + teacher_ce · CE(T)

* **InfoNCE** (MI lower bound ``I(X;Y) ≥ log B − L``): a learnable critic
  ``f(x, y) = <ĝ(x), ĥ(y)> / τ`` with linear projections ``g``, ``h`` to ``proj_dim``
  dimensions, L2-normalised (ĝ, ĥ), and a learnable temperature ``τ`` (init ``temperature``,
  clamped to [0.01, 1]); ``L`` is the symmetric cross-entropy of the ``B × B`` critic matrix
  with the matching clip as the positive (other clips of the batch are the negatives).
  Minimising ``L`` maximises both MIs; one critic per pair (t, s_audio), (t, s_visual), (t, u).
* **Adversarial conditional-entropy term** (minimises ``H(T | S_m)``): a predictor
  ``P_m`` (MLP) maps the student embedding to a "student-predicted" teacher representation
  ``t̂_m = P_m(s_m)``; a discriminator ``D_m`` (MLP on ``[t; s_m]``) tells real pairs
  ``(t, s_m)`` from predicted pairs ``(t̂_m, s_m)``. When ``D_m`` cannot tell them apart, ``t``
  is (in distribution, given ``s_m``) a deterministic function of ``s_m``, i.e. ``H(T | S_m)`` is
  minimal (the conditional-GAN argument).

  - *Discriminator phase*, inside every :meth:`MIKDLoss.__call__`, **before** the generator-side
    loss is computed: on detached ``t``, ``s_m``, ``t̂_m``,
    ``L_D = BCE(D(t, s), 1) + BCE(D(t̂, s), 0)``, one Adam step of the discriminators' own
    optimiser (``disc_lr``, betas (0.5, 0.999)). Discriminator parameters are not
    returned to the tower trainer and are frozen (``requires_grad=False``) outside this phase.
  - *Generator phase*: with ``D_m`` frozen, flipped labels (non-saturating):
    ``Adv_m = BCE(D(t̂, s), 1) + BCE(D(t, s), 0)``; its gradient updates the towers, the
    predictors and the teacher through the trainer's optimiser.

The InfoNCE critics and the adversarial terms live in :mod:`avret.losses.mi`; this module holds
the method (teacher, auxiliary model, predictors, discriminators and their phases, the builder).
Every tensor is created on the device of its inputs and the discriminators' optimiser refers to
their parameters, whose identity ``Module.to`` keeps, so the loss runs wherever the tower trainer
moves it. All of this is training-only: the deployed towers have the same parameters and inference cost as
``--method none``. The estimators' values are logged in the training history (``mi_ts_bound``,
``mi_ta_bound`` in nats, ``mi_adv``, ``mi_disc``, ``mi_teacher_ce``, ``mi_teacher_acc``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from avret.distill.configs import MIKDConfig
from avret.distill.context import MethodContext
from avret.distill.multimodal_teacher import FUSIONS, STUDENT_MODALITIES, build_teacher, dataset_inputs
from avret.errors import AvretError
from avret.losses.auxiliary import Batch
from avret.losses.mi import InfoNCECritic, discriminator_loss, generator_loss


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """``Linear → GELU → Linear``: the predictors', discriminators' and view encoder's network."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ViewEncoder(nn.Module):
    """The auxiliary-modality model: standardise the pooled teacher view → MLP."""

    def __init__(self, view: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", view.mean(0))
        self.register_buffer("std", view.std(0).clamp_min(1e-4))
        self.mlp = mlp(view.shape[1], hidden, hidden)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return self.mlp((view - self.mean) / self.std)


class MIKDLoss(nn.Module):
    """The mi-kd auxiliary loss (see the module docstring).

    ``teacher`` is a :class:`~avret.distill.multimodal_teacher.MultimodalTeacher`; ``view`` the
    ``(N_train, Dt)`` pooled teacher view of the training clips (a buffer, indexed by ``Batch.rows``).
    """

    def __init__(self, teacher: nn.Module, view: torch.Tensor, embed_dim: int, weights: tuple[float, float, float],
                 teacher_ce: float, temperature: float, proj_dim: int, hidden: int, disc_lr: float,
                 weight: float) -> None:
        super().__init__()
        self.teacher = teacher
        t_dim = teacher.hidden_dim
        self.register_buffer("view", view.float())
        self.aux_model = ViewEncoder(self.view, hidden)
        self.critics = nn.ModuleDict({m: InfoNCECritic(t_dim, embed_dim, proj_dim, temperature)
                                      for m in STUDENT_MODALITIES})
        self.aux_critic = InfoNCECritic(t_dim, hidden, proj_dim, temperature)
        self.predictors = nn.ModuleDict({m: mlp(embed_dim, hidden, t_dim) for m in STUDENT_MODALITIES})
        self.discriminators = nn.ModuleDict({m: mlp(t_dim + embed_dim, hidden, 1) for m in STUDENT_MODALITIES})
        self.discriminators.requires_grad_(False)
        self.disc_opt = torch.optim.Adam(self.discriminators.parameters(), lr=disc_lr, betas=(0.5, 0.999))
        self.lambdas = tuple(float(x) for x in weights)
        self.teacher_ce = teacher_ce
        self.weight = weight

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """Everything the tower trainer optimises: teacher, auxiliary model, critics, predictors.

        The discriminators are excluded: they have their own optimiser and phase.
        """
        for name, module in self.named_children():
            if name != "discriminators":
                yield from module.parameters(recurse)

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The discriminators' parameters (updated only in :meth:`discriminator_step`)."""
        return self.discriminators.parameters()

    def discriminator_step(self, t: torch.Tensor, students: dict[str, torch.Tensor],
                           predicted: dict[str, torch.Tensor]) -> float:
        """One optimiser step of the discriminators on detached inputs; returns their BCE loss."""
        t = t.detach()
        self.discriminators.requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = sum(discriminator_loss(d, t, predicted[m].detach(), students[m].detach())
                           for m, d in self.discriminators.items()) / len(self.discriminators)
                self.disc_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.disc_opt.step()
                self.disc_opt.zero_grad(set_to_none=True)
        finally:
            self.discriminators.requires_grad_(False)
        return loss.item()

    def forward(self, batch: Batch, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.teacher.train()
        view = self.view[batch.rows]
        t = self.teacher.encode({"audio": batch.audio, "visual": batch.visual, "view": view})
        logits = self.teacher.classifier(t)
        ce = F.cross_entropy(logits, batch.labels)
        u = self.aux_model(view)
        students = {"audio": audio, "visual": visual}
        predicted = {m: self.predictors[m](students[m]) for m in STUDENT_MODALITIES}
        disc = self.discriminator_step(t, students, predicted)  # phase 1: discriminators only
        # phase 2 (generator side): discriminators frozen, flipped labels.
        adv = sum(generator_loss(d, t, predicted[m], students[m])
                  for m, d in self.discriminators.items()) / len(self.discriminators)
        nce_ts = sum(self.critics[m](t, students[m]) for m in STUDENT_MODALITIES) / len(STUDENT_MODALITIES)
        nce_ta = self.aux_critic(t, u)
        l1, l2, l3 = self.lambdas
        loss = self.weight * (l1 * nce_ts + l2 * nce_ta + l3 * adv) + self.teacher_ce * ce
        log_b = math.log(len(batch.rows))
        logs = {"mi_ts_bound": log_b - nce_ts.item(), "mi_ta_bound": log_b - nce_ta.item(), "mi_adv": adv.item(),
                "mi_disc": disc, "mi_teacher_ce": ce.item(),
                "mi_teacher_acc": (logits.argmax(1) == batch.labels).float().mean().item()}
        return loss, logs


def build_mikd(ctx: MethodContext, cfg: MIKDConfig) -> MIKDLoss:
    """A fresh multimodal teacher, view encoder, critics and discriminators for :class:`MIKDLoss`.

    Nothing is trained before the towers (the teacher learns jointly with them), so ``ctx.device``
    is not needed here: the tower trainer moves the returned loss to the towers' device.
    """
    if cfg.fusion not in FUSIONS:
        raise AvretError(f"--mi-fusion '{cfg.fusion}': expected 'sum' or 'concat'")
    torch.manual_seed(ctx.seed)
    hidden = int(cfg.hidden)
    teacher = build_teacher(ctx.train, hidden, cfg.fusion)
    view = dataset_inputs(ctx.train)["view"]
    return MIKDLoss(teacher, view, ctx.embed_dim, cfg.lambdas, float(cfg.teacher_ce), float(cfg.temperature),
                    int(cfg.proj_dim), hidden, float(cfg.disc_lr), float(cfg.weight))
