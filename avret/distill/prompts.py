"""Video-enhanced prompts through CLIP's frozen text encoder (the VideoAdviser teacher's classifier).

Reading of the paper
--------------------
VideoAdviser's teacher is a CLIP model whose *text* prompts are enhanced by the video: the class
prompts are not fixed sentences but learnable context vectors shifted by a projection of the clip's
video embedding, and a clip's class logits are CLIP's scaled cosine similarities between its video
embedding and those prompt embeddings. We implement this as CoOp's learnable context (Zhou et al.
2022) with CoCoOp's instance-conditioned "meta-net" (Zhou et al. 2022b), fed with the video embedding
(and optionally the clip's audio features) instead of an image embedding:

    ctx_i        = ctx + meta_v(v_i) [+ meta_a(a_i)]          ctx: (n_ctx, W) learnable, W = text width
    prompt_{i,c} = [SOS] ctx_i  tokens("a video of {class_c}.")  [EOT]
    t_{i,c}      = normalize(TextEncoder(prompt_{i,c}))        frozen CLIP text tower
    logit_{i,c}  = s * <v_i, t_{i,c}>                          s = learnable logit scale, v_i unit norm

``TextEncoder`` is open_clip's own text path run on our input embeddings: + positional embedding,
transformer with CLIP's causal ``attn_mask`` (open_clip 3.x transformers take batch-first ``(N, L, W)``
input and transpose internally when built with ``batch_first=False``), ``ln_final``, pooling at the EOT
token (``argmax`` of the token ids, or ``eos``/``first``/``last`` per the model's ``pool_type``) and
``text_projection`` -- exactly ``CLIP.encode_text`` / ``TextTransformer.forward`` with the token
embedding lookup replaced by our embeddings. All text-tower weights are frozen (``requires_grad_(False)``);
gradients flow *through* them into the context vectors and the meta-nets.

Because of the causal mask, tokens after EOT never influence the EOT output, so prompts are cut to the
longest prompt's EOT position + 1 (typically ~12 of 77 tokens for real CLIP). The result is identical
to running the full context length.

Cost / ``prompt_conditioning``
------------------------------
``"per-clip"`` (CoCoOp, the video-enhanced prompts of the paper) needs B x C text-encoder passes per
batch of B clips and C classes: accurate, but the text tower dominates the cost. ``"shared"`` (CoOp) uses
one learnable prompt set for all clips: C passes per batch (the prompt features can even be cached at
inference), much cheaper, but the prompts no longer see the video; audio conditioning requires
``"per-clip"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avret.errors import ModelError

CONDITIONINGS = ("per-clip", "shared")

__all__ = ["CONDITIONINGS", "ClipTextEncoder", "PromptLearner", "normalize_template"]


def normalize_template(template: str) -> str:
    """Accept ``{class}`` or ``{}`` as the class placeholder; return the ``str.format`` form with ``{}``."""
    t = template.replace("{class}", "{}")
    if t.count("{}") != 1:
        raise ModelError(
            f"prompt template '{template}': expected exactly one '{{}}' or '{{class}}' placeholder"
        )
    return t


class ClipTextEncoder(nn.Module):
    """The frozen text tower of an open_clip model, runnable on input *embeddings*.

    Works for ``open_clip.CLIP`` (text modules as attributes) and ``CustomTextCLIP`` with a native
    ``TextTransformer`` (``model.text``). Hugging Face text towers and CoCa-style class tokens are
    rejected with :class:`ModelError`.
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        tower = clip_model.text if hasattr(clip_model, "text") else clip_model
        if not hasattr(tower, "token_embedding") or not hasattr(tower, "transformer"):
            raise ModelError(
                f"CLIP text tower {type(tower).__name__} is not open_clip's native text transformer; "
                "prompt learning needs token embeddings (Hugging Face text towers are not supported)"
            )
        if getattr(tower, "cls_emb", None) is not None:
            raise ModelError("CLIP text tower appends a class token (CoCa-style); not supported for prompts")
        self.token_embedding: nn.Embedding = tower.token_embedding
        self.positional_embedding: nn.Parameter = tower.positional_embedding
        self.transformer: nn.Module = tower.transformer
        self.ln_final: nn.Module = tower.ln_final
        self.text_projection = tower.text_projection
        self.pool_type: str = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
        eos = getattr(tower, "text_eos_id", None)
        self.eos_id: int | None = eos if eos is not None else getattr(tower, "eos_id", None)
        self.use_pad_mask: bool = bool(getattr(tower, "use_pad_mask", False))
        self.pad_id: int = int(getattr(tower, "pad_id", 0))
        self.heads: int = int(getattr(tower, "heads", 1))
        attn_mask = getattr(tower, "attn_mask", None)
        self.register_buffer("attn_mask", None if attn_mask is None else attn_mask.clone(), persistent=False)
        self.context_length: int = int(self.positional_embedding.shape[0])
        self.width: int = int(self.token_embedding.weight.shape[1])
        self.requires_grad_(False)
        self.eval()

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None and not self.use_pad_mask

    def train(self, mode: bool = True) -> ClipTextEncoder:  # always frozen, always eval
        return super().train(False)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the pooled (EOT) token of each row of ``tokens (N, L)``, as open_clip pools."""
        n, length = tokens.shape
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            if self.eos_id is None:
                raise ModelError("CLIP text tower pools at 'eos' but has no eos token id")
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(n, dtype=torch.long)
        if self.pool_type == "last":
            return torch.full((n,), length - 1, dtype=torch.long)
        raise ModelError(f"CLIP text pool type '{self.pool_type}' is not supported for prompt learning")

    def encode_embeddings(
        self, x: torch.Tensor, pool_idx: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text features ``(N, D)`` of input embeddings ``x (N, L, W)`` pooled at ``pool_idx (N,)``.

        ``valid (N, L)`` marks non-padding tokens (used only by bidirectional towers with a pad mask).
        """
        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else x.dtype
        n, length, _ = x.shape
        x = x.to(cast) + self.positional_embedding[:length].to(cast)
        attn = None if self.attn_mask is None else self.attn_mask[:length, :length]
        if self.use_pad_mask and valid is not None:
            key = valid[:, None, :].expand(-1, length, -1)
            add = torch.zeros(key.shape, dtype=x.dtype, device=x.device).masked_fill(~key, float("-inf"))
            add = add.repeat_interleave(self.heads, 0)
            attn = add if attn is None else attn.unsqueeze(0) + add
        x = self.transformer(x, attn_mask=attn)
        x = self.ln_final(x)
        x = x[torch.arange(n, device=x.device), pool_idx.to(x.device)]
        if self.text_projection is not None:
            x = (
                self.text_projection(x)
                if isinstance(self.text_projection, nn.Linear)
                else x @ self.text_projection
            )
        return x.float()

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same as open_clip's ``encode_text(tokens)`` (unnormalised), via :meth:`encode_embeddings`."""
        tokens = tokens.to(self.token_embedding.weight.device)
        return self.encode_embeddings(
            self.token_embedding(tokens), self.pool_index(tokens), tokens != self.pad_id
        )


