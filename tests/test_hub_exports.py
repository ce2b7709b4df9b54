"""export -> verify -> push on a tiny LTG-BERT: the complete folder, loud failures for broken exports, atomic writes
that survive a kill at any step, refusal of output folders an export may not replace, and an upload that lands
byte-identical on a loopback Hub."""

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_exports import CardInfo, Metric, VerificationError, export, load_checkpoint, verify
from hub_exports.__main__ import main as cli
from hub_exports.folder_swap import check_export_target
from hub_exports.manifest import file_digest
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from tests.hub_stub import LoopbackHub
from tests.modeling_common import tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_model(**overrides):
    torch.manual_seed(0)
    config = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=32, position_bucket_size=8, pad_token_id=0)
    return LtgBertForMaskedLM(LtgBertConfig(**{**config, **overrides})).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    card = CardInfo(repo_id="hubzoo/ltg-bert-tiny", training_data="Nothing: random weights.",
                    metrics=[Metric("fill-mask", "Synthetic", "synthetic", "accuracy", 0.25)])
    return export(tiny_model(), tiny_tokenizer(64), tmp_path_factory.mktemp("export") / "ltg-bert-tiny", card=card)


@pytest.fixture
def broken(exported, tmp_path):
    """A private copy of the good export, to break."""
    return Path(shutil.copytree(exported, tmp_path / "broken"))


def failure_report(folder, capsys) -> str:
    assert cli(["verify", str(folder)]) == 1
    return capsys.readouterr().err


