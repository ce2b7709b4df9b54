"""The diffusion training script end to end on CPU: a few steps of MDLM and BD3-LM with checkpoints, the README's
main job (the tiny MDLM on the embedded corpus) learning, and every diffusion config parsing."""

import json
from pathlib import Path

import pytest
import torch

from hub_exports import load_checkpoint, verify
from trainers import run_mdlm

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "trainers" / "configs").glob("*lm_*.yaml"))  # mdlm_*, bd3lm_*


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path, tmp_path):
    _, data_args, training_args = run_mdlm.parse([str(path), "--output_dir", str(tmp_path), "--use_cpu", "true",
                                                  "--tf32", "false"])
    assert training_args.algorithm in path.name and data_args.max_seq_length > 0


def test_without_a_config_the_tiny_preset_is_used(caplog):
    _, _, training_args = run_mdlm.parse([])
    assert training_args.algorithm == "mdlm" and training_args.max_steps == 1000
    assert "mdlm_tiny.yaml" in caplog.text


@pytest.mark.parametrize("config", ["mdlm_tiny.yaml", "bd3lm_tiny.yaml"])
def test_tiny_run_trains_checkpoints_exports_and_samples(tmp_path, capsys, config):
    args = run_mdlm.parse([str(REPO_ROOT / "trainers" / "configs" / config), "--output_dir", str(tmp_path),
                           "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                           "--embedded_sentences", "600", "--logging_steps", "1", "--nelbo_samples", "2",
                           "--nelbo_max_sequences", "8", "--sampling_steps", "4", "--num_samples_to_print", "2"])
    run_mdlm.main(*args)
    out = capsys.readouterr().out
    assert "NELBO perplexity bound" in out and "BLiMP accuracy (ELBO)" in out
    for checkpoint in ("checkpoint-2", "checkpoint-4"):  # each with its EMA and a verified export of it
        assert (tmp_path / checkpoint / "ema.safetensors").is_file()
        verify(tmp_path / checkpoint / "export")
    verify(tmp_path / "export")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["perplexity_bound"]["num_samples"] == 2 and len(results["samples"]) == 2
    model = load_checkpoint(tmp_path / "export")
    assert model.config.model_type == config.split("_")[0]
    # The export holds the EMA weights, not the trained ones
    trained = load_checkpoint(tmp_path / "checkpoint-4")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), trained.parameters()))


@pytest.mark.slow
def test_main_job_learns(tmp_path, capsys):
    """The README's main job (trainers/configs/mdlm_tiny.yaml, embedded corpus), shortened to 400 steps: the NELBO
    bound falls far below the uniform-prediction level and the samples hold no mask token."""
    args = run_mdlm.parse(["--output_dir", str(tmp_path), "--max_steps", "400", "--num_samples_to_print", "4"])
    run_mdlm.main(*args)
    results = json.loads((tmp_path / "results.json").read_text())
    vocabulary = load_checkpoint(tmp_path / "export").config.vocab_size
    bound = results["perplexity_bound"]
    print(f"\nNELBO bound {bound['perplexity']:.2f} ± {bound['standard_error']:.3f} (uniform: {vocabulary - 1}); "
          f"BLiMP {results['blimp']['accuracy']:.3f}")
    assert bound["perplexity"] < 0.1 * (vocabulary - 1)
    assert results["mask_tokens_in_samples"] == 0 and all(text.strip() for text in results["samples"])


@pytest.mark.slow
def test_two_process_run(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: two gloo ranks train one BD3-LM together, the main
    process exports and reports, and both ranks exit cleanly."""
    import os
    import subprocess
    import sys

    from tests.test_run_ltg_bert import free_port

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(REPO_ROOT / "trainers" / "run_bd3lm.py"),
               str(REPO_ROOT / "trainers" / "configs" / "bd3lm_tiny.yaml"), "--output_dir", str(tmp_path),
               "--max_steps", "4", "--embedded_sentences", "600", "--save_strategy", "steps", "--save_steps", "4",
               "--disable_tqdm", "true", "--nelbo_samples", "2", "--nelbo_max_sequences", "8", "--sampling_steps", "2",
               "--num_samples_to_print", "1"]
    out = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    assert "2 process(es)" in out.stderr and out.stdout.count("Exported and verified") == 1
    assert json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert (tmp_path / "checkpoint-4" / "ema.safetensors").is_file()
    verify(tmp_path / "export")


def test_a_tokenizer_without_bos_starts_rows_with_its_cls_which_becomes_its_bos():
    """transformers 5.17's Trainer copies the tokenizer's BOS (None for a WordPiece tokenizer) over config.bos_token_id
    before training, which left BD3-LM's sampler without its first token; the [CLS] rows start with is the BOS."""
    from transformers.trainer_utils import align_special_tokens

    from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
    from tests.modeling_common import tiny_tokenizer
    from trainers.diffusion_config import row_start_token

    tokenizer = tiny_tokenizer(40)
    assert tokenizer.bos_token_id is None and row_start_token(tokenizer) == 2 == tokenizer.bos_token_id
    model = Bd3lmForMaskedDiffusionLM(Bd3lmConfig(vocab_size=40, mask_token_id=4, pad_token_id=0, bos_token_id=2,
                                                  hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                  cond_dim=8, max_position_embeddings=8, block_size=4))
    align_special_tokens(model, tokenizer)
    assert model.config.bos_token_id == 2 and (model.sample(length=8)[:, 0] == 2).all()
