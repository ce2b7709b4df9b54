"""LatentWire with two tiny, different real decoders (a Llama and a Qwen2 with their own byte-level BPEs, vocabularies
and widths; built in tests/latent_wire_trainer_driver.py): the decoder inputs, one label shift, distillation,
batch-mate independence, generation from the prefix, frozen decoders, step-wide loss normalisation over micro-batches
and processes, refusal of a foreign decoder, and the export reloaded in a fresh process with its decoders
re-attached."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_exports import export
from modeling.latent_wire import LatentWireModel, byte_tokenizer
from tests.latent_wire_trainer_driver import (ROWS, attached_wire, decoder_tokenizer, make_trainer, tiny_decoders,
                                              wire_config)
from tests.test_mlm_trainer import launch_two_processes
from trainers.latent_wire_trainer import LatentWireCollator, answer_losses

DRIVER = Path(__file__).parents[2] / "latent_wire_trainer_driver.py"


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
        answer_sum, first_sum, kl_sum = answer_losses(wire, name, prefixes[index], ids, mask)
        assert kl_sum == 0  # no teacher prompt, no distillation
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
    trainer, decoders = make_trainer(tmp_path, batch_size, accumulation, steps, optimizer)
    trainer.train()
    return trainer.model, decoders


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


def test_an_uneven_last_step_counts_the_regulariser_once(tmp_path):
    # 4 rows, 3 micro-batches per step: the second step has one. Its update must equal one batch of that row.
    one, _ = train_steps(tmp_path / "one", batch_size=3, accumulation=1, steps=2)
    three, _ = train_steps(tmp_path / "three", batch_size=1, accumulation=3, steps=2)
    for (key, a), b in zip(one.state_dict().items(), three.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=key)


def enable_checkpointing(wire):
    # transformers renamed gradient_checkpointing_enable (the name 5.17 has) to activation_checkpointing_enable.
    (getattr(wire, "activation_checkpointing_enable", None) or wire.gradient_checkpointing_enable)()


def test_gradient_checkpointing_reaches_the_decoders():
    """Checkpointing recomputes the frozen decoders' layers in the backward pass (they hold nearly all the activations)
    and changes no gradient; the decoders never receive one."""
    def run(checkpointing):
        wire = attached_wire()
        if checkpointing:
            enable_checkpointing(wire)
        wire.train()
        calls = []
        for decoder in wire.decoders.values():  # counted in forward itself: the recompute skips module hooks
            mlp = decoder.model.layers[0].mlp
            mlp.forward = lambda *args, _forward=mlp.forward: calls.append(1) or _forward(*args)
        batch = collate(wire)
        prefixes = wire(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).prefixes
        loss = sum(sum(answer_losses(wire, name, prefixes[index], batch[f"answer_ids.{name}"],
                                     batch[f"answer_mask.{name}"])[:2]) for index, name in enumerate(["llama", "qwen"]))
        loss.backward()
        assert all(p.grad is None for decoder in wire.decoders.values() for p in decoder.parameters())
        return wire, {key: p.grad for key, p in wire.named_parameters()}, len(calls)

    _, plain, plain_calls = run(False)
    wire, checkpointed, checkpointed_calls = run(True)
    assert (plain_calls, checkpointed_calls) == (2, 4)  # each decoder's layer ran again in the backward pass
    for key, grad in plain.items():
        torch.testing.assert_close(checkpointed[key], grad, atol=1e-6, rtol=1e-5, msg=key)
    assert all(decoder.training for decoder in wire.decoders.values())
    wire.eval()
    assert not any(decoder.training for decoder in wire.decoders.values())
    (getattr(wire, "activation_checkpointing_disable", None) or wire.gradient_checkpointing_disable)()
    wire.train()
    assert not any(decoder.training or decoder.model.layers[0].gradient_checkpointing
                   for decoder in wire.decoders.values())


def test_gradient_checkpointing_refuses_a_decoder_with_dropout():
    # Checkpointed layers run in training mode, where this decoder's attention dropout would act.
    decoders = tiny_decoders()
    for layer in decoders["qwen"][0].model.layers:
        layer.self_attn.attention_dropout = 0.3
    wire = attached_wire(decoders)
    with pytest.raises(ValueError, match="'qwen' computes differently in training mode"):
        enable_checkpointing(wire)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    # Two gloo ranks of 2 rows each against one process with all 4: the counts are summed over both ranks, so the
    # SGD step is the same (the rows' answers differ in length: per-rank means would not be).
    out = launch_two_processes(DRIVER, tmp_path, tmp_path / "two.safetensors", "--batch-size", "2", "--world-size", "2")
    assert sorted(re.findall(r"rank=\d world_size=2", out.stdout)) == ["rank=0 world_size=2", "rank=1 world_size=2"]
    one, _ = train_steps(tmp_path / "one", batch_size=4, accumulation=1)
    two = load_file(tmp_path / "two.safetensors")
    assert set(two) == set(one.state_dict())
    for key, value in one.state_dict().items():
        torch.testing.assert_close(two[key], value, atol=2e-6, rtol=1e-5, msg=key)


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
