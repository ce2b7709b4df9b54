"""LoRA fine-tuning in the trainers (`trainers/adapters.py`) and the adapter repos it exports
(`hub_exports/adapters.py`), on tiny models: what a LoRA step trains, the trainers' exactness with an adapter
(gradient accumulation, two processes, resume with the EMA), the runs end to end, adapter repos verified on their base
in a fresh process and merged, and the refusals before any work."""

import json
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, TrainingArguments

from hub_exports import export, load_checkpoint, verify
from hub_exports import __main__ as hub_cli
from hub_exports.adapters import refuse_local_base_on_push
from hub_exports.checkpoints import load_adapter_model
from hub_exports.verification import VerificationError
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
from tests import clm_trainer_driver, diffusion_trainer_driver
from tests.modeling_common import tiny_tokenizer
from tests.test_diffusion_trainer import StopAt
from tests.test_mlm_trainer import launch_two_processes, max_diff
from tests.test_run_classification import bert_tokenizer, write_task
from trainers import classification_config, run_classification, run_ltg_bert, run_mdlm, run_modded_gpt
from trainers.adapters import check_peft_spec, with_peft
from trainers.classification_trainer import ClassificationTrainer
from trainers.collators import DiffusionCollator
from trainers.diffusion_trainer import MaskedDiffusionTrainer
from trainers.tokenization import document_separator

LORA = {"type": "lora", "r": 4}
CLM_DRIVER = Path(clm_trainer_driver.__file__)