def _meta_net(in_dim: int, hidden: int, out_dim: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)] if norm else []
    layers += [nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers)


class PromptLearner(nn.Module):
    """Learnable (optionally video/audio-conditioned) prompts -> unit-norm class text features.

    ``forward(video_emb (B, D), audio (B, Da) | None)`` returns ``(B, C, D)`` for ``per-clip``
    conditioning and ``(C, D)`` for ``shared``.
    """

    def __init__(
        self,
        text_encoder: ClipTextEncoder,
        tokenizer: Any,
        class_names: Sequence[str],
        *,
        template: str = "a video of {}.",
        n_ctx: int = 4,
        video_dim: int,
        audio_dim: int | None = None,
        conditioning: str = "per-clip",
        meta_hidden: int | None = None,
        max_text_batch: int = 8192,
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ModelError(f"prompt_conditioning '{conditioning}': expected one of {list(CONDITIONINGS)}")
        if n_ctx < 1:
            raise ModelError(f"n_ctx {n_ctx}: expected at least 1 learnable context vector")
        if audio_dim and conditioning != "per-clip":
            raise ModelError(
                "audio_dim is set but prompt_conditioning is 'shared'; audio conditioning needs 'per-clip'"
            )
        if not class_names:
            raise ModelError("class_names is empty; the teacher needs at least one class")
        template = normalize_template(template)
        self.conditioning = conditioning
        self.n_ctx = int(n_ctx)
        self.num_classes = len(class_names)
        self.max_text_batch = int(max_text_batch)
        self._encoder = [text_encoder]  # a plain list: not a registered submodule (owned by the teacher)
        width = text_encoder.width

        texts = [template.format(str(name).replace("_", " ")) for name in class_names]
        tokens = tokenizer(texts).to(torch.long).cpu()
        context = tokens.shape[1]
        sot = getattr(tokenizer, "sot_token_id", None)
        p = 1 if sot is not None and bool((tokens[:, 0] == sot).all()) else 0
        pool = text_encoder.pool_index(tokens)
        if text_encoder.pool_type in ("argmax", "eos"):
            pool = torch.where(pool >= p, pool + self.n_ctx, pool)
            too_long = torch.nonzero(pool >= min(context, text_encoder.context_length)).flatten()
            if len(too_long):
                i = int(too_long[0])
                raise ModelError(
                    f"class name '{class_names[i]}': prompt '{texts[i]}' plus {self.n_ctx} context tokens "
                    f"does not fit CLIP's context length {text_encoder.context_length}"
                )
            length = int(pool.max()) + 1 if text_encoder.causal else context
        else:
            length = context
        placeholder = torch.ones(len(texts), self.n_ctx, dtype=torch.long)
        ids = torch.cat([tokens[:, :p], placeholder, tokens[:, p:]], dim=1)[:, :length]
        with torch.no_grad():
            dev = text_encoder.token_embedding.weight.device
            emb = text_encoder.token_embedding(tokens.to(dev)).float().cpu()
        self.register_buffer("prefix", emb[:, :p].clone(), persistent=False)  # (C, p, W)
        self.register_buffer("suffix", emb[:, p : length - self.n_ctx].clone(), persistent=False)  # (C, S, W)
        self.register_buffer("pool_idx", pool.clone(), persistent=False)  # (C,)
        self.register_buffer("valid", ids != text_encoder.pad_id, persistent=False)  # (C, L)
        self.seq_len = length

        self.ctx = nn.Parameter(torch.empty(self.n_ctx, width))
        nn.init.normal_(self.ctx, std=0.02)
        hidden = int(meta_hidden) if meta_hidden else max(16, video_dim // 16)
        self.meta_video: nn.Module | None = None
        self.meta_audio: nn.Module | None = None
        if conditioning == "per-clip":
            self.meta_video = _meta_net(video_dim, hidden, width, norm=False)
            if audio_dim:
                self.meta_audio = _meta_net(int(audio_dim), hidden, width, norm=True)

    @property
    def text_encoder(self) -> ClipTextEncoder:
        return self._encoder[0]

    def context(
        self, video_emb: torch.Tensor | None = None, audio: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The context vectors: ``(n_ctx, W)`` shared, or ``(B, n_ctx, W)`` per clip."""
        if self.conditioning == "shared":
            return self.ctx
        if video_emb is None:
            raise ModelError("per-clip prompts need the video embedding")
        shift = self.meta_video(video_emb)  # type: ignore[misc]
        if self.meta_audio is not None:
            if audio is None:
                raise ModelError("this teacher conditions its prompts on audio; pass audio features (B, Da)")
            shift = shift + self.meta_audio(audio.to(shift.dtype))
        return self.ctx.unsqueeze(0) + shift.unsqueeze(1)

    def _encode(self, prompts: torch.Tensor, pool: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n = prompts.shape[0]
        if n <= self.max_text_batch:
            return self.text_encoder.encode_embeddings(prompts, pool, valid)
        chunks = [
            self.text_encoder.encode_embeddings(
                prompts[i : i + self.max_text_batch],
                pool[i : i + self.max_text_batch],
                valid[i : i + self.max_text_batch],
            )
            for i in range(0, n, self.max_text_batch)
        ]
        return torch.cat(chunks)

    def forward(
        self, video_emb: torch.Tensor | None = None, audio: torch.Tensor | None = None
    ) -> torch.Tensor:
        ctx = self.context(video_emb, audio)
        c = self.num_classes
        if ctx.ndim == 2:
            prompts = torch.cat([self.prefix, ctx.unsqueeze(0).expand(c, -1, -1), self.suffix], dim=1)
            return F.normalize(self._encode(prompts, self.pool_idx, self.valid), dim=-1)
        b = ctx.shape[0]
        prompts = torch.cat(
            [
                self.prefix.unsqueeze(0).expand(b, -1, -1, -1),
                ctx.unsqueeze(1).expand(-1, c, -1, -1),
                self.suffix.unsqueeze(0).expand(b, -1, -1, -1),
            ],
            dim=2,
        ).reshape(b * c, self.seq_len, -1)
        feats = self._encode(prompts, self.pool_idx.repeat(b), self.valid.repeat(b, 1))
        return F.normalize(feats.reshape(b, c, -1), dim=-1)
