"""The three-condition evaluation of a LatentWire (text, latent, truncated text) with two tiny real decoders: the
metrics and files it writes, and properties that pin the conditions down — with M at least every prompt's length the
truncated condition IS the text condition; left padding changes no row; the teacher-forced NLL and first-token rank
agree with a one-row computation by hand."""

import json

import pytest
import torch

from eval_suites import wire_conditions, wire_prompts
from modeling.latent_wire import byte_tokenizer
from tests.latent_wire_trainer_driver import attached_wire
from trainers.latent_wire_trainer import LatentWireCollator

RECORDS = [{"id": f"q{i}", "context": context, "question": question, "answers": answers}
           for i, (context, question, answers) in enumerate([
               ("Ana keeps two owls.", "What does Ana keep?", ["two owls", "owls"]),
               ("Bo keeps nine red keys in a box.", "Who keeps keys?", ["Bo"]),
               ("Cy keeps six.", "How many?", ["six"])])]


def test_metrics_files_and_compression(tmp_path):
    wire = attached_wire()
    result = wire_conditions.evaluate_conditions(wire, RECORDS, byte_tokenizer(256), batch_size=2, max_new_tokens=3)
    for name in ("llama", "qwen"):
        per_decoder = result["decoders"][name]
        tokenizer = wire.decoder_tokenizers[name]
        lengths = [len(tokenizer(wire_prompts.qa_text(r), add_special_tokens=False).input_ids) for r in RECORDS]
        assert per_decoder["compression"] == sum(lengths) / 3 / 4
        anchor = len(wire.config.decoder(name)["anchor_ids"])
        assert per_decoder["latent"]["mean_prompt_positions"] == 4 + anchor
        assert per_decoder["truncated"]["mean_prompt_positions"] == 4 + anchor  # every prompt is longer than M = 4
        for condition in wire_conditions.CONDITIONS:
            metrics = per_decoder[condition]
            assert 0 <= metrics["exact_match"] <= metrics["f1"] + 1e-9 <= 100 + 1e-9
            assert metrics["nll_per_token"] > 0 and 0 <= metrics["first_token_top1"] <= metrics["first_token_top5"]
    assert len(result["predictions"]) == 2 * 3 * 3
    folder = wire_conditions.write_results(result, tmp_path)
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 18 and {"id", "decoder", "condition", "prediction"} <= set(json.loads(lines[0]))
    assert "predictions" not in json.loads((folder / "metrics.json").read_text())
    assert "| llama | latent |" in wire_conditions.markdown_report(result)


def test_text_prompts_start_as_the_decoder_was_trained():
    # A tokenizer that starts every text with its BOS (Llama's) gets it in the text, truncated and teacher prompts;
    # one without (Qwen's, the demo's) gets nothing added.
    wire = attached_wire()
    llama = wire.decoder_tokenizers["llama"]
    assert wire_prompts.leading_bos(llama) == []  # no BOS token at all
    llama.bos_token = "[MASK]"
    assert wire_prompts.leading_bos(llama) == []  # a BOS it does not put first
    llama.bos_token = "[CLS]"  # which this tokenizer's post-processor puts first
    assert wire_prompts.leading_bos(llama) == [llama.bos_token_id]
    result = wire_conditions.evaluate_conditions(wire, RECORDS, byte_tokenizer(256), conditions=("text", "truncated"),
                                                 max_new_tokens=2)
    anchor = len(wire.config.decoder("llama")["anchor_ids"])
    lengths = [len(llama(wire_prompts.qa_text(r), add_special_tokens=False).input_ids) for r in RECORDS]
    per_decoder = result["decoders"]["llama"]
    assert per_decoder["text"]["mean_prompt_positions"] == pytest.approx(sum(lengths) / 3 + 1 + anchor)
    assert per_decoder["truncated"]["mean_prompt_positions"] == 1 + 4 + anchor
    batch = LatentWireCollator(byte_tokenizer(256), wire.decoder_tokenizers, 256,
                               anchor_ids={n: wire.config.decoder(n)["anchor_ids"] for n in ("llama", "qwen")})(
        [{"text": wire_prompts.qa_text(RECORDS[0]), "answer": "owls"}])
    assert batch["prompt_ids.llama"][0, 0] == llama.bos_token_id
    assert batch["prompt_ids.qwen"][0, 0] != llama.bos_token_id


def test_decoder_generation_defaults_do_not_reach_the_conditions():
    # A repetition penalty would count the text prompt's tokens (the context the answer is copied from), not a
    # prefix's: the evaluation decodes plainly greedily whatever the decoder's generation_config says.
    wire = attached_wire()
    plain = wire_conditions.evaluate_conditions(wire, RECORDS, byte_tokenizer(256), max_new_tokens=4)
    for decoder in wire.decoders.values():
        decoder.generation_config.repetition_penalty = 50.0
        decoder.generation_config.no_repeat_ngram_size = 1
        decoder.generation_config.num_beams = 3
    penalised = wire_conditions.evaluate_conditions(wire, RECORDS, byte_tokenizer(256), max_new_tokens=4)
    assert penalised["predictions"] == plain["predictions"]


def test_truncation_to_at_least_the_prompt_is_the_text_condition():
    wire = attached_wire()
    wire.config.num_latents = 10_000  # only the truncation reads it here; the wire's queries are untouched
    text = wire_conditions.evaluate_conditions(wire, RECORDS, byte_tokenizer(256), conditions=("text", "truncated"),
                                               max_new_tokens=3)
    for name in ("llama", "qwen"):
        full, cut = text["decoders"][name]["text"], text["decoders"][name]["truncated"]
        assert full == cut


def test_rows_do_not_depend_on_left_padding_and_match_a_hand_computation():
    wire = attached_wire()
    options = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    batch = wire_conditions.run_condition(wire, "qwen", "text", RECORDS, byte_tokenizer(256), options)
    for index, record in enumerate(RECORDS):
        alone = wire_conditions.run_condition(wire, "qwen", "text", [record], byte_tokenizer(256), options)
        assert alone["predictions"][0] == batch["predictions"][index]
        assert abs(alone["nll"][0] - batch["nll"][index]) < 1e-4 and alone["rank"][0] == batch["rank"][index]
    # By hand for one row: the decoder on [prompt + anchor + gold + EOS], no padding at all.
    decoder, tokenizer = wire.decoders["qwen"], wire.decoder_tokenizers["qwen"]
    prompt = tokenizer(wire_prompts.qa_text(RECORDS[1]), add_special_tokens=False).input_ids
    prompt += wire.config.decoder("qwen")["anchor_ids"]
    gold = tokenizer("Bo", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    log_probs = decoder(torch.tensor([prompt + gold])).logits[0].log_softmax(-1)
    nll = -sum(log_probs[len(prompt) - 1 + j, token] for j, token in enumerate(gold))
    assert abs(batch["nll"][1] - nll.item()) < 1e-4 and batch["tokens"][1] == len(gold)
    first_logits = log_probs[len(prompt) - 1]
    assert batch["rank"][1] == int((first_logits > first_logits[gold[0]]).sum())
