"""Convert an original LTG-BERT checkpoint (the classic `modeling_ltgbert.py` Hub wrapper) into hubzoo's `ltg_bert`.

Input: a folder with the wrapper's `config.json` and `pytorch_model.bin` (or `model.safetensors`), as written by its
`save_pretrained`. Every key is mapped by an explicit table; keys the table does not know, and keys the model needs but
the checkpoint lacks, stop the conversion with the full list. Two things cannot be read from the checkpoint and must be
stated by the caller:

* `position_qk_split`: the originals split the projected relative embeddings in two incompatible ways with identical
  keys (see `LtgBertConfig`). The wrong choice gives a model that loads cleanly and predicts near-randomly.
* the padding id: the original config defaults to `pad_token_id=4`, which is `[MASK]` in the BabyLM tokenizer
  (`[PAD]` is 3). The id is taken from the tokenizer when one is given, or from `pad_token_id=`.
"""

import re
from typing import Optional

import torch

from hub_exports.strict_mapping import (
    ConversionError,
    check_complete,
    checkpoint_folder,
    load_folder_weights,
    make_config,
    read_json_config,
)
from hub_exports.tokenizer_checks import tokenizer_outside_vocabulary
from modeling.ltg_bert import (
    LtgBertConfig,
    LtgBertForMaskedLM,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
)
from modeling.ltg_bert.modeling_ltg_bert import relative_position_buckets

# Original config field -> hubzoo field. All are required: a missing one is an error, never a silent default.
REQUIRED_CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "position_bucket_size": "position_bucket_size",
    "layer_norm_eps": "layer_norm_eps",
}
OPTIONAL_CONFIG_FIELDS = (
    "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "id2label", "label2id", "problem_type",
)

# (original key regex, hubzoo key template). `None` = consumed by a check, not copied.
BACKBONE_KEYS = [
    (r"embedding\.word_embedding\.weight", "ltg_bert.embeddings.word_embeddings.weight"),
    (r"embedding\.relative_embedding", "ltg_bert.embeddings.relative_embeddings"),
    (r"embedding\.relative_layer_norm\.(weight|bias)", r"ltg_bert.embeddings.relative_layer_norm.\1"),
    (r"transformer\.layers\.(\d+)\.attention\.in_proj_qk\.(weight|bias)", r"ltg_bert.layers.\1.attention.qk_proj.\2"),
    (r"transformer\.layers\.(\d+)\.attention\.in_proj_v\.(weight|bias)", r"ltg_bert.layers.\1.attention.v_proj.\2"),
    (r"transformer\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)", r"ltg_bert.layers.\1.attention.out_proj.\2"),
    (
        r"transformer\.layers\.(\d+)\.attention\.post_layer_norm\.(weight|bias)",
        r"ltg_bert.layers.\1.attention.post_layer_norm.\2",
    ),
    (r"transformer\.layers\.(\d+)\.mlp\.mlp\.1\.weight", r"ltg_bert.layers.\1.mlp.up_proj.weight"),
    (r"transformer\.layers\.(\d+)\.mlp\.mlp\.4\.weight", r"ltg_bert.layers.\1.mlp.down_proj.weight"),
    (r"transformer\.layers\.(\d+)\.attention\.position_indices", None),
]
HEAD_KEYS = {
    LtgBertForMaskedLM: [
        (r"classifier\.nonlinearity\.1\.(weight|bias)", r"lm_head.dense.\1"),
        (r"classifier\.nonlinearity\.5\.weight", None),  # alias of the word embedding (tied)
        (r"classifier\.nonlinearity\.5\.bias", "lm_head.decoder.bias"),
    ],
    LtgBertForSequenceClassification: [
        (r"head\.nonlinearity\.1\.(weight|bias)", r"classifier.dense.\1"),
        (r"head\.nonlinearity\.5\.(weight|bias)", r"classifier.out_proj.\1"),
    ],
    LtgBertForTokenClassification: [
        (r"head\.nonlinearity\.1\.(weight|bias)", r"classifier.dense.\1"),
        (r"head\.nonlinearity\.5\.(weight|bias)", r"classifier.out_proj.\1"),
    ],
}


def build_config(original: dict, position_qk_split: str, pad_token_id: int) -> LtgBertConfig:
    missing = sorted(name for name in REQUIRED_CONFIG_FIELDS if name not in original)
    if missing:
        raise ConversionError(f"config.json lacks required fields {missing}; refusing to guess them.")
    fields = {ours: original[theirs] for theirs, ours in REQUIRED_CONFIG_FIELDS.items()}
    fields.update({name: original[name] for name in OPTIONAL_CONFIG_FIELDS if name in original})
    if "id2label" in fields:  # JSON turns the int keys into strings
        labels = fields["id2label"]
        if not isinstance(labels, dict) or not all(str(key).isdigit() for key in labels):
            raise ConversionError(f"config.json: id2label must map label ids to names, got {labels!r}")
        fields["id2label"] = {int(key): name for key, name in labels.items()}
    return make_config(LtgBertConfig, dict(fields, position_qk_split=position_qk_split, pad_token_id=pad_token_id),
                       "config.json")


