"""A word-level tokenizer built locally from the Shapes World vocabulary (no download)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from editloop.world.palette import VOCABULARY

SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>")
MAX_LENGTH = 40  # the longest caption (three objects) is 36 tokens with <bos> and <eos>


def build_tokenizer(max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate((*SPECIAL, *VOCABULARY))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
