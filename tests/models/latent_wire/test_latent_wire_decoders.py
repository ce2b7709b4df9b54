"""LatentWire with two tiny, different real decoders (a Llama and a Qwen2 with their own byte-level BPEs, vocabularies
and widths): the decoder inputs, one label shift, batch-mate independence, generation from the prefix, frozen
decoders, step-wide loss normalisation, refusal of a foreign decoder, and the export reloaded in a fresh process
with its decoders re-attached."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hub_exports import export
from modeling.latent_wire import LatentWireConfig, LatentWireModel, byte_tokenizer
from trainers.latent_wire_trainer import (LatentWireCollator, LatentWireTrainer, LatentWireTrainingArguments,
                                          answer_losses)
from trainers.tokenization import document_separator, train_tokenizer

CORPUS = [f"Context: {name} keeps {count} {thing}. Question: What does {name} keep? Answer: {count} {thing}"
          for name in ("Ana", "Bo", "Cy", "Di") for count in ("two", "nine", "six") for thing in ("owls", "keys")]
ROWS = [{"text": f"Context: {name} keeps {thing}. Question: What?", "answer": thing}
        for name, thing in [("Ana", "owls"), ("Bo", "red keys"), ("Cy", "six"), ("Di", "nine blue owls")]]


def decoder_tokenizer(vocab_size):
    tokenizer = train_tokenizer(CORPUS, vocab_size, kind="byte_level_bpe", min_frequency=1)
    document_separator(tokenizer)  # [SEP] becomes the EOS
    return tokenizer


def tiny_decoders(seed=0):
    """{name: (decoder, tokenizer)}: two architectures, widths 24 and 40, different vocabularies."""
    torch.manual_seed(seed)
    llama_tokenizer, qwen_tokenizer = decoder_tokenizer(300), decoder_tokenizer(360)
    common = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tokenizer), hidden_size=24, intermediate_size=48,
                                         pad_token_id=llama_tokenizer.pad_token_id, **common))
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(qwen_tokenizer), hidden_size=40, intermediate_size=64,
                                        pad_token_id=qwen_tokenizer.pad_token_id, **common))
    return {"llama": (llama.eval(), llama_tokenizer), "qwen": (qwen.eval(), qwen_tokenizer)}


def wire_config(**overrides):
    entries = [{"name": "llama", "hidden_size": 24}, {"name": "qwen", "hidden_size": 40, "bos_after_prefix": False}]
    return LatentWireConfig(**{**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                      num_latents=4, max_position_embeddings=96, decoders=entries), **overrides})


def attached_wire(decoders=None, seed=0):
    torch.manual_seed(seed)
    wire = LatentWireModel(wire_config()).eval()
    for name, (decoder, tokenizer) in (decoders or tiny_decoders()).items():
        wire.attach_decoder(name, decoder, tokenizer)
    return wire


def collate(wire, rows=ROWS):
    return LatentWireCollator(byte_tokenizer(96), wire.decoder_tokenizers, 96)(rows)


def test_decoder_inputs_layout():
    wire = attached_wire()
    batch = collate(wire)
    prefixes = wire(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).prefixes
    for index, name in enumerate(["llama", "qwen"]):
        decoder, tokenizer = wire.decoders[name], wire.decoder_tokenizers[name]
        ids, mask = batch[f"answer_ids.{name}"], batch[f"answer_mask.{name}"]
        assert all(row[int(m.sum()) - 1] == tokenizer.eos_token_id for row, m in zip(ids, mask))  # EOS appended
        inputs = wire.decoder_inputs(name, prefixes[index], ids, mask)
        anchor = wire.config.decoder(name)["anchor_ids"]
        assert anchor == tokenizer("Answer: ", add_special_tokens=False).input_ids
        prompt = 4 + len(anchor)
        assert inputs["inputs_embeds"].shape == (4, prompt + ids.shape[1], decoder.config.hidden_size)
        torch.testing.assert_close(inputs["inputs_embeds"][:, :4], prefixes[index], atol=0, rtol=0)
        embed = decoder.get_input_embeddings()
        torch.testing.assert_close(inputs["inputs_embeds"][:, 4:prompt], embed(torch.tensor(anchor)).expand(4, -1, -1))
        torch.testing.assert_close(inputs["inputs_embeds"][:, prompt:], embed(ids))
        # Labels sit at the answer tokens' own positions (no pre-shift); -100 on prefix, anchor and padding.
        assert (inputs["labels"][:, :prompt] == -100).all()
        assert torch.equal(inputs["labels"][:, prompt:], ids.masked_fill(mask == 0, -100))
        assert torch.equal(inputs["attention_mask"], torch.cat([torch.ones(4, prompt, dtype=torch.long), mask], 1))
        assert torch.equal(inputs["position_ids"], torch.arange(prompt + ids.shape[1]).expand(4, -1))


def test_answer_loss_shifts_once():
    """The summed answer CE equals Σ -log p(answer_j | prefix, anchor, answer_<j) read off position (p_j - 1): a
    double shift (labels pre-shifted and shifted again) would score each token two positions ahead."""
    wire = attached_wire()
    batch = collate(wire)
    prefixes = wire(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).prefixes
    for index, name in enumerate(["llama", "qwen"]):
        ids, mask = batch[f"answer_ids.{name}"], batch[f"answer_mask.{name}"]
        answer_sum, first_sum = answer_losses(wire, name, prefixes[index], ids, mask)
        inputs = wire.decoder_inputs(name, prefixes[index], ids, mask)
        inputs.pop("labels")
        log_probs = wire.decoders[name](**inputs).logits.log_softmax(-1)
        prompt = inputs["inputs_embeds"].shape[1] - ids.shape[1]
        expected = [-log_probs[row, prompt + j - 1, ids[row, j]] for row in range(4) for j in range(int(mask[row].sum()))]
        torch.testing.assert_close(answer_sum, torch.stack(expected).sum(), atol=1e-4, rtol=1e-5)
        first = torch.stack([-log_probs[row, prompt - 1, ids[row, 0]] for row in range(4)]).sum()
        torch.testing.assert_close(first_sum, first, atol=1e-5, rtol=1e-5)


def test_distillation_term_matches_a_row_by_row_computation():
    """KL(decoder reading the text ‖ decoder reading the prefix) over the answer tokens: the batched, left-padded
    teacher equals each row run alone and unpadded, position by position."""
    wire = attached_wire()
    anchors = {name: wire.config.decoder(name)["anchor_ids"] for name in ("llama", "qwen")}
    batch = LatentWireCollator(byte_tokenizer(96), wire.decoder_tokenizers, 96, anchor_ids=anchors)(ROWS)
    prefixes = wire(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).prefixes
    for index, name in enumerate(["llama", "qwen"]):
        decoder, tokenizer = wire.decoders[name], wire.decoder_tokenizers[name]
        ids, mask = batch[f"answer_ids.{name}"], batch[f"answer_mask.{name}"]
        _, _, kl_sum = answer_losses(wire, name, prefixes[index], ids, mask,
                                     (batch[f"prompt_ids.{name}"], batch[f"prompt_mask.{name}"]))
        expected = 0.0
        for row, data in enumerate(ROWS):
            answer = ids[row, :int(mask[row].sum())]
            prompt = tokenizer(data["text"], add_special_tokens=False).input_ids + anchors[name]
            teacher = decoder(torch.tensor([prompt + answer.tolist()])).logits[0, len(prompt) - 1:-1]
            inputs = wire.decoder_inputs(name, prefixes[index][row:row + 1], answer[None])
            inputs.pop("labels")
            start = inputs["inputs_embeds"].shape[1] - len(answer) - 1
            student = decoder(**inputs).logits[0, start:-1]
            expected += (teacher.softmax(-1) * (teacher.log_softmax(-1) - student.log_softmax(-1))).sum()
        torch.testing.assert_close(kl_sum, expected, atol=1e-4, rtol=1e-4)
        assert kl_sum > 0


def test_latents_do_not_depend_on_batch_mates():
    wire = attached_wire()
    tokenizer = byte_tokenizer(96)
    alone = wire(**tokenizer(["short"], return_tensors="pt")).last_hidden_state
    together = wire(**tokenizer(["short", "a much longer neighbour text"], padding=True, return_tensors="pt"))
    torch.testing.assert_close(together.last_hidden_state[:1], alone, atol=1e-5, rtol=1e-5)


def test_generate_with_matches_stepwise_greedy():
    """Generation from the prefix embeddings: the same tokens as argmax decoding by hand on decoder_inputs."""
    wire = attached_wire()
    texts = byte_tokenizer(96)([row["text"] for row in ROWS[:2]], padding=True, return_tensors="pt")
    for name in ("llama", "qwen"):
        generated = wire.generate_with(name, **texts, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        prefix = wire.adapt(wire(**texts).last_hidden_state, name)
        tokens = torch.empty(2, 0, dtype=torch.long)
        for _ in range(4):
            inputs = wire.decoder_inputs(name, prefix, tokens) if tokens.shape[1] else wire.decoder_inputs(name, prefix)
            inputs.pop("labels", None)
            tokens = torch.cat([tokens, wire.decoders[name](**inputs).logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(generated, tokens), name


def train_steps(tmp_path, batch_size, accumulation, steps=1, optimizer="sgd"):
    decoders = tiny_decoders()
    wire = attached_wire(decoders)
    args = LatentWireTrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, learning_rate=0.5, optim=optimizer, lr_scheduler_type="constant",
        max_grad_norm=0.0, weight_decay=0.0, use_cpu=True, report_to="none", save_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    from datasets import Dataset

    trainer = LatentWireTrainer(model=wire, args=args, train_dataset=Dataset.from_list(ROWS),
                                data_collator=LatentWireCollator(byte_tokenizer(96), wire.decoder_tokenizers, 96))
    trainer.train()
    return wire, decoders


def test_training_moves_the_wire_and_never_the_decoders(tmp_path):
    before = {name: {key: value.clone() for key, value in decoder.state_dict().items()}
              for name, (decoder, _) in tiny_decoders().items()}
    initial = {key: value.clone() for key, value in attached_wire().state_dict().items()}
    wire, decoders = train_steps(tmp_path, batch_size=2, accumulation=1, steps=3, optimizer="adamw_torch")
    for name, (decoder, _) in decoders.items():
        assert all(torch.equal(value, before[name][key]) for key, value in decoder.state_dict().items()), name
        assert not any(p.requires_grad or p.grad is not None for p in decoder.parameters())
        assert not decoder.training
    changed = [key for key, value in wire.state_dict().items() if not torch.equal(value, initial[key])]
    assert {key.split(".")[0] for key in changed} >= {"embed_bytes", "layers", "latent_queries", "pooler", "adapters"}
    assert not any(key.startswith(("llama", "qwen", "decoders")) for key in wire.state_dict())


def test_step_does_not_depend_on_micro_batching(tmp_path):
    # SGD without clipping: the update is -lr × gradient, so a wrongly normalised micro-batch loss shows up. The rows'
    # answers differ in length, so per-micro-batch means would differ from the step-wide mean.
    one, _ = train_steps(tmp_path / "one", batch_size=4, accumulation=1)
    two, _ = train_steps(tmp_path / "two", batch_size=2, accumulation=2)
    for (key, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=key)


def test_a_foreign_decoder_is_refused(tmp_path):
    wire = attached_wire()
    wire.save_pretrained(tmp_path)
    reloaded = LatentWireModel.from_pretrained(tmp_path)
    assert reloaded.config.decoder("llama")["embedding_rms"] == wire.config.decoder("llama")["embedding_rms"]
    others = tiny_decoders(seed=1)  # same shapes and tokenizers, other weights: another decoder
    with pytest.raises(ValueError, match="embedding_rms"):
        reloaded.attach_decoder("llama", *others["llama"])
    with pytest.raises(ValueError, match="embeds into 40 dims"):
        reloaded.attach_decoder("llama", *tiny_decoders()["qwen"])
    decoder, _ = tiny_decoders()["llama"]
    with pytest.raises(ValueError, match="anchor_ids|tokenizer_size"):
        reloaded.attach_decoder("llama", decoder, decoder_tokenizer(280))
    with pytest.raises(ValueError, match="not attached"):
        reloaded.generate_with("llama", **byte_tokenizer(96)(["x"], return_tensors="pt"))


FRESH = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
folder = sys.argv[1]
wire = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
wire.load_decoders()
texts = tokenizer(json.loads(sys.argv[2]), padding=True, return_tensors="pt")
out = {"module": type(wire).__module__, "latents": wire(**texts).last_hidden_state.tolist()}
for name in wire.decoders:
    out[name] = wire.generate_with(name, **texts, max_new_tokens=5, do_sample=False, min_new_tokens=5).tolist()
print(json.dumps(out))
"""


