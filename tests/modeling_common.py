"""The conformance suite every hubzoo architecture passes.

A per-architecture test file subclasses `ModelTesterMixin` and only declares: `config_class`, `model_classes`, a tiny
`get_config`, and (if the defaults do not fit) `get_inputs` / `get_labels`. The core tests in `NON_SKIPPABLE` cannot be
overridden: a subclass that redefines one fails at class creation, i.e. at collection.

Conventions: fp32, CPU, `eval()` unless training; tolerances atol = rtol = 1e-5.
"""

import ast
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import modeling
from hub_exports import export, verify

NON_SKIPPABLE = {
    "test_config_roundtrip", "test_save_load_roundtrip", "test_remote_code_fresh_process",
    "test_no_missing_or_unexpected_keys", "test_tied_weights", "test_untied_weights", "test_initialization",
    "test_determinism", "test_batching_equivalence", "test_padding_invariance", "test_training_step_updates_params",
    "test_frozen_parameters_stay_frozen", "test_modeling_file_is_self_contained", "test_input_validation",
    "test_empty_batch_refused", "test_attention_mask_row_of_zeros_refused", "test_config_refuses_bad_sizes",
}
ALLOWED_TRANSFORMERS_MODULES = {
    "transformers", "transformers.modeling_outputs", "transformers.activations", "transformers.utils.logging",
    "transformers.generation",
    # The transformers contract (issue 15): checkpointable blocks, the attention interface, the cache classes.
    "transformers.modeling_layers", "transformers.modeling_utils", "transformers.cache_utils",
}
# Version-dependent internals that exported code must not use (transformers_v5.md §2).
PRIVATE_TRANSFORMERS_NAMES = {"auto_docstring", "can_return_tuple", "capture_outputs", "check_model_inputs",
                              "TransformersKwargs", "merge_with_config_defaults"}
TOL = dict(atol=1e-5, rtol=1e-5)


SPECIAL_TOKEN_ROLES = {"[PAD]": "pad_token", "[UNK]": "unk_token", "[CLS]": "cls_token", "[SEP]": "sep_token",
                       "[MASK]": "mask_token", "[BOS]": "bos_token"}


