"""What the run scripts refuse before any work: override keys no config takes, a new model whose size is left to the
class defaults, init_from with overrides that change its weights; and, before the first training step, everything the
end of the run needs (the files it reads, a writable output_dir, the installed package, the card, a fitting tokenizer).
No test here trains: a training step taken is a failure."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from transformers import Trainer

from hub_exports import CardInfo
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
from tests.modeling_common import tiny_tokenizer
from tests.test_run_backpack import tiny_run as backpack_run
from tests.test_run_classification import causal_lm_export, write_task  # noqa: F401  (a fixture)
from trainers import run_backpack, run_classification, run_latent_wire, run_ltg_bert, run_mdlm, run_modded_gpt
from trainers.arguments import DataArguments, ModelArguments, parse_args
from trainers.mlm_config import MaskedLMTrainingArguments
from trainers.preflight import check_before_training, check_overrides

CONFIGS = Path(run_ltg_bert.__file__).with_name("configs")
LTG_BERT_SIZE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 24}
MDLM_SIZE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "cond_dim": 8}
MODDED_GPT_SIZE = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 16}
WIRE_SIZE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_latents": 2}


@pytest.fixture
def no_work(monkeypatch):
    """Reading the training data or taking a training step fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the run started its work")

    for module in (run_ltg_bert, run_mdlm, run_modded_gpt):
        monkeypatch.setattr(module, "load_texts", refuse)
    monkeypatch.setattr(run_backpack, "read_pairs", refuse)
    monkeypatch.setattr(run_latent_wire, "load_records", refuse)
    no_training(monkeypatch)


def no_training(monkeypatch):
    monkeypatch.setattr(Trainer, "train", lambda *args, **kwargs: pytest.fail("training started"))


@pytest.fixture
def hubzoo_not_installed(monkeypatch):
    """A plain checkout: the package metadata the export records is missing."""
    version = metadata.version

    def without_hubzoo(name):
        if name == "hubzoo":
            raise metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(metadata, "version", without_hubzoo)


def ltg_bert_args(tmp_path, *flags, overrides=LTG_BERT_SIZE):
    return parse_args((ModelArguments, DataArguments, MaskedLMTrainingArguments), [
        str(CONFIGS / "ltg_bert_tiny.yaml"), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
        "--embedded_sentences", "200", "--train_tokenizer_vocab_size", "200", "--config_overrides", json.dumps(overrides),
        *flags])


def diffusion_args(tmp_path, *flags, overrides=MDLM_SIZE, config="mdlm_tiny.yaml"):
    return run_mdlm.parse([str(CONFIGS / config), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                           "--embedded_sentences", "200", "--train_tokenizer_vocab_size", "200",
                           "--config_overrides", json.dumps(overrides), *flags])


def modded_gpt_args(tmp_path, *flags, overrides=MODDED_GPT_SIZE):
    return run_modded_gpt.parse([str(CONFIGS / "modded_gpt_tiny.yaml"), "--output_dir", str(tmp_path / "out"),
                                 "--max_steps", "1", "--embedded_sentences", "200", "--train_tokenizer_vocab_size", "300",
                                 "--config_overrides", json.dumps(overrides), *flags])


def wire_args(tmp_path, *flags):
    args, training_args = run_latent_wire.parse([
        "--output_dir", str(tmp_path / "out"), "--num_train", "8", "--num_eval", "2", "--max_steps", "1",
        "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", *flags])
    args.wire_overrides = dict(WIRE_SIZE)
    return args, training_args


# 11: a misspelt key is an error naming it and the closest field, before any work.

def misspelt(size: dict) -> dict:
    return {"num_hiden_layers" if key == "num_hidden_layers" else key: value for key, value in size.items()}


@pytest.mark.parametrize("script", ["ltg_bert", "mdlm", "modded_gpt", "backpack", "latent_wire"])
def test_a_misspelt_override_key_is_refused_before_any_work(script, tmp_path, no_work, shared_dir):
    if script == "ltg_bert":
        run, args = run_ltg_bert.main, ltg_bert_args(tmp_path, overrides=misspelt(LTG_BERT_SIZE))
    elif script == "mdlm":
        run, args = run_mdlm.main, diffusion_args(tmp_path, overrides=misspelt(MDLM_SIZE))
    elif script == "modded_gpt":
        run, args = run_modded_gpt.main, modded_gpt_args(tmp_path, overrides=misspelt(MODDED_GPT_SIZE))
    elif script == "backpack":
        run, args = run_backpack.main, backpack_run(shared_dir, tmp_path, "backpack")
        args[0].config_overrides = misspelt(args[0].config_overrides)
    else:
        run, args = run_latent_wire.main, wire_args(tmp_path)
        args[0].wire_overrides = misspelt(WIRE_SIZE)
    with pytest.raises(ValueError, match=r"unknown \w+Config field\(s\) 'num_hiden_layers' \(did you mean "
                                         r"'num_hidden_layers'\?\)"):
        run(*args)


