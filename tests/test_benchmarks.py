"""The causal-LM benchmark scripts run end to end (tiny presets, CPU) and write their JSON: a smoke test, no timing
is asserted (speed is measured on the GPU, side by side, by the scripts themselves)."""

import json

from benchmarks import train_backpack, train_modded_gpt


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
