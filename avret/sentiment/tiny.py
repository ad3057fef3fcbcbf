"""A tiny random RoBERTa encoder + word-level tokenizer, written to a folder, for tests and smoke runs.

It goes through exactly the code path of a real encoder (``--encoder PATH`` ->
``AutoModel``/``AutoTokenizer`` with ``local_files_only``), but has 32 hidden units and 2 layers, so
a full train/eval/predict cycle takes seconds on a CPU. Its weights are random: numbers from it
say nothing about sentiment.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def make_tiny_roberta(directory: str | Path, words: Iterable[str], hidden: int = 32, layers: int = 2,
                      heads: int = 2, seed: int = 0) -> Path:
    """Save a random RoBERTa (hidden ``hidden``, ``layers`` layers) and a tokenizer over ``words``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in sorted({w.lower() for w in words}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_max_length=128)
    fast.save_pretrained(str(directory))
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=2 * hidden,
                           max_position_embeddings=136,
                           pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                           type_vocab_size=1)
    torch.manual_seed(seed)
    RobertaModel(config).save_pretrained(str(directory))
    return directory
