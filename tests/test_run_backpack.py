"""The Backpack en–fr script end to end on CPU, for the Backpack and its GPT-2 baseline with one config: a few steps
on real pairs, then perplexity, translation, word similarity and (Backpack) the sense figures."""

import json
from pathlib import Path

import pytest

from trainers import run_backpack

CONFIG = Path(run_backpack.__file__).with_name("configs") / "backpack_enfr_small.yaml"


def tiny_run(shared_dir, tmp_path, architecture):
    data = shared_dir / "data" / "en_fr_parallel" / "multi30k"
    args, training_args = run_backpack.parse([
        str(CONFIG), "--architecture", architecture, "--output_dir", str(tmp_path / architecture),
        "--source_train", str(data / "train.en"), "--target_train", str(data / "train.fr"),
        "--source_validation", str(data / "val.en"), "--target_validation", str(data / "val.fr"),
        "--source_test", str(data / "test_2016_flickr.en"), "--target_test", str(data / "test_2016_flickr.fr"),
        "--word_similarity_dir", str(shared_dir / "data"), "--max_train_pairs", "600", "--max_eval_pairs", "40",
        "--translation_pairs", "6", "--num_beams", "1", "2", "--train_tokenizer_vocab_size", "600",
        "--max_seq_length", "128", "--max_steps", "20", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", "--warmup_steps", "2", "--use_cpu", "true",
        "--bf16", "false", "--tf32", "false", "--eval_strategy", "no", "--logging_steps", "5",
        "--dataloader_num_workers", "0", "--sense_words", "man", "rouge"])
    args.config_overrides = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_senses": 4}
    return args, training_args


@pytest.mark.parametrize("architecture", ["backpack", "gpt2"])
def test_tiny_run(shared_dir, tmp_path, capsys, architecture):
    args, training_args = tiny_run(shared_dir, tmp_path, architecture)
    run_backpack.main(args, training_args)
    assert f"{architecture}: held-out perplexity" in capsys.readouterr().out
    output = tmp_path / architecture
    results = json.loads((output / "results.json").read_text())
    assert results["train_steps"] == 20 and results["perplexity"] < 600, "20 steps must beat a uniform guess"
    assert {"greedy", "beam2"} <= set(results["translation"])
    assert results["word_similarity"]["embeddings"]["simlex999"]["num_pairs"] == 999
    if architecture == "backpack":
        assert (output / "senses.png").is_file() and (output / "contextualization.png").is_file()
        assert len(results["word_similarity"]["senses"]["rg65"].get("spearman_per_sense", [])) in (0, 4)
        assert (output / "export" / "modeling_backpack.py").is_file()
    else:
        assert json.loads((output / "export" / "config.json").read_text())["model_type"] == "gpt2"


def test_both_architectures_share_width_depth_and_tokenizer(shared_dir, tmp_path):
    args, training_args = tiny_run(shared_dir, tmp_path, "backpack")
    english, french = run_backpack.read_pairs(args.source_train, args.target_train, 200)
    tokenizer = run_backpack.obtain_tokenizer(args, training_args, english, french)
    assert tokenizer.convert_tokens_to_ids("<en>") != tokenizer.unk_token_id
    tag = tokenizer.convert_tokens_to_ids("<en>")
    assert tokenizer("<en> a man <fr>", add_special_tokens=False).input_ids[0] == tag
    # Lossless: translations are scored exactly as decoded, so a reference must come back unchanged.
    reference = "Cinq personnes avec des vestes d'hiver sont debout dans la neige, en arrière-plan."
    assert tokenizer.decode(tokenizer(reference, add_special_tokens=False).input_ids) == reference
    backpack = run_backpack.build_model(args, tokenizer)
    args.architecture = "gpt2"
    gpt2 = run_backpack.build_model(args, tokenizer)
    assert (gpt2.config.n_embd, gpt2.config.n_layer, gpt2.config.n_head) == (32, 2, 2)
    assert gpt2.config.vocab_size == backpack.config.vocab_size == len(tokenizer)
    rows = run_backpack.encode_pairs(tokenizer, args, english[:3], french[:3])
    assert all(row[-1] == tokenizer.eos_token_id and len(row) <= 128 for row in rows["input_ids"])


@pytest.mark.slow
def test_lora_continues_a_backpack_export(shared_dir, tmp_path):
    """init_from a run's export with `peft`: its tokenizer is reused, the adapter repo verifies on that export, and
    the evaluation (translation, senses) runs on the adapted model."""
    from hub_exports import verify

    args, training_args = tiny_run(shared_dir, tmp_path, "backpack")
    run_backpack.main(args, training_args)
    base = tmp_path / "backpack" / "export"
    args, training_args = tiny_run(shared_dir, tmp_path / "lora", "backpack")
    training_args.output_dir = str(tmp_path / "lora" / "out")
    args.init_from, args.config_overrides, args.tokenizer_name = str(base), {}, None
    training_args.peft, training_args.optimizer = {"type": "lora", "r": 4}, "adamw"
    run_backpack.main(args, training_args)
    output = tmp_path / "lora" / "out"
    assert {"base", "fresh-process load", "outputs", "generate"} <= {check.name for check in verify(output / "export")}
    results = json.loads((output / "results.json").read_text())
    assert results["train_steps"] == 20 and {"greedy", "beam2"} <= set(results["translation"])
    assert (output / "senses.png").is_file()