def test_export_writes_a_complete_repo(exported):
    files = sorted(p.name for p in exported.iterdir())
    assert files == ["README.md", "config.json", "configuration_ltg_bert.py", "hubzoo_export.json",
                     "model.safetensors", "modeling_ltg_bert.py", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((exported / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM",
                                       "AutoModelForSequenceClassification", "AutoModelForTokenClassification"}
    assert config["pad_token_id"] == 0 and config["tie_word_embeddings"] is True
    card = (exported / "README.md").read_text()
    metadata = card.split("---")[1]
    assert "model-index" in metadata and "value: 0.25" in metadata and "pipeline_tag: fill-mask" in metadata
    assert 'AutoModelForMaskedLM.from_pretrained("hubzoo/ltg-bert-tiny", trust_remote_code=True)' in card
    for section in ("## Training data", "## Limitations", "## Evaluation", "Nothing: random weights."):
        assert section in card


def test_verify_cli_prints_pass_report(exported):
    done = subprocess.run([sys.executable, "-m", "hub_exports", "verify", str(exported)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "PASSED: 9 checks" in done.stdout
    assert "LtgBertForMaskedLM from transformers_modules" in done.stdout


def test_verify_names_a_dropped_head_weight(broken, capsys):
    tensors = load_file(broken / "model.safetensors")
    del tensors["lm_head.dense.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    report = failure_report(broken, capsys)
    assert "missing keys ['lm_head.dense.weight']" in report
    assert "changed since export: ['model.safetensors']" in report


def test_verify_catches_weights_replaced_after_export(broken, capsys):
    tensors = {key: torch.randn_like(t) if t.is_floating_point() else t
               for key, t in load_file(broken / "model.safetensors").items()}
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    assert "changed since export: ['model.safetensors']" in failure_report(broken, capsys)


def test_verify_catches_a_config_edit_that_still_loads(broken, capsys):
    """The wrong relative-position split loads cleanly and predicts nonsense: only the fingerprint catches it."""
    config = json.loads((broken / "config.json").read_text())
    config["position_qk_split"] = "per_head_interleaved"
    (broken / "config.json").write_text(json.dumps(config))
    assert "changed since export: ['config.json']" in failure_report(broken, capsys)


def test_verify_refuses_files_an_export_must_not_ship(broken, capsys):
    (broken / "optimizer.pt").write_bytes(b"x")
    (broken / "checkpoint-10").mkdir()
    assert "files an export must not ship: ['checkpoint-10', 'optimizer.pt']" in failure_report(broken, capsys)


def test_verify_names_an_untied_head(broken, capsys):
    tensors = load_file(broken / "model.safetensors")
    tensors["lm_head.decoder.weight"] = tensors["ltg_bert.embeddings.word_embeddings.weight"] + 1
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    assert "untied head" in failure_report(broken, capsys)


def test_verify_names_a_mismatched_tokenizer(broken, capsys):
    tiny_tokenizer(80).save_pretrained(broken)
    report = failure_report(broken, capsys)
    assert "80 tokens (largest id 79) do not fit vocab_size 64" in report
    assert "changed since export: ['tokenizer.json', 'tokenizer_config.json']" in report


def test_verify_names_a_special_id_mismatch(broken, capsys):
    config = json.loads((broken / "config.json").read_text())
    config["pad_token_id"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    assert "config.pad_token_id=3 but tokenizer pad_token_id=0" in failure_report(broken, capsys)


def test_verify_names_an_edited_modeling_file(broken, capsys):
    path = broken / "modeling_ltg_bert.py"
    path.write_text(path.read_text().replace("1.0 / math.sqrt(3 * self.head_dim)", "1.0 / math.sqrt(self.head_dim)"))
    assert "modeling_ltg_bert.py differs from modeling/ltg_bert/modeling_ltg_bert.py" in failure_report(broken, capsys)


def test_verify_names_an_incomplete_auto_map(broken, capsys):
    config = json.loads((broken / "config.json").read_text())
    del config["auto_map"]["AutoModelForTokenClassification"]
    (broken / "config.json").write_text(json.dumps(config))
    assert "AutoModelForTokenClassification" in failure_report(broken, capsys)


def test_verify_compares_outputs_with_the_reference(exported):
    trained_further = tiny_model()
    with torch.no_grad():
        trained_further.lm_head.dense.bias.add_(0.1)
    with pytest.raises(VerificationError, match=r"\[FAIL\] outputs: outputs differ from the in-memory model"):
        verify(exported, reference_model=trained_further)


def test_verify_compares_outputs_with_those_recorded_at_export(broken, capsys):
    manifest = json.loads((broken / "hubzoo_export.json").read_text())
    manifest["probe_output_sample"][0][0][0] += 0.01
    (broken / "hubzoo_export.json").write_text(json.dumps(manifest))
    assert "outputs differ from those recorded at export by 0.01" in failure_report(broken, capsys)


def rehash(folder, name):
    """Record `name`'s current sha256 in the manifest, as someone editing the export on purpose would."""
    manifest = json.loads((folder / "hubzoo_export.json").read_text())
    manifest["files"][name] = file_digest(folder / name)
    (folder / "hubzoo_export.json").write_text(json.dumps(manifest))


def test_verify_catches_an_output_change_outside_the_sampled_features(broken, capsys):
    """One head bias entry past the 16 features sampled in the manifest: only the digest of all features sees it."""
    tensors = load_file(broken / "model.safetensors")
    tensors["lm_head.decoder.bias"][40] += 0.01
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    rehash(broken, "model.safetensors")
    report = failure_report(broken, capsys)
    assert "[PASS] manifest" in report
    assert "outputs differ from those recorded at export by 0.01 (digest of all 64 features)" in report


def test_verify_refuses_a_manifest_without_the_output_digest(broken, capsys):
    """An older manifest vouches for 16 features only; deleting the digest must not be a way around it."""
    manifest = json.loads((broken / "hubzoo_export.json").read_text())
    del manifest["probe_output_digest"]
    (broken / "hubzoo_export.json").write_text(json.dumps(manifest))
    assert "lacks ['probe_output_digest'] (written by an older hubzoo); re-export the model" in \
        failure_report(broken, capsys)


def test_verify_detects_a_class_that_forgot_its_tie(exported):
    """Judged on the loaded model, not on what the class declares."""
    report = {"class_module": "transformers_modules.x", "class_name": "LtgBertForMaskedLM", "loading_info": {},
              "warnings": [], "tied": False, "tokenizer_max_id": 3, "transformers_version": "5"}
    config = LtgBertConfig.from_pretrained(exported)
    check = importlib.import_module("hub_exports.verification")._judge_fresh_load(report, config)
    assert not check.ok and "untied head" in check.detail


def test_a_model_prepared_for_mixed_precision_exports_its_fp32_outputs(tmp_path):
    """Trainer(bf16=True) leaves the model with accelerate's autocast forward; the fingerprint must not use it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # A Trainer of an earlier test leaves accelerate's process-wide state at mixed_precision="no", which an
    # Accelerator may not change; start from a clean state (accelerate's own tests do the same).
    AcceleratorState._reset_state(reset_partial_state=True)
    model = tiny_model()
    probe = {"input_ids": torch.randint(5, 64, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    with torch.no_grad():
        fp32 = model(**probe).logits
    prepared = Accelerator(mixed_precision="bf16", cpu=True).prepare(model)
    with torch.no_grad():
        assert (prepared(**probe).logits - fp32).abs().max() > 1e-3  # the patched forward really runs in bf16
    try:
        folder = export(prepared, tiny_tokenizer(64), tmp_path / "out")  # verified at the CPU tolerance of 1e-5
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # leave no bf16 state to later tests
    manifest = json.loads((folder / "hubzoo_export.json").read_text())
    recorded = torch.tensor(manifest["probe_output_sample"])
    with torch.no_grad():
        expected = type(model).forward(model, **{k: torch.tensor(v) for k, v in manifest["probe"].items()}).logits
    assert torch.allclose(recorded, expected[..., :recorded.shape[-1]], atol=1e-6)


def test_cpu_copy_is_a_separate_model_with_the_same_outputs_and_ties():
    """Probes of a model on an accelerator run on this copy (no GPU machine here: the copy is checked on CPU)."""
    from hub_exports.manifest import cpu_copy

    model = tiny_model().eval()
    copied = cpu_copy(model)
    assert copied is not model and type(copied) is type(model)
    originals = {id(p) for p in model.parameters()}
    assert not any(id(p) in originals for p in copied.parameters())
    assert copied.get_output_embeddings().weight is copied.get_input_embeddings().weight
    probe = torch.randint(5, 64, (2, 9))
    with torch.no_grad():
        assert torch.equal(copied(input_ids=probe).logits, model(input_ids=probe).logits)
        next(copied.parameters()).add_(1.0)  # the copy owns its storage
        assert not torch.equal(copied(input_ids=probe).logits, model(input_ids=probe).logits)


def test_export_refuses_a_tokenizer_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match="do not fit vocab_size 64"):
        export(tiny_model(), tiny_tokenizer(65), tmp_path / "out")
    with pytest.raises(ValueError, match="pad_token_id"):
        export(tiny_model(pad_token_id=4), tiny_tokenizer(64), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def everything(folder):
    """Every path under `folder`, with the bytes of its files."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_export_is_atomic(exported, tmp_path, monkeypatch):
    target = Path(shutil.copytree(exported, tmp_path / "existing"))
    before = snapshot(target)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(importlib.import_module("hub_exports.exporting"), "build_model_card", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export(tiny_model(hidden_size=16), tiny_tokenizer(64), target)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"], "staging folder left behind"


def test_a_failing_verification_keeps_the_previous_export(exported, tmp_path):
    target = Path(shutil.copytree(exported, tmp_path / "existing"))
    before = snapshot(target)
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.dense.weight[0, 0] = float("nan")
    with pytest.raises(VerificationError, match="lm_head.dense.weight has non-finite values"):
        export(model, tiny_tokenizer(64), target)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


@pytest.mark.parametrize("swap", ["exchange", "renames"])
def test_a_failed_swap_puts_the_previous_export_back(exported, tmp_path, monkeypatch, swap):
    """The atomic exchange failing, or (where there is none) the second of the two renames."""
    folder_swap = importlib.import_module("hub_exports.folder_swap")
    target = Path(shutil.copytree(exported, tmp_path / "existing"))
    before = snapshot(target)
    real_rename = Path.rename

    def fail(*args):
        raise OSError("device busy")

    def rename(self, destination):
        if Path(destination) == target and self.name == target.name:  # the new export, not the one put back
            fail()
        return real_rename(self, destination)

    monkeypatch.setattr(folder_swap, "_exchange", fail if swap == "exchange" else lambda first, second: False)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="device busy"):
        export(tiny_model(), tiny_tokenizer(64), target, run_verify=False)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


@pytest.mark.slow
def test_a_kill_at_any_step_leaves_the_old_or_the_new_export(exported, tmp_path):
    """Real deaths (os._exit in a forked child, no cleanup runs) before every disk-changing step of an export that
    replaces an earlier one: the target holds the old or the new export (with no atomic exchange: once the next
    export or verify has put the old one back), and the next export leaves nothing beside it."""
    done = subprocess.run([sys.executable, "-m", "tests.export_kill_driver", str(exported), str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    for swap, kills in report.items():
        assert len(kills) > 20, f"{swap}: only {len(kills)} steps"
        states = {kill["after_recovery"] for kill in kills}
        assert states == {"old", "new"}, f"{swap}: {kills}"
        assert all(kill["left"] == ["export"] for kill in kills), f"{swap}: {kills}"
        assert any(len(kill["left_by_kill"]) > 1 for kill in kills), f"{swap}: no kill left anything to clean up"
    assert snapshot(tmp_path / "renames" / "export") == snapshot(tmp_path / "exchange" / "export")
    verify(tmp_path / "exchange" / "export")  # the new export (the old one is `exported`, verified elsewhere)
    assert {kill["after_kill"] for kill in report["exchange"]} == {"old", "new"}, report["exchange"]
    assert "missing" in {kill["after_kill"] for kill in report["renames"]}, "the fallback was not exercised"


def dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()


def test_verify_puts_back_an_export_left_between_the_two_renames(exported, tmp_path, capsys):
    """Where there is no atomic exchange, a kill between the renames leaves the old export inside the staging
    folder; verify (like the next export) puts it back instead of saying "not a directory"."""
    dead = dead_pid()
    staging = tmp_path / f"staging_existing_{dead}_0123abcd"
    shutil.copytree(exported, staging / "existing.previous")
    (staging / "hubzoo_staging.json").write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    assert cli(["verify", str(tmp_path / "existing")]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert snapshot(tmp_path / "existing") == snapshot(exported)


def test_an_export_left_aside_by_the_old_swap_is_put_back_or_removed(exported, tmp_path, capsys):
    """hubzoo 0.1.0's swap left `<target>.old-<pid>` and no target after a kill: verify puts it back; once the target
    holds an export again, the next export removes such a leftover. A folder of a live process stays."""
    dead = dead_pid()
    shutil.copytree(exported, tmp_path / f"existing.old-{dead}")
    assert cli(["verify", str(tmp_path / "existing")]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    shutil.copytree(exported, tmp_path / f"existing.old-{dead}")
    shutil.copytree(exported, tmp_path / f"existing.old-{os.getpid()}")
    export(tiny_model(), tiny_tokenizer(64), tmp_path / "existing", run_verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", f"existing.old-{os.getpid()}"]


def test_recovery_never_puts_back_a_partial_export_nor_drops_the_only_one(exported, tmp_path):
    """An `.old-<pid>` whose deletion was killed half-way is not put back as the export; an earlier export parked in
    a staging folder is kept while the target holds something that is not an export."""
    from hub_exports.folder_swap import recover_killed_exports

    dead = dead_pid()
    partial = Path(shutil.copytree(exported, tmp_path / f"existing.old-{dead}"))
    (partial / "model.safetensors").unlink()
    recover_killed_exports(tmp_path / "existing")
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name]
    shutil.rmtree(partial)
    staging = tmp_path / f"staging_existing_{dead}_0123abcd"
    shutil.copytree(exported, staging / "existing.previous")
    (staging / "hubzoo_staging.json").write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "notes.txt").write_text("mine")
    recover_killed_exports(tmp_path / "existing")
    assert snapshot(staging / "existing.previous") == snapshot(exported)


def test_the_next_export_removes_only_staging_folders_of_dead_exports(tmp_path):
    dead = dead_pid()

    def staging(name, marker_pid=None, host=socket.gethostname(), files=("file.txt",)):
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_text("something")
        if marker_pid is not None:
            (tmp_path / name / "hubzoo_staging.json").write_text(json.dumps({"pid": marker_pid, "host": host}))
        return name

    staging(f"staging_out_{dead}_0123abcd", marker_pid=int(dead))  # ours, killed
    staging(f"staging_out_{dead}_4567abcd", files=())  # ours, killed before its marker was written
    kept = [staging(f"staging_out_{os.getpid()}_89abcdef", marker_pid=os.getpid()),  # a live export (this process)
            staging(f"staging_out_{dead}_cdef0123"),  # our name but no marker: could be anyone's
            staging(f"staging_out_{dead}_01234567", marker_pid=int(dead), host="elsewhere"),  # pid of another host
            staging("staging_notes")]
    export(tiny_model(), tiny_tokenizer(64), tmp_path / "out", run_verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *kept])


def test_export_refuses_an_out_dir_that_is_not_an_export(exported, tmp_path):
    """Only an empty folder or an earlier export is replaced; anything else is refused before any work."""
    own = tmp_path / "my_files"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    (run / "checkpoint-10").mkdir(parents=True)
    (run / "trainer_log.jsonl").write_text("{}")
    extended = Path(shutil.copytree(exported, tmp_path / "extended"))
    (extended / "blimp.json").write_text("{}")
    file = tmp_path / "file"
    file.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(shutil.copytree(exported, tmp_path / "linked"))
    contents = everything(tmp_path)
    for out, reason in ((own, "neither empty nor a hubzoo export"), (run, "neither empty nor a hubzoo export"),
                        (extended, r"also holds \['blimp.json'\]"), (file, "is a file"), (link, "symbolic link")):
        with pytest.raises(ValueError, match=f"{out}.*{reason}"):
            export(tiny_model(), tiny_tokenizer(64), out, run_verify=False)
    assert everything(tmp_path) == contents


def test_export_replaces_an_empty_folder_and_an_earlier_export(exported, tmp_path):
    (tmp_path / "empty").mkdir()
    export(tiny_model(), tiny_tokenizer(64), tmp_path / "empty", run_verify=False)
    earlier = Path(shutil.copytree(exported, tmp_path / "earlier"))
    export(tiny_model(hidden_size=16), tiny_tokenizer(64), earlier, run_verify=False)
    assert json.loads((earlier / "config.json").read_text())["hidden_size"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "empty"]


def test_check_export_target_refuses_a_folder_holding_a_source(exported, tmp_path):
    earlier = Path(shutil.copytree(exported, tmp_path / "earlier"))
    for source in (earlier, earlier / "model.safetensors"):
        with pytest.raises(ValueError, match=f"{earlier} holds the source {source}"):
            check_export_target(earlier, sources=[source])
    assert check_export_target(tmp_path / "new", sources=[earlier]) == tmp_path / "new"


def test_cli_refuses_an_out_dir_it_may_not_replace_before_any_work(tmp_path, capsys):
    """`export --out` over a user's folder and `convert` into its own source: exit 1, one message, nothing lost
    (the sources are not even valid checkpoints: the refusal comes before they are read)."""
    own = tmp_path / "my_files"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    original = tmp_path / "orig"
    original.mkdir()
    (original / "pytorch_model.bin").write_bytes(b"the only copy")
    contents = everything(tmp_path)
    assert cli(["export", "--model", str(original), "--out", str(own)]) == 1
    assert capsys.readouterr().err == f"Not exported: {own} is neither empty nor a hubzoo export (no " \
        "readable hubzoo_export.json): refusing to replace it; choose an empty or new output folder\n"
    assert cli(["convert", "ltg_bert", str(original), str(original), "--position-qk-split", "chunk_first"]) == 1
    assert capsys.readouterr().err.startswith(f"Not exported: {original} holds the source {original}")
    assert everything(tmp_path) == contents


def test_export_refuses_a_checkpoint_saved_by_other_code(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ckpt")
    code = tmp_path / "ckpt" / "modeling_ltg_bert.py"
    code.write_text(code.read_text() + "\n# patched\n")
    with pytest.raises(ValueError, match="saved by other modeling code"):
        load_checkpoint(tmp_path / "ckpt")


def test_push_uploads_every_file_to_the_hub(exported, tmp_path):
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE")  # the loopback Hub is the only "network" here
    with LoopbackHub(tmp_path / "hub") as hub:
        env["HF_ENDPOINT"] = hub.url
        done = subprocess.run([sys.executable, "-m", "hub_exports", "push", str(exported), "hubzoo/ltg-bert-tiny",
                               "--token", "hf_test"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        assert ("POST", "/api/repos/create") in hub.requests
        assert ("POST", "/api/models/hubzoo/ltg-bert-tiny/commit/main") in hub.requests
    arrived = tmp_path / "hub" / "hubzoo" / "ltg-bert-tiny"
    assert sorted(p.name for p in arrived.iterdir()) == sorted(p.name for p in exported.iterdir())
    for path in exported.iterdir():
        assert (arrived / path.name).read_bytes() == path.read_bytes(), path.name


def test_push_refuses_a_broken_export(broken, tmp_path, capsys):
    (broken / "modeling_ltg_bert.py").write_text("# emptied\n")
    with LoopbackHub(tmp_path / "hub") as hub:
        assert cli(["push", str(broken), "hubzoo/broken", "--endpoint", hub.url, "--token", "hf_test"]) == 1
        assert hub.requests == []
    assert "Not pushed" in capsys.readouterr().err


@pytest.mark.slow
def test_export_loads_identically_on_transformers_4_57(exported):
    """A second environment (transformers 4.57.6, cached under .venv/) loads the export warning-free with identical
    logits: the whole fresh-process verification runs under that interpreter."""
    from tests.compat_env import compat_python

    checks = {check.name: check for check in verify(exported, python=str(compat_python("4.57.6")))}
    assert "transformers 4.57.6" in checks["fresh-process load"].detail
    assert checks["outputs"].ok


def test_exporting_twice_with_one_tokenizer_ships_the_same_tokenizer(tmp_path):
    """The manifest's probe pads a batch; a fast tokenizer keeps padding switched on after such a call, so the
    second export of the same tokenizer object (each checkpoint of a run) shipped another tokenizer.json."""
    model, tokenizer = tiny_model(), tiny_tokenizer(64)
    first = export(model, tokenizer, tmp_path / "first", run_verify=False)
    second = export(model, tokenizer, tmp_path / "second", run_verify=False)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