def model_class_for(original_config: dict, state_dict: dict):
    """The task class, from the checkpoint's head keys (and `architectures` to tell the two classifier heads apart)."""
    if any(key.startswith("classifier.nonlinearity.") for key in state_dict):
        return LtgBertForMaskedLM
    if any(key.startswith("head.nonlinearity.") for key in state_dict):
        architectures = " ".join(original_config.get("architectures") or [])
        if "TokenClassification" in architectures:
            return LtgBertForTokenClassification
        if "SequenceClassification" in architectures:
            return LtgBertForSequenceClassification
        raise ConversionError(
            f"Checkpoint has a classification head but config.architectures={architectures!r} does not say "
            "whether it is sequence or token classification."
        )
    raise ConversionError("Checkpoint has neither an MLM head (classifier.*) nor a classification head (head.*).")


def map_state_dict(state_dict: dict, model_class, config: LtgBertConfig) -> dict:
    """Rename every key; fail with the complete list of keys that match no rule."""
    rules = BACKBONE_KEYS + HEAD_KEYS[model_class]
    mapped, unknown = {}, []
    for key, tensor in state_dict.items():
        for pattern, target in rules:
            match = re.fullmatch(pattern, key)
            if match:
                if target is not None:
                    mapped[match.expand(target)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"Unknown keys in the original checkpoint (no mapping rule): {sorted(unknown)}")
    _check_derived_tensors(state_dict, config)
    embedding = mapped.get("ltg_bert.embeddings.word_embeddings.weight")
    if model_class is LtgBertForMaskedLM and embedding is not None:
        mapped["lm_head.decoder.weight"] = embedding  # the tie, stated for the strict load
    return mapped


def _check_derived_tensors(state_dict: dict, config: LtgBertConfig) -> None:
    """Stored tensors we recompute must agree with the recomputation, or the conversion would change the model."""
    expected = relative_position_buckets(
        config.max_position_embeddings, config.position_bucket_size, config.max_position_embeddings
    )
    for key, tensor in state_dict.items():
        if key.endswith("attention.position_indices") and not torch.equal(tensor.long(), expected):
            raise ConversionError(f"{key} differs from the relative-position buckets implied by the config")
    head = state_dict.get("classifier.nonlinearity.5.weight")
    embedding = state_dict.get("embedding.word_embedding.weight")
    if head is not None and embedding is not None and not torch.equal(head, embedding):
        raise ConversionError(
            "classifier.nonlinearity.5.weight differs from embedding.word_embedding.weight: this checkpoint has an "
            "untied MLM head, which the LTG-BERT architecture does not have."
        )


def _set_num_labels(config: LtgBertConfig, state_dict: dict, original_config: dict) -> None:
    num_labels = state_dict["head.nonlinearity.5.weight"].shape[0]
    if "id2label" in original_config and config.num_labels != num_labels:
        raise ConversionError(f"config.id2label has {config.num_labels} labels but the head predicts {num_labels}")
    config.num_labels = num_labels


def resolve_pad_token_id(original_config: dict, tokenizer=None, pad_token_id: Optional[int] = None) -> int:
    tokenizer_pad = None if tokenizer is None else tokenizer.pad_token_id
    if tokenizer is not None and tokenizer_pad is None:
        raise ConversionError("The tokenizer has no pad token; cannot fix the original pad id.")
    if pad_token_id is not None and tokenizer_pad is not None and pad_token_id != tokenizer_pad:
        raise ConversionError(f"pad_token_id={pad_token_id} contradicts the tokenizer's pad token id {tokenizer_pad}")
    resolved = pad_token_id if pad_token_id is not None else tokenizer_pad
    if resolved is None:
        raise ConversionError(
            f"The original config says pad_token_id={original_config.get('pad_token_id')}, which the original code "
            "never used and which is [MASK] in the BabyLM tokenizer. Pass the tokenizer or pad_token_id explicitly."
        )
    return resolved


def convert_ltg_bert(source, position_qk_split: str, tokenizer=None, pad_token_id: Optional[int] = None):
    """Load an original LTG-BERT folder into the matching hubzoo class (strictly). Returns the model in eval mode.
    A checkpoint that cannot be converted raises ConversionError naming the file and the keys or fields."""
    source = checkpoint_folder(source)
    original_config = read_json_config(source / "config.json")
    weights, state_dict = load_folder_weights(source)
    try:
        pad = resolve_pad_token_id(original_config, tokenizer, pad_token_id)
        config = build_config(original_config, position_qk_split, pad)
        model_class = model_class_for(original_config, state_dict)
        if model_class is not LtgBertForMaskedLM:
            _set_num_labels(config, state_dict, original_config)
        mapped = map_state_dict(state_dict, model_class, config)
        model = model_class(config)
        check_complete(mapped, model.state_dict(), "the checkpoint")
    except ConversionError as error:
        raise ConversionError(f"{weights} (with {source / 'config.json'}): {error}") from None
    model.load_state_dict(mapped, strict=True)
    misfit = tokenizer is not None and tokenizer_outside_vocabulary(tokenizer, config.vocab_size)
    if misfit:
        raise ConversionError(f"the tokenizer does not fit the checkpoint: {misfit}")
    return model.eval()