def test_misspelt_demo_decoder_overrides_are_refused(tmp_path, no_work):
    args, training_args = wire_args(tmp_path)
    args.demo_decoder_overrides = {"llama": {"num_key_value_head": 1}}
    with pytest.raises(ValueError, match=r"demo_decoder_overrides\['llama'\].*'num_key_value_head' \(did you mean "
                                         r"'num_key_value_heads'\?\)"):
        run_latent_wire.main(args, training_args)
    args.demo_decoder_overrides = {"gpt": {}}
    with pytest.raises(ValueError, match="no demo decoder 'gpt'"):
        run_latent_wire.main(args, training_args)


def test_known_keys_are_the_class_and_base_fields():
    check_overrides({"position_qk_split": "chunk_first", "output_hidden_states": False, "tie_word_embeddings": True,
                     **LTG_BERT_SIZE}, LtgBertConfig, required=tuple(LTG_BERT_SIZE))
    with pytest.raises(ValueError, match="may not set \\['pad_token_id'\\]"):  # the run's own, said as such
        check_overrides({"pad_token_id": 3, **LTG_BERT_SIZE}, LtgBertConfig, set_by_run=("vocab_size", "pad_token_id"))


# 12: every new model states its size.

def test_an_ltg_bert_config_without_its_size_is_refused_before_any_work(tmp_path, no_work):
    config = tmp_path / "no_size.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nmax_steps: 1\n")
    args = parse_args((ModelArguments, DataArguments, MaskedLMTrainingArguments), [str(config)])
    with pytest.raises(ValueError, match=r"must state \['hidden_size', 'num_hidden_layers', 'num_attention_heads', "
                                         r"'intermediate_size'\] for a new ltg_bert model"):
        run_ltg_bert.main(*args)


def test_a_wire_without_its_size_is_refused_before_any_work(tmp_path, no_work):
    args, training_args = wire_args(tmp_path)
    args.wire_overrides = {"num_latents": 4}
    with pytest.raises(ValueError, match=r"wire_overrides must state \['hidden_size', 'num_hidden_layers', "
                                         r"'num_attention_heads'\]"):
        run_latent_wire.main(args, training_args)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_states_its_size(path, tmp_path):
    flags = [str(path), "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--tf32", "false"]
    if path.name.startswith("ltg_bert"):
        model_args, _, training_args = parse_args((ModelArguments, DataArguments, MaskedLMTrainingArguments), flags)
        run_ltg_bert.check_model_arguments(model_args, training_args)
    elif path.name.startswith(("mdlm", "bd3lm")):
        model_args, _, training_args = run_mdlm.parse(flags)
        if not training_args.init_from:  # mdlm_sst2 continues another run's export
            run_mdlm.check_model_arguments(model_args, training_args)
    elif path.name.startswith("modded_gpt"):
        model_args, _, training_args = run_modded_gpt.parse(flags)
        run_modded_gpt.check_model_arguments(model_args, training_args)
    elif path.name.startswith("backpack"):
        run_backpack.check_model_arguments(run_backpack.parse(flags)[0])
    elif path.name.startswith("latent_wire"):
        run_latent_wire.check_overrides_of(run_latent_wire.parse(flags)[0])
    else:
        assert path.name.startswith("classify_"), "a new config: check its size here"


# 13: a value the end of the run would refuse is refused when the arguments are read.

def test_a_file_value_outside_its_choices_is_refused(tmp_path):
    config = tmp_path / "backpack.yaml"
    config.write_text((CONFIGS / "backpack_enfr_small.yaml").read_text().replace("architecture: backpack",
                                                                               "architecture: gpt3"))
    with pytest.raises(ValueError, match=r"architecture must be one of \['backpack', 'gpt2'\], got 'gpt3'"):
        run_backpack.parse([str(config), "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false",
                            "--tf32", "false"])


def test_an_unknown_blimp_scorer_is_refused_when_parsed(tmp_path):
    with pytest.raises(ValueError, match="blimp_scorer must be one of .*'pll'.*, got 'pl'"):
        ltg_bert_args(tmp_path, "--blimp_scorer", "pl")