def adapter_names(model) -> set:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def randomise_lora_b(model, seed: int = 1) -> None:
    """PEFT starts B at zero (the adapter is the identity); a drawn B makes an adapter that changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


@pytest.fixture
def gpt_export(tmp_path):
    tokenizer = tiny_tokenizer(60)
    eot = document_separator(tokenizer)
    torch.manual_seed(0)
    model = ModdedGptForCausalLM(ModdedGptConfig(
        vocab_size=128, tokenizer_vocab_size=60, eot_token_id=eot, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eot, bos_token_id=eot, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
        intermediate_size=64, max_position_embeddings=32, zero_init_projections=False))
    return export(model.eval(), tokenizer, tmp_path / "gpt")


@pytest.fixture
def bert_export(tmp_path):
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(LtgBertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=32, position_bucket_size=8, pad_token_id=0))
    return export(model.eval(), bert_tokenizer(), tmp_path / "bert")


# ---- what a LoRA step trains ----
def test_a_lora_step_trains_the_adapter_and_the_new_head_only(gpt_export, tmp_path):
    classifier = classification_config.classifier_from_export(gpt_export, ["no", "yes"])
    model = with_peft(classifier, LORA, gpt_export, classification_config.head_modules(classifier))
    randomise_lora_b(model)  # else A has no gradient in the first step
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainable = adapter_names(model)
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert any("score" in name and "modules_to_save" in name for name in trainable), "the new head in full"
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 59, (n,), generator=generator).tolist() for n in (7, 5, 9, 4)]
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
                              "labels": [0, 1, 1, 0]})
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, use_cpu=True, report_to="none", save_strategy="no",
                             disable_tqdm=True, seed=0)
    ClassificationTrainer(model=model, args=args, train_dataset=data,
                          data_collator=DataCollatorWithPadding(load_tokenizer_of(gpt_export))).train()
    after = dict(model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed == trainable, (sorted(changed ^ trainable))


def load_tokenizer_of(folder):
    from hub_exports import load_tokenizer

    return load_tokenizer(folder)


# ---- exactness with an adapter ----
def test_gradient_accumulation_is_exact_with_an_adapter(tmp_path):
    """bs 4 x GA 1 = bs 2 x GA 2 = bs 1 x GA 4 after one SGD step (lr 1, so a mis-scaled gradient shows)."""
    _, reference = clm_trainer_driver.one_step(tmp_path / "a", "sgd", batch_size=4, lora=True)
    for batch_size, ga in ((2, 2), (1, 4)):
        _, params = clm_trainer_driver.one_step(tmp_path / f"b{batch_size}", "sgd", batch_size, ga, lora=True)
        assert max_diff(reference, params) < 1e-5, (batch_size, ga)
    start = dict(clm_trainer_driver.lora_model().named_parameters())
    moved = {name for name in reference if not torch.equal(reference[name], start[name].detach())}
    assert moved and all("lora_" in name for name in moved), "only the adapter moves"


@pytest.mark.slow
def test_two_processes_match_one_with_an_adapter(tmp_path):
    from safetensors.torch import load_file

    out = launch_two_processes(CLM_DRIVER, tmp_path, tmp_path / "two.safetensors", "--optimizer", "sgd",
                               "--batch-size", "2", "--world-size", "2", "--lora")
    assert sorted(re.findall(r"rank=\d world_size=2", out.stdout)) == ["rank=0 world_size=2", "rank=1 world_size=2"]
    _, one = clm_trainer_driver.one_step(tmp_path / "one", "sgd", batch_size=4, lora=True)
    assert max_diff(one, load_file(tmp_path / "two.safetensors")) < 1e-5


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_resume_is_exact_with_an_adapter_and_its_ema(tmp_path, algorithm):
    """Stop after step 3 (a checkpoint of the adapter, its optimizer state and its EMA), resume to step 6: losses,
    adapter and EMA equal the uninterrupted run's; the EMA averages the adapter, nothing else."""
    def make(output_dir, extra=()):
        model = with_peft(diffusion_trainer_driver.tiny_model(algorithm), LORA, "tiny")
        randomise_lora_b(model)
        args = TrainingArguments(output_dir=str(output_dir), max_steps=6, save_strategy="steps", save_steps=3,
                                 logging_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, warmup_steps=2,
                                 lr_scheduler_type="constant_with_warmup", use_cpu=True, report_to="none",
                                 dataloader_num_workers=0, disable_tqdm=True, seed=0)
        return MaskedDiffusionTrainer(model=model, args=args, train_dataset=diffusion_trainer_driver.rows_dataset(),
                                      data_collator=DiffusionCollator(diffusion_trainer_driver.PAD_ID,
                                                                      diffusion_trainer_driver.MASK_ID,
                                                                      diffusion_trainer_driver.VOCAB),
                                      ema_decay=0.9, callbacks=list(extra))

    straight = make(tmp_path / "straight")
    straight.train()
    make(tmp_path / "resumed", [StopAt(3)]).train()
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    assert {"adapter_model.safetensors", "ema.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=True)
    losses = lambda t: {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}  # noqa: E731
    assert all(abs(losses(straight)[s] - losses(resumed)[s]) < 1e-6 for s in (4, 5, 6))
    weights = lambda t: {n: p.detach() for n, p in t.model.named_parameters()}  # noqa: E731
    assert max_diff(weights(straight), weights(resumed)) < 1e-6
    ema_a, ema_b = straight.ema_callback.ema, resumed.ema_callback.ema
    assert set(ema_a.names) == adapter_names(straight.model) and ema_a.num_updates == ema_b.num_updates == 6
    assert max(float((a - b).abs().max()) for a, b in zip(ema_a.shadow, ema_b.shadow)) < 1e-6


# ---- the runs end to end ----
def run_gpt(gpt_export, out, *flags):
    args = run_modded_gpt.parse(["--output_dir", str(out), "--init_from", str(gpt_export), "--config_overrides", "{}",
                                 "--optimizer", "adamw", "--max_steps", "8", "--max_seq_length", "32",
                                 "--embedded_sentences", "400", "--per_device_train_batch_size", "4",
                                 "--learning_rate", "1e-2", "--cooldown_fraction", "0.5", "--peft", json.dumps(LORA),
                                 *flags])
    run_modded_gpt.main(*args)


@pytest.mark.slow
def test_causal_lm_run_exports_an_adapter_that_verifies_and_merges(gpt_export, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="trainers.adapters"):
        run_gpt(gpt_export, out, "--save_strategy", "steps", "--save_steps", "4")
    assert re.search(r"LoRA r=4 .*: [\d,]+ of [\d,]+ parameters trainable", caplog.text)
    for folder in (out / "export", out / "checkpoint-4" / "export"):
        names = {check.name for check in verify(folder)}
        assert {"fresh-process load", "outputs", "AutoPeftModel load", "generate", "base"} <= names
    assert sorted(p.name for p in (out / "export").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "hubzoo_export.json"]
    config = json.loads((out / "export" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(gpt_export).resolve()) and config["task_type"] == "CAUSAL_LM"
    card = (out / "export" / "README.md").read_text()
    assert f"base_model: {gpt_export}" in card and "library_name: peft" in card
    assert "PeftModel.from_pretrained(base" in card and "AutoPeftModelForCausalLM" in card

    # the merged export: a full export of the base class, the adapter's function within 1e-5
    assert hub_cli.main(["export", "--model", str(out / "export"), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    merged, adapted = load_checkpoint(tmp_path / "merged"), load_adapter_model(out / "export")
    assert type(merged) is ModdedGptForCausalLM
    ids = torch.randint(1, 59, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        difference = (merged(ids).logits - adapted(input_ids=ids).logits).abs().max().item()
        base_difference = (load_checkpoint(gpt_export)(ids).logits - adapted(input_ids=ids).logits).abs().max().item()
    assert difference < 1e-5 and base_difference > 1e-3, (difference, base_difference)
    # a Trainer checkpoint of the run exports as an adapter repo too
    assert hub_cli.main(["export", "--model", str(out / "checkpoint-4"), "--out", str(tmp_path / "again")]) == 0


def test_an_adapter_names_its_hub_base_and_is_not_pushed_with_a_local_one(gpt_export, tmp_path, capsys):
    model = with_peft(load_checkpoint(gpt_export), {**LORA, "base_model": "someone/tiny-gpt"}, gpt_export)
    randomise_lora_b(model)
    folder = export(model, None, tmp_path / "adapter")  # verified on the local base the model came from
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/tiny-gpt"
    assert "huggingface.co/someone/tiny-gpt" in (folder / "README.md").read_text()
    checks = {check.name: check for check in verify(folder, base=gpt_export)}  # the Hub id stands for this copy
    assert checks["AutoPeftModel load"].ok, "the one-call load is checked for a Hub-named base too"
    refuse_local_base_on_push(folder)  # a Hub-named base may be pushed
    local = export(with_peft(load_checkpoint(gpt_export), LORA, gpt_export), None, tmp_path / "local")
    assert hub_cli.main(["push", str(local), "someone/x"]) == 1
    assert "names its base by the local folder" in capsys.readouterr().err


def test_verify_fails_on_an_adapter_whose_base_changed_or_is_gone(gpt_export, tmp_path):
    model = with_peft(load_checkpoint(gpt_export), LORA, gpt_export)
    folder = export(model, None, tmp_path / "adapter", run_verify=False)
    tokenizer_file = gpt_export / "tokenizer_config.json"
    tokenizer_file.write_text(tokenizer_file.read_text().replace("}", ', "edited": true}', 1))
    with pytest.raises(VerificationError, match=r"\[FAIL\] base: .*changed since export"):
        verify(folder)
    moved = gpt_export.rename(tmp_path / "elsewhere")
    with pytest.raises(VerificationError, match="is not a local hubzoo export: pass the folder"):
        verify(folder)
    with pytest.raises(VerificationError, match=r"\[FAIL\] base"):
        verify(folder, base=moved)  # found, but edited above


@pytest.mark.slow
def test_diffusion_run_with_an_adapter(tmp_path):
    common = ["--max_steps", "4", "--embedded_sentences", "400", "--nelbo_max_sequences", "4", "--nelbo_samples", "1",
              "--blimp_pairs_per_paradigm", "1", "--num_samples_to_print", "1", "--sampling_steps", "4"]
    run_mdlm.main(*run_mdlm.parse(["--output_dir", str(tmp_path / "base"), *common]))
    base = tmp_path / "base" / "export"
    run_mdlm.main(*run_mdlm.parse(["--output_dir", str(tmp_path / "lora"), "--init_from", str(base),
                                   "--config_overrides", "{}", "--peft",
                                   json.dumps({**LORA, "target_modules": ["qkv_proj", "out_proj"]}), *common]))
    names = {check.name for check in verify(tmp_path / "lora" / "export")}
    assert {"base", "fresh-process load", "outputs"} <= names
    results = json.loads((tmp_path / "lora" / "results.json").read_text())
    assert results["mask_tokens_in_samples"] == 0 and results["perplexity_bound"]["perplexity"] > 1


@pytest.mark.slow
def test_masked_lm_continued_pretraining_with_an_adapter(bert_export, tmp_path):
    config = Path(run_ltg_bert.__file__).with_name("configs") / "ltg_bert_tiny.yaml"
    args = run_ltg_bert.parse_args((run_ltg_bert.ModelArguments, run_ltg_bert.DataArguments,
                                    run_ltg_bert.MaskedLMTrainingArguments),
                                   [str(config), "--output_dir", str(tmp_path / "run"), "--init_from", str(bert_export),
                                    "--config_overrides", "{}", "--max_steps", "4", "--embedded_sentences", "400",
                                    "--max_seq_length", "32", "--peft", json.dumps(LORA), "--save_strategy", "no"])
    run_ltg_bert.main(*args)
    assert {"base", "fresh-process load", "outputs"} <= {check.name for check in verify(tmp_path / "run" / "export")}
    assert (tmp_path / "run" / "blimp.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("base", ["gpt", "bert"])
def test_classification_with_an_adapter_over_a_language_model_export(base, gpt_export, bert_export, tmp_path):
    """The adapter repo names the language-model export; its card and verify load it as the classifier with the
    labels, the new head coming from the adapter; merged, it is a full classifier export with the same function."""
    folder = gpt_export if base == "gpt" else bert_export
    args = run_classification.parse([
        "--model_name_or_path", str(folder), "--train_file", str(write_task(tmp_path / "train.tsv")),
        "--eval_file", str(write_task(tmp_path / "test.tsv", rows=200, seed=1)), "--labels", "0=no,1=yes",
        "--max_seq_length", "16", "--output_dir", str(tmp_path / "out"), "--max_steps", "30",
        "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--seed", "0", "--peft", json.dumps(LORA)])
    assert run_classification.main(*args) == 0
    adapter = tmp_path / "out" / "export"
    checks = {check.name: check.detail for check in verify(adapter)}
    assert "loading info as expected" in checks["fresh-process load"] and "missing_keys" in checks["fresh-process load"]
    card = (adapter / "README.md").read_text()
    assert "AutoModelForSequenceClassification.from_pretrained" in card and "num_labels=2" in card
    assert hub_cli.main(["export", "--model", str(adapter), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    merged, adapted = load_checkpoint(tmp_path / "merged"), load_adapter_model(adapter)
    assert type(merged).__name__.endswith("ForSequenceClassification") and merged.config.id2label[1] == "yes"
    ids = torch.randint(1, 59, (3, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (merged(ids).logits - adapted(input_ids=ids).logits).abs().max().item() < 1e-5


# ---- refusals before any work ----
@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    for name in ("CausalLMTrainer", "MaskedDiffusionTrainer", "MaskedLMTrainer", "ClassificationTrainer"):
        for module in (run_modded_gpt, run_mdlm, run_ltg_bert, run_classification):
            if hasattr(module, name):
                monkeypatch.setattr(getattr(module, name), "train", refuse)


@pytest.mark.parametrize("targets, message", [
    (["q_prj"], r"peft.target_modules \['q_prj'\] match no module of ModdedGptForCausalLM; its linear layers are "
                r"named \[.*'qkv_proj'"),
    (["qkv_proj", "o_prj"], r"\['o_prj'\] match no module"),  # PEFT itself would train qkv_proj silently
    ("blocks\\.9\\..*", r"match no module"),
])
def test_target_modules_that_match_nothing_are_refused(gpt_export, tmp_path, no_training, targets, message):
    with pytest.raises(ValueError, match=message):
        run_gpt(gpt_export, tmp_path / "run", "--peft", json.dumps({**LORA, "target_modules": targets}))
    assert not (tmp_path / "run" / "export").exists()


@pytest.mark.parametrize("spec, message", [
    ({"type": "ia3"}, r"peft.type must be one of \['lora'\]"),
    ({"type": "lora", "rank": 8}, r"unknown key\(s\) \['rank'\]"),
    ({"type": "lora", "r": 0}, "peft.r must be a positive integer"),
    ({"type": "lora", "dropout": 1.0}, r"peft.dropout must lie in \[0, 1\)"),
    ({"type": "lora", "target_modules": []}, "peft.target_modules must be"),
    ({"type": "lora", "modules_to_save": "score"}, "peft.modules_to_save must be a list"),
])
def test_malformed_peft_settings_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        check_peft_spec(spec)


def test_peft_needs_an_export_to_adapt(gpt_export, tmp_path, no_training):
    flags = ["--output_dir", str(tmp_path / "o"), "--optimizer", "adamw", "--peft", json.dumps(LORA)]
    with pytest.raises(ValueError, match="peft fine-tunes a trained model: give init_from"):
        run_modded_gpt.main(*run_modded_gpt.parse(flags))
    with pytest.raises(ValueError, match="is not a hubzoo export"):
        run_modded_gpt.main(*run_modded_gpt.parse([*flags, "--init_from", str(tmp_path), "--config_overrides", "{}"]))
    with pytest.raises(ValueError, match="peft trains LoRA matrices .* with AdamW"):
        run_modded_gpt.parse(["--output_dir", str(tmp_path / "o"), "--peft", json.dumps(LORA)])  # the tiny config: Muon
    adapter = export(with_peft(load_checkpoint(gpt_export), LORA, gpt_export), None, tmp_path / "adapter",
                     run_verify=False)
    with pytest.raises(ValueError, match="is an adapter repo, not a model: fold it into its base first"):
        run_modded_gpt.main(*run_modded_gpt.parse([*flags, "--init_from", str(adapter), "--config_overrides", "{}"]))


def test_the_latent_wire_run_takes_no_peft(tmp_path):
    from trainers.latent_wire_config import LatentWireTrainingArguments

    with pytest.raises(ValueError, match="run_latent_wire trains the wire in full"):
        LatentWireTrainingArguments(output_dir=str(tmp_path), peft=LORA, use_cpu=True)


def test_the_base_survives_its_adapter(gpt_export, tmp_path, no_training, capsys):
    """The base is never replaced or rotated away: not by a run whose output_dir holds it, not by an export onto it."""
    with pytest.raises(ValueError, match="lies inside output_dir"):
        run_gpt(gpt_export, gpt_export.parent)
    model = with_peft(load_checkpoint(gpt_export), LORA, gpt_export)
    with pytest.raises(ValueError, match="holds the source"):
        export(model, None, gpt_export)
    adapter = export(model, None, tmp_path / "adapter", run_verify=False)
    assert hub_cli.main(["export", "--model", str(adapter), "--out", str(gpt_export)]) == 1
    assert "holds the source" in capsys.readouterr().err
    assert load_checkpoint(gpt_export).config.model_type == "modded_gpt"


def test_an_adapter_loads_only_on_the_base_it_was_trained_on(gpt_export, tmp_path, capsys):
    adapter = export(with_peft(load_checkpoint(gpt_export), LORA, gpt_export), None, tmp_path / "adapter",
                     run_verify=False)
    torch.manual_seed(1)
    other = export(ModdedGptForCausalLM(load_checkpoint(gpt_export).config), load_tokenizer_of(gpt_export),
                   tmp_path / "other")
    assert hub_cli.main(["export", "--model", str(adapter), "--base", str(other), "--out", str(tmp_path / "x")]) == 1
    assert "is not the export the adapter" in capsys.readouterr().err
    checkpoint = tmp_path / "checkpoint-2"  # a Trainer checkpoint of a run with an EMA: live weights, not the average
    checkpoint.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (checkpoint / name).write_bytes((adapter / name).read_bytes())
    (checkpoint / "ema.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="averaged ones the run exports: export"):
        load_adapter_model(checkpoint)


@pytest.mark.parametrize("flags, message", [
    (["--tokenizer", "x"], "--tokenizer belongs to --merge"),
    (["--merge", "--base-model", "org/base"], "--base-model belongs to adapter repos"),
    (["--base-model", "./relative"], "--base-model must be a Hub id"),
])
def test_adapter_export_flags_that_would_be_ignored_are_refused(gpt_export, tmp_path, capsys, flags, message):
    adapter = export(with_peft(load_checkpoint(gpt_export), LORA, gpt_export), None, tmp_path / "adapter",
                     run_verify=False)
    assert hub_cli.main(["export", "--model", str(adapter), "--out", str(tmp_path / "out"), *flags]) == 1
    assert message in capsys.readouterr().err
    assert hub_cli.main(["verify", str(gpt_export), "--base", str(gpt_export)]) == 1


def test_settings_an_adapter_repo_cannot_carry_are_refused(gpt_export, tmp_path, no_training):
    peft = ["--peft", json.dumps(LORA)]
    with pytest.raises(ValueError, match="an adapter is used with its base's tokenizer"):
        run_gpt(gpt_export, tmp_path / "run", "--tokenizer_name", str(gpt_export))
    model_args, _, training_args = run_mdlm.parse(["--output_dir", str(tmp_path / "d"), "--init_from", str(gpt_export),
                                                   "--config_overrides", '{"block_size": 8}', *peft])
    with pytest.raises(ValueError, match="an adapter repo holds no config"):
        run_mdlm.check_model_arguments(model_args, training_args)
    for name in ("./base", "gpt2", "a b/c"):
        with pytest.raises(ValueError, match="peft.base_model must be a Hub id"):
            check_peft_spec({**LORA, "base_model": name})
    three = classification_config.classifier_from_export(gpt_export, ["a", "b", "c"])
    classifier = export(three.eval(), load_tokenizer_of(gpt_export), tmp_path / "classifier")
    args = run_classification.parse([
        "--model_name_or_path", str(classifier), "--train_file", str(write_task(tmp_path / "train.tsv")),
        "--eval_file", str(write_task(tmp_path / "test.tsv", rows=20, seed=1)), "--labels", "0=no,1=yes",
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none", *peft])
    with pytest.raises(ValueError, match="start from the language-model export"):
        run_classification.main(*args)


def test_resuming_with_other_lora_settings_is_refused(tmp_path):
    first = clm_trainer_driver.make_trainer(tmp_path, "sgd", lora=True, max_steps=2, save_strategy="steps",
                                            save_steps=2, per_device_train_batch_size=2, learning_rate=1e-2)
    first.train()
    other = with_peft(clm_trainer_driver.tiny_model(), {**clm_trainer_driver.LORA, "alpha": 16}, "tiny-gpt")
    resumed = clm_trainer_driver.make_trainer(tmp_path, "sgd", max_steps=4, save_strategy="steps", save_steps=2,
                                              per_device_train_batch_size=2, learning_rate=1e-2)
    resumed.model = other
    with pytest.raises(ValueError, match=r"saved with other LoRA settings .*'lora_alpha': \(8, 16\)"):
        resumed.train(resume_from_checkpoint=True)


def test_an_adapter_with_a_hub_base_is_pushed_whole(gpt_export, tmp_path):
    import os
    import subprocess
    import sys

    from tests.hub_stub import LoopbackHub

    model = with_peft(load_checkpoint(gpt_export), {**LORA, "base_model": "someone/tiny-gpt"}, gpt_export)
    folder = export(model, None, tmp_path / "adapter", run_verify=False)
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)  # the loopback Hub is the only "network" here
    with LoopbackHub(tmp_path / "hub") as hub:
        env["HF_ENDPOINT"] = hub.url
        done = subprocess.run([sys.executable, "-m", "hub_exports", "push", str(folder), "someone/tiny-gpt-lora",
                               "--token", "hf_test", "--base", str(gpt_export)], cwd=Path(__file__).parents[1],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    arrived = tmp_path / "hub" / "someone" / "tiny-gpt-lora"
    assert sorted(p.name for p in arrived.iterdir()) == sorted(p.name for p in folder.iterdir())

