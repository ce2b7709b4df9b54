"""The LatentWire script end to end on CPU with tiny sizes: demo decoders trained and saved, the wire trained, the three
conditions evaluated, the verdict printed, the wire exported naming its decoders."""

import json

from trainers import run_latent_wire
from trainers.latent_wire_config import verdict
from trainers.qa_corpus import generate_qa

TINY_DECODER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                "intermediate_size": 48}


def test_tiny_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # a relative output_dir, as in the demo config
    args, training_args = run_latent_wire.parse([
        "--output_dir", tmp_path.name, "--num_train", "48", "--num_eval", "6", "--demo_decoder_steps", "4",
        "--demo_decoder_batch_size", "8", "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--max_new_tokens", "3", "--eval_batch_size", "4", "--logging_steps", "1",
        "--distillation_weight", "0.5"])
    args.demo_decoder_overrides = {"llama": TINY_DECODER, "qwen": {**TINY_DECODER, "hidden_size": 24}}
    args.wire_overrides = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_latents": 4}
    run_latent_wire.main(args, training_args)
    out = capsys.readouterr().out
    assert out.count("target ") == 2 and "Exported and verified" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["decoders"]) == {"llama", "qwen"} and metrics["train_steps"] == 3
    assert all(set(metrics["decoders"][name]) == {"compression", "text", "latent", "truncated"}
               for name in ("llama", "qwen"))
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2 * 3 * 6
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    # Recorded absolute: load_decoders then works from any working directory.
    assert [entry["name_or_path"] for entry in config["decoders"]] == [str(tmp_path.resolve() / "decoders" / n)
                                                                       for n in ("llama", "qwen")]
    assert all(entry["embedding_rms"] and entry["anchor_ids"] for entry in config["decoders"])
    assert (tmp_path / "decoders" / "qwen" / "tokenizer.json").is_file()


def test_verdict():
    args = run_latent_wire.WireArguments()

    def outcome(text, latent, truncated, compression=7.0):
        conditions = {"text": text, "latent": latent, "truncated": truncated}
        result = {"decoders": {"d": {"compression": compression,
                                     **{c: {"exact_match": em} for c, em in conditions.items()}}}}
        return verdict(result, args)[0].split("target ")[1]

    assert outcome(80, 72, 10) == "MET"  # 0.90 of text, truncated far below
    assert outcome(80, 71, 10) == "MISSED"  # 0.89
    assert outcome(80, 76, 40) == "MISSED"  # truncated not far below the latent
    assert outcome(80, 80, 0, compression=3.9) == "MISSED"
    assert outcome(12, 11, 0).startswith("NOT SHOWN")  # every condition near the guessing rate


def test_generated_questions_need_their_context():
    records = generate_qa(200, seed=3)
    assert len({r["id"] for r in records}) == 200
    for record in records:
        assert record["answers"][0] in record["context"]  # the answer is stated in the context ...
    # ... and the same question gets different answers in different contexts, so it cannot be memorised.
    by_question = {}
    for record in records:
        by_question.setdefault(record["question"], set()).add(record["answers"][0])
    assert any(len(answers) > 1 for answers in by_question.values())


def test_demo_config_parses(tmp_path):
    config = run_latent_wire.__file__.replace("run_latent_wire.py", "configs/latent_wire_demo.yaml")
    args, training_args = run_latent_wire.parse([config, "--output_dir", str(tmp_path), "--use_cpu", "true",
                                                  "--bf16", "false", "--tf32", "false"])
    assert args.wire_overrides["num_latents"] == 4 and not args.decoders
    assert training_args.max_steps == 3000 and training_args.remove_unused_columns is False