def test_export_reloads_in_a_fresh_process_with_its_decoders(tmp_path):
    decoders = tiny_decoders()
    for name, (decoder, tokenizer) in decoders.items():
        decoder.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    config = wire_config()
    for entry in config.decoders:
        entry["name_or_path"] = str(tmp_path / entry["name"])
    torch.manual_seed(0)
    wire = LatentWireModel(config).eval()
    for name, (decoder, tokenizer) in decoders.items():
        wire.attach_decoder(name, decoder, tokenizer)
    folder = export(wire, byte_tokenizer(96), tmp_path / "wire")
    assert not any("llama" in path.name or "qwen" in path.name for path in folder.iterdir())
    texts = [row["text"] for row in ROWS[:2]]
    result = subprocess.run([sys.executable, "-I", "-c", FRESH, str(folder), json.dumps(texts)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    fresh = json.loads(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "null")
    assert fresh, result.stderr
    assert fresh["module"].startswith("transformers_modules")
    encoded = byte_tokenizer(96)(texts, padding=True, return_tensors="pt")
    torch.testing.assert_close(torch.tensor(fresh["latents"]), wire(**encoded).last_hidden_state, atol=1e-5, rtol=1e-5)
    for name in decoders:
        here = wire.generate_with(name, **encoded, max_new_tokens=5, do_sample=False, min_new_tokens=5)
        assert fresh[name] == here.tolist(), name