def test_the_old_tokenizer_vocab_size_key_names_its_new_name(tmp_path):
    """`tokenizer_vocab_size` became `train_tokenizer_vocab_size` (the model config keeps the old name for its real
    token rows): an old config file or flag says so instead of training with the default size."""
    config = tmp_path / "old.yaml"
    config.write_text((CONFIGS / "ltg_bert_tiny.yaml").read_text().replace("train_tokenizer_vocab_size:",
                                                                           "tokenizer_vocab_size:"))
    renamed = r"tokenizer_vocab_size is now train_tokenizer_vocab_size"
    with pytest.raises(ValueError, match=r"Unknown keys in the config file: \['tokenizer_vocab_size'\] \(" + renamed):
        parse_args((ModelArguments, DataArguments, MaskedLMTrainingArguments), [str(config)])
    for flag in (["--tokenizer_vocab_size", "200"], ["--tokenizer_vocab_size=200"]):
        with pytest.raises(ValueError, match=r"Unknown flags: \['--tokenizer_vocab_size'\] \(" + renamed):
            diffusion_args(tmp_path, *flag)
        with pytest.raises(ValueError, match=renamed):  # backpack's own arguments took the same name
            run_backpack.parse(["--output_dir", str(tmp_path), *flag])


# 13: init_from with overrides that change its weights, and what the end of a run needs, fail before training.

@pytest.fixture
def mdlm_checkpoint(tmp_path):
    tokenizer = tiny_tokenizer(50)
    model = MdlmForMaskedDiffusionLM(MdlmConfig(**MDLM_SIZE, vocab_size=50, mask_token_id=tokenizer.mask_token_id,
                                                pad_token_id=tokenizer.pad_token_id, max_position_embeddings=64))
    model.save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


def test_init_from_with_overrides_that_change_its_weights_is_refused_before_any_work(mdlm_checkpoint, tmp_path,
                                                                                     no_work):
    args = diffusion_args(tmp_path, "--init_from", str(mdlm_checkpoint), "--tokenizer_name", str(mdlm_checkpoint),
                          overrides={"hidden_size": 32})
    with pytest.raises(ValueError, match=r"\['hidden_size'\] would change the weights of init_from"):
        run_mdlm.main(*args)
    # Settings that keep every weight are what overrides are for with init_from.
    model_args, _, training_args = diffusion_args(tmp_path, "--init_from", str(mdlm_checkpoint),
                                                  overrides={"dropout": 0.0, "noise_eps": 1e-4})
    run_mdlm.check_model_arguments(model_args, training_args)
    training_args.init_from = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        run_mdlm.check_model_arguments(model_args, training_args)


def test_modded_gpt_init_from_takes_no_overrides_before_any_work(tmp_path, no_work):
    args = modded_gpt_args(tmp_path, "--init_from", str(tmp_path))
    with pytest.raises(ValueError, match="with init_from, config_overrides must be empty"):
        run_modded_gpt.main(*args)


def ltg_bert_model(vocab_size=60):
    return LtgBertForMaskedLM(LtgBertConfig(**LTG_BERT_SIZE, vocab_size=vocab_size, pad_token_id=0,
                                            max_position_embeddings=32, position_bucket_size=8))


def test_before_training_each_problem_is_named(tmp_path, hubzoo_not_installed, monkeypatch):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(ValueError) as error:
        check_before_training(blocked / "out", [tmp_path / "missing_pairs"], ltg_bert_model(50), tiny_tokenizer(60),
                              CardInfo())
    message = str(error.value)
    assert "the run would fail after training" in message
    assert f"{tmp_path / 'missing_pairs'} does not exist" in message
    assert f"output_dir {blocked / 'out'} is not writable" in message
    assert "60 tokens (largest id 59) do not fit vocab_size 50" in message
    assert "the hubzoo package is not installed" in message


def test_before_training_an_export_folder_that_is_not_ours_is_refused(tmp_path):
    """The final export replaces `output_dir/export`: a folder of the user's own there is named before training."""
    own = tmp_path / "out" / "export"
    own.mkdir(parents=True)
    (own / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"{own} is neither empty nor a hubzoo export"):
        check_before_training(tmp_path / "out", [], ltg_bert_model(), tiny_tokenizer(60), CardInfo())
    assert (own / "notes.txt").read_text() == "mine"


def test_before_training_the_card_is_built(tmp_path, monkeypatch):
    from hub_exports import model_cards

    check_before_training(tmp_path / "out", [], ltg_bert_model(), tiny_tokenizer(60), CardInfo())
    monkeypatch.setattr(model_cards, "CARD_DIR", tmp_path / "no_cards")
    with pytest.raises(ValueError, match="the model card cannot be written"):
        check_before_training(tmp_path / "out", [], ltg_bert_model(), tiny_tokenizer(60), CardInfo())


def test_ltg_bert_checks_before_training(tmp_path, monkeypatch):
    no_training(monkeypatch)
    with pytest.raises(ValueError, match="missing_pairs does not exist"):
        run_ltg_bert.main(*ltg_bert_args(tmp_path, "--blimp_dir", str(tmp_path / "missing_pairs")))


