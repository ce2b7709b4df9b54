"""The causal-LM and diffusion-sampling benchmark scripts run end to end (tiny presets, CPU) and write their JSON: a
smoke test, no timing is asserted (speed is measured on the GPU, side by side, by the scripts themselves)."""

import json

from benchmarks import sample_diffusion, train_backpack, train_compiled, train_modded_gpt


def test_modded_gpt_benchmark_writes_its_record(tmp_path):
    train_modded_gpt.main(["--device", "cpu", "--preset", "tiny", "--seq-len", "64", "--batch-size", "2", "--steps",
                           "1", "--warmup", "1", "--only", "modded_gpt", "--output", str(tmp_path / "m.json")])
    record = json.loads((tmp_path / "m.json").read_text())
    assert set(record["results"]) == {"gpt2", "modded_gpt"} and record["throughput_vs_gpt2"]["gpt2"] == 1.0
    assert record["results"]["modded_gpt"]["flops_per_token"] > 0


def test_backpack_benchmark_writes_its_record(tmp_path):
    train_backpack.main(["--device", "cpu", "--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps",
                         "1", "--warmup", "1", "--vocab-size", "300", "--output", str(tmp_path / "b.json")])
    record = json.loads((tmp_path / "b.json").read_text())
    assert set(record["results"]) == {"gpt2", "backpack"} and record["backpack_throughput_vs_gpt2"] > 0


def test_sampling_benchmark_writes_its_record_with_equal_draws(tmp_path):
    sample_diffusion.main(["--device", "cpu", "--preset", "tiny", "--vocab-size", "64", "--block-size", "4",
                           "--lengths", "16", "--batch-sizes", "2", "--output", str(tmp_path / "s.json")])
    (run,) = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert run["draws_equal"] == {"bd3lm_kv_cache_graph_equals_eager": True, "bd3lm_kv_cache_equals_no_cache": True,
                                  "mdlm_ddpm_graph_equals_eager": True, "mdlm_ddpm_cache_equals_ddpm": True}
    samplers = [value for value in run.values() if isinstance(value, dict) and "tokens_per_s" in value]
    assert len(samplers) == 9 and all(value["mask_tokens_in_samples"] == 0 for value in samplers)
    # a BD3-LM block call reads 4 tokens with the cache and the whole prefix without it
    assert run["bd3lm_kv_cache"]["denoiser_tokens"] < run["bd3lm_no_cache"]["denoiser_tokens"]


def test_compiled_training_benchmark_runs_the_scripts_and_compares_losses(tmp_path):
    """Through the run scripts' Trainer path: eager and compiled ("eager" backend: the same kernels, so MDLM's losses
    are equal; LTG-BERT's eager CPU step runs its head on the masked positions only, which draws other dropout
    masks) and no graph after warm-up."""
    record = train_compiled.main(["--size", "tiny", "--device", "cpu", "--steps", "4", "--warmup", "2",
                                  "--logging-steps", "1", "--modes", "eager", "default", "--work-dir",
                                  str(tmp_path / "runs"), "--output", str(tmp_path / "c.json"), "--flags",
                                  "--torch_compile_backend", "eager", "--embedded_sentences", "600"])
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(record))
    for model in ("ltg_bert", "mdlm"):
        eager, compiled = record["runs"][model]["eager"], record["runs"][model]["default"]
        assert eager["compile_seconds"] is None and compiled["compile_seconds"] > 0
        assert compiled["graphs_after_warm_up"] == 0 and len(compiled["losses"]) == 4
        assert eager["tokens_per_s"] > 0
    assert record["runs"]["mdlm"]["default"]["loss_vs_eager_max_abs"] == 0
    assert 0 < record["runs"]["ltg_bert"]["default"]["loss_vs_eager_max_rel"] < 0.02