def tiny_tokenizer(vocab_size: int, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with exactly `vocab_size` ids: the specials in the given order, then w<id> words."""
    specials = list(specials)
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(len(specials), vocab_size)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    roles = {SPECIAL_TOKEN_ROLES[token]: token for token in specials if token in SPECIAL_TOKEN_ROLES}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def _without_dropout(config):
    for key, value in list(config.to_dict().items()):
        if "dropout" in key or key.endswith(("_prob", "_pdrop")):
            setattr(config, key, 0.0)
    return config


def _main_output(outputs):
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


class ModelTesterMixin:
    config_class = None
    model_classes = ()
    is_causal = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.model_classes or cls.config_class is None:
            raise TypeError(f"{cls.__name__} must declare config_class and a non-empty model_classes")
        overridden = NON_SKIPPABLE.intersection(vars(cls))
        if overridden:
            raise TypeError(f"{cls.__name__} overrides core conformance tests {sorted(overridden)}; they cannot be "
                            "skipped or replaced")

    # ---- declarations (override in the per-architecture file) ----
    def get_config(self, **overrides):
        raise NotImplementedError

    def invalid_config_overrides(self):
        """Keyword sets the config must reject with ValueError."""
        return []

    def get_inputs(self, config, batch_size=3, seq_len=7, generator=None):
        generator = generator or torch.Generator().manual_seed(0)
        input_ids = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def export_tokenizer(self, config):
        """The tokenizer exported with the model in the fresh-process test (a byte-level model ships its own)."""
        return tiny_tokenizer(config.vocab_size)

    def get_labels(self, model_class, config, inputs, generator):
        batch, seq_len = inputs["input_ids"].shape
        name = model_class.__name__
        if name.endswith("ForSequenceClassification"):
            return torch.randint(0, config.num_labels, (batch,), generator=generator)
        if name.endswith("ForTokenClassification"):
            return torch.randint(0, config.num_labels, (batch, seq_len), generator=generator)
        if name.endswith(("ForMaskedLM", "ForCausalLM")):
            return torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator)
        return None

    # ---- helpers ----
    def build(self, model_class, **overrides):
        torch.manual_seed(0)
        return model_class(self.get_config(**overrides)).eval()

    # ---- core tests ----
    def test_config_roundtrip(self, tmp_path):
        config = self.get_config()
        assert self.config_class.from_dict(config.to_dict()).to_dict() == config.to_dict()
        config.save_pretrained(tmp_path)
        assert self.config_class.from_pretrained(tmp_path).to_dict() == config.to_dict()
        assert self.get_config(some_unknown_field=3).some_unknown_field == 3
        for overrides in self.invalid_config_overrides():
            with pytest.raises(ValueError):
                self.get_config(**overrides)

    def test_forward_shapes(self):
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.get_inputs(model.config, batch_size=2, seq_len=5)
            outputs = model(**inputs, output_hidden_states=True)
            expected = self.expected_shape(model_class, model.config, 2, 5)
            assert tuple(_main_output(outputs).shape) == expected, model_class.__name__
            assert len(outputs.hidden_states) == model.config.num_hidden_layers + 1

    def expected_shape(self, model_class, config, batch, seq_len):
        name = model_class.__name__
        if name.endswith(("ForMaskedLM", "ForCausalLM", "ForMaskedDiffusionLM")):
            return (batch, seq_len, config.vocab_size)
        if name.endswith("ForSequenceClassification"):
            return (batch, config.num_labels)
        if name.endswith("ForTokenClassification"):
            return (batch, seq_len, config.num_labels)
        return (batch, seq_len, config.hidden_size)

    def test_save_load_roundtrip(self, tmp_path):
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.get_inputs(model.config)
            model.save_pretrained(tmp_path / model_class.__name__)
            files = {p.name for p in (tmp_path / model_class.__name__).iterdir()}
            assert "model.safetensors" in files
            assert ("generation_config.json" in files) == model.can_generate()
            reloaded = model_class.from_pretrained(tmp_path / model_class.__name__).eval()
            torch.testing.assert_close(_main_output(reloaded(**inputs)), _main_output(model(**inputs)), **TOL)

    def test_remote_code_fresh_process(self, tmp_path):
        """Export each class and load it with trust_remote_code in a fresh `python -I` (see hub_exports.verify):
        the class must come from transformers_modules, with no warnings, empty loading info, and equal logits."""
        for model_class in self.model_classes:
            model = self.build(model_class)
            folder = export(model, self.export_tokenizer(model.config), tmp_path / model_class.__name__)
            checks = {check.name: check for check in verify(folder, reference_model=model)}
            assert "transformers_modules" in checks["fresh-process load"].detail

    def test_no_missing_or_unexpected_keys(self, tmp_path):
        for model_class in self.model_classes:
            self.build(model_class).save_pretrained(tmp_path / model_class.__name__)
            _, info = model_class.from_pretrained(tmp_path / model_class.__name__, output_loading_info=True)
            assert not {key: value for key, value in info.items() if value}, model_class.__name__

    def test_tied_weights(self, tmp_path):
        """Every class with an output embedding shares it with the input embedding when the config ties them:
        after init, in the saved file (stored once) and after reload. Judged on the model, not its declarations."""
        for model_class in self.model_classes:
            model = self.build(model_class, tie_word_embeddings=True)
            if model.get_output_embeddings() is None:
                continue
            head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
            assert head.data_ptr() == embedding.data_ptr(), f"{model_class.__name__}: head not tied"
            aliases = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor is embedding]
            model.save_pretrained(tmp_path)
            with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
                assert len(set(aliases) & set(handle.keys())) == 1, f"tied weight stored as {aliases}"
            reloaded = model_class.from_pretrained(tmp_path)
            assert reloaded.get_output_embeddings().weight.data_ptr() == \
                reloaded.get_input_embeddings().weight.data_ptr()

    def test_untied_weights(self, tmp_path):
        for model_class in self.model_classes:
            model = self.build(model_class, tie_word_embeddings=False)
            if model.get_output_embeddings() is None:
                continue
            head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
            assert head.data_ptr() != embedding.data_ptr()
            model.save_pretrained(tmp_path)
            reloaded = model_class.from_pretrained(tmp_path)
            torch.testing.assert_close(reloaded.get_output_embeddings().weight, head, atol=0, rtol=0)
            torch.testing.assert_close(reloaded.get_input_embeddings().weight, embedding, atol=0, rtol=0)
            assert not torch.equal(head, embedding)

    def test_initialization(self):
        """With every init range ~0, each trainable parameter must come out ~0 (weights) or exactly 1 (norm gains), or
        be a documented constant (e.g. mixing weights) that does not depend on the seed and that `_init_weights`
        restores: proof that `_init_weights` covers every parameter and no default torch init slips through."""
        config = self.get_config()
        for key in config.to_dict():
            if "_range" in key or "_std" in key or "initializer_factor" in key:
                setattr(config, key, 1e-10)
        for model_class in self.model_classes:
            torch.manual_seed(0)
            model = model_class(config)
            torch.manual_seed(1)
            other_seed = dict(model_class(config).named_parameters())
            for name, param in model.named_parameters():
                mean = ((param.data.mean() * 1e9).round() / 1e9).item()
                if mean not in (0.0, 1.0):
                    _assert_constant_init_by_init_weights(model, name, param, other_seed[name])

    def test_determinism(self):
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.get_inputs(model.config)
            torch.testing.assert_close(_main_output(model(**inputs)), _main_output(model(**inputs)), atol=0, rtol=0)

    def test_batching_equivalence(self):
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.get_inputs(model.config, batch_size=3)
            batched = _main_output(model(**inputs))
            assert torch.isfinite(batched).all()
            for row in range(3):
                single = _main_output(model(**{key: value[row:row + 1] for key, value in inputs.items()}))
                torch.testing.assert_close(single[0], batched[row], **TOL)

    def test_padding_invariance(self):
        """Right padding (mask 0) must not change the outputs at real positions."""
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.get_inputs(model.config, batch_size=2, seq_len=6)
            pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
            padded = {
                "input_ids": torch.cat([inputs["input_ids"], torch.full((2, 3), pad_id)], dim=1),
                "attention_mask": torch.cat([inputs["attention_mask"], torch.zeros(2, 3, dtype=torch.long)], dim=1),
            }
            clean, with_pads = _main_output(model(**inputs)), _main_output(model(**padded))
            if with_pads.dim() == 3:
                with_pads = with_pads[:, :6]
            torch.testing.assert_close(with_pads, clean, **TOL)

    def training_loss(self, model, model_class, seed):
        """The task loss when the class takes labels, else a surrogate on its output (base models)."""
        generator = torch.Generator().manual_seed(seed)
        inputs = self.get_inputs(model.config, generator=generator)
        labels = self.get_labels(model_class, model.config, inputs, generator)
        if labels is None:
            return _main_output(model(**inputs)).pow(2).mean()
        return model(**inputs, labels=labels).loss

    def test_training_step_updates_params(self):
        for model_class in self.model_classes:
            model = self.build(model_class).train()
            before = {name: p.detach().clone() for name, p in model.named_parameters()}
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
            loss = self.training_loss(model, model_class, seed=1)
            assert torch.isfinite(loss)
            loss.backward()
            for name, param in model.named_parameters():
                assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name}: no/invalid gradient"
                assert param.grad.abs().sum() > 0, f"{name}: zero gradient"
            optimizer.step()
            unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
            assert not unchanged, f"{model_class.__name__}: parameters not updated: {unchanged}"

    def test_frozen_parameters_stay_frozen(self):
        for model_class in self.model_classes:
            model = self.build(model_class).train()
            frozen = model.get_input_embeddings().weight
            frozen.requires_grad_(False)
            before = frozen.detach().clone()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            self.training_loss(model, model_class, seed=2).backward()
            optimizer.step()
            assert torch.equal(frozen, before)

    def test_gradient_checkpointing(self):
        for model_class in self.model_classes:
            model = model_class(_without_dropout(self.get_config())).train()
            self.training_loss(model, model_class, seed=3).backward()
            plain = {name: p.grad.clone() for name, p in model.named_parameters()}
            model.zero_grad()
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
            self.training_loss(model, model_class, seed=3).backward()
            for name, param in model.named_parameters():
                torch.testing.assert_close(param.grad, plain[name], **TOL)

    def test_model_is_small(self):
        for model_class in self.model_classes:
            assert self.build(model_class).num_parameters() < 1_000_000

    def test_input_validation(self):
        for model_class in self.model_classes:
            model = self.build(model_class)
            config = model.config
            inputs = self.get_inputs(config)
            with pytest.raises(ValueError, match="vocab"):
                model(input_ids=torch.full_like(inputs["input_ids"], config.vocab_size))
            with pytest.raises(ValueError, match="vocab"):
                model(input_ids=torch.full_like(inputs["input_ids"], -1))
            with pytest.raises(ValueError, match="max_position_embeddings"):
                model(input_ids=torch.full((1, config.max_position_embeddings + 1), 5))
            with pytest.raises(ValueError, match="attention_mask"):
                model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, :-1])

    def test_empty_batch_refused(self):
        """0 sequences or 0 tokens: a ValueError naming the input, not a crash in a reshape or an index."""
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.get_inputs(model.config)
            for empty in ({key: value[:0] for key, value in inputs.items()},
                          {key: value[:, :0] if value.dim() == 2 else value for key, value in inputs.items()}):
                with pytest.raises(ValueError, match="input_ids is empty"):
                    model(**empty)

    def test_attention_mask_row_of_zeros_refused(self):
        """A sequence whose attention_mask is all 0 has nothing to attend to: refused, not computed over padding."""
        for model_class in self.model_classes:
            model = self.build(model_class)
            inputs = self.get_inputs(model.config)
            attention_mask = inputs["attention_mask"].clone()
            attention_mask[1] = 0
            with pytest.raises(ValueError, match="attention_mask"):
                model(**{**inputs, "attention_mask": attention_mask})

    def test_config_refuses_bad_sizes(self):
        """Sizes that are not positive ints, and a LayerNorm epsilon <= 0, are refused naming the field and value."""
        fields = self.get_config().to_dict()
        bad = [("num_hidden_layers", 0), ("num_hidden_layers", -2), ("num_hidden_layers", "2"),
               ("num_hidden_layers", True), ("hidden_size", "32"), ("num_attention_heads", 0),
               ("layer_norm_eps", 0.0), ("layer_norm_eps", -1e-5)]
        for field, value in bad:
            if field in fields:
                with pytest.raises(ValueError, match=f"{field} must be .*, got {value!r}"):
                    self.get_config(**{field: value})

    def test_modeling_file_is_self_contained(self):
        """The exported files import only stdlib, torch, public transformers and their sibling config (anywhere in
        the file); nothing but definitions and constants runs at import."""
        model_type = self.config_class.model_type
        folder = Path(modeling.__file__).parent / model_type
        for path in (folder / f"modeling_{model_type}.py", folder / f"configuration_{model_type}.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                _check_top_level(node, f"{path.name}:{node.lineno}")
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    _check_import(node, f"{path.name}:{node.lineno}", model_type)


def _assert_constant_init_by_init_weights(model, name, param, same_param_other_seed):
    label = f"{type(model).__name__}.{name}"
    assert torch.equal(param, same_param_other_seed), f"{label} is neither ~0/1 nor a seed-independent constant"
    owner = model.get_submodule(name.rpartition(".")[0])
    expected = param.detach().clone()
    with torch.no_grad():
        param.fill_(float("nan"))
    model._init_weights(owner)
    assert torch.equal(param, expected), f"{label} is not initialised by _init_weights"


def _check_top_level(node, where):
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
        return
    if isinstance(node, ast.Expr):
        assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), f"{where}: runs code"
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
        assert not calls, f"{where}: module-level assignment calls code"
    else:
        raise AssertionError(f"{where}: {type(node).__name__} at module level")


def _check_import(node, where, model_type):
    if isinstance(node, ast.ImportFrom) and node.level:
        assert node.level == 1 and node.module == f"configuration_{model_type}", \
            f"{where}: only `from .configuration_{model_type} import ...` may be relative"
        return
    modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
    for module in modules:
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top == "torch":
            continue
        assert module in ALLOWED_TRANSFORMERS_MODULES, f"{where}: import of {module} is not allowed in exported code"
    if isinstance(node, ast.ImportFrom) and node.module.startswith("transformers"):
        private = [a.name for a in node.names if a.name.startswith("_") or a.name in PRIVATE_TRANSFORMERS_NAMES]
        assert not private, f"{where}: imports transformers internals {private}"