def test_mdlm_checks_before_training(tmp_path, monkeypatch):
    no_training(monkeypatch)
    with pytest.raises(ValueError, match="missing_pairs does not exist"):
        run_mdlm.main(*diffusion_args(tmp_path, "--blimp_dir", str(tmp_path / "missing_pairs")))


def test_modded_gpt_checks_before_training(tmp_path, monkeypatch, hubzoo_not_installed):
    no_training(monkeypatch)
    with pytest.raises(ValueError, match="hubzoo package is not installed"):
        run_modded_gpt.main(*modded_gpt_args(tmp_path))


def test_backpack_checks_before_training(shared_dir, tmp_path, monkeypatch):
    no_training(monkeypatch)
    args, training_args = backpack_run(shared_dir, tmp_path, "backpack")
    args.target_test = str(tmp_path / "missing.fr")
    with pytest.raises(ValueError, match="missing.fr does not exist"):
        run_backpack.main(args, training_args)


def test_classification_checks_before_training(causal_lm_export, tmp_path, monkeypatch,  # noqa: F811
                                               hubzoo_not_installed):
    no_training(monkeypatch)
    folder, _ = causal_lm_export
    args = run_classification.parse([
        "--model_name_or_path", str(folder), "--train_file", str(write_task(tmp_path / "train.tsv", rows=20)),
        "--eval_file", str(write_task(tmp_path / "test.tsv", rows=10)), "--labels", "0=no,1=yes",
        "--max_seq_length", "16", "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"])
    with pytest.raises(ValueError, match="hubzoo package is not installed"):
        run_classification.main(*args)


def test_latent_wire_checks_before_training(tmp_path, monkeypatch, hubzoo_not_installed):
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainers.tokenization import document_separator

    no_training(monkeypatch)
    tokenizer = tiny_tokenizer(60)
    document_separator(tokenizer)
    torch.manual_seed(0)
    decoder = LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           num_key_value_heads=1, intermediate_size=24, vocab_size=60,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    decoder.save_pretrained(tmp_path / "decoder")
    tokenizer.save_pretrained(tmp_path / "decoder")
    args, training_args = wire_args(tmp_path, "--decoders", f"tiny={tmp_path / 'decoder'}")
    with pytest.raises(ValueError, match="hubzoo package is not installed"):
        run_latent_wire.main(args, training_args)


def test_torch_compile_false_turns_a_compiled_config_eager(tmp_path, caplog):
    # Trainer alone would switch compilation back on because a mode is set.
    _, _, training_args = run_mdlm.parse([str(CONFIGS / "mdlm_small.yaml"), "--output_dir", str(tmp_path),
                                          "--use_cpu", "true", "--tf32", "false", "--torch_compile_mode",
                                          "reduce-overhead", "--torch_compile", "false"])
    assert not training_args.torch_compile and training_args.torch_compile_mode is None
    assert "torch_compile_mode 'reduce-overhead' and torch_compile_backend None are not used" in caplog.text
    _, _, compiled = run_mdlm.parse([str(CONFIGS / "mdlm_small.yaml"), "--output_dir", str(tmp_path), "--use_cpu",
                                     "true", "--tf32", "false"])
    assert compiled.torch_compile and compiled.dataloader_drop_last, "a GPU config compiles by default"


def test_a_non_finite_loss_is_logged_not_averaged_away(tmp_path):
    # Trainer's default filter replaces a NaN step loss by the running mean, hiding a diverged run.
    _, _, training_args = run_mdlm.parse([str(CONFIGS / "mdlm_tiny.yaml"), "--output_dir", str(tmp_path)])
    assert training_args.logging_nan_inf_filter is False


@pytest.mark.parametrize("use_cpu", ["true", "false"])
def test_an_fsdp_launch_on_cpu_is_refused_before_any_work(tmp_path, use_cpu):
    """accelerate never turns a CPU process group into FSDP: with use_cpu the ranks would train as plain DDP, without
    it each process alone, all of them writing the main process's outputs."""
    from tests.test_mlm_trainer import free_port

    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\nmixed_precision: 'no'\nnum_machines: 1\nnum_processes: 2\n"
                      "fsdp_config:\n  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
               str(free_port()), str(CONFIGS.parent / "run_ltg_bert.py"), str(CONFIGS / "ltg_bert_tiny.yaml"),
               "--output_dir", str(tmp_path / "run"), "--use_cpu", use_cpu]
    out = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    expected = ("would train as MULTI_CPU: accelerate runs FSDP only on accelerators" if use_cpu == "true" else
                "2 processes were launched, but each trains alone (NO, world size 1)")
    assert out.returncode != 0 and expected in out.stderr
    assert not (tmp_path / "run").exists()
