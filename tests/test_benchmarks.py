"""The causal-LM and diffusion-sampling benchmark scripts run end to end (tiny presets, CPU) and write their JSON: a
smoke test, no timing is asserted (speed is measured on the GPU, side by side, by the scripts themselves)."""

import json

from benchmarks import sample_diffusion, train_backpack, train_modded_gpt


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
