"""`python -m eval_suites generate` on exported MDLM and BD3-LM folders: infilling templates and prompt continuation
keep the given words, fill exactly the asked spans, and bad requests are refused before any sampling."""

import json

import pytest
import torch

from eval_suites.__main__ import main
from eval_suites.generation import infill_inputs
from hub_exports import export
from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
from tests.modeling_common import tiny_tokenizer

# tiny_tokenizer(40): [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then the words w5 ... w39
SIZES = dict(vocab_size=40, mask_token_id=4, pad_token_id=0, bos_token_id=2, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16, dropout=0.0,
             zero_init_modulation=False)


@pytest.fixture(scope="module", params=["mdlm", "bd3lm"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "mdlm":
        model = MdlmForMaskedDiffusionLM(MdlmConfig(**SIZES))
    else:
        model = Bd3lmForMaskedDiffusionLM(Bd3lmConfig(**SIZES, block_size=4))
    return export(model.eval(), tiny_tokenizer(40), tmp_path_factory.mktemp("generate") / request.param)


def generated_words(capsys):
    blocks = capsys.readouterr().out.split("--- sample ")[1:]
    return [block.split("\n", 1)[1].split() for block in blocks]


@pytest.mark.parametrize("sampler", ["ddpm_cache", "confidence", "first_hitting"])
def test_infill_keeps_the_text_and_fills_each_span(exported, capsys, tmp_path, sampler):
    output = tmp_path / "samples.json"
    assert main(["generate", "--model", str(exported), "--infill", "w10 [MASK]{3} w20 w21 [MASK]", "--num-samples",
                 "2", "--sampler", sampler, "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["sampler"] == sampler and [text.split() for text in record["samples"]] == generated_words(capsys)
    ids = torch.tensor(record["sample_ids"])  # a random model may draw [CLS] or [SEP], which the text drops
    assert ids.shape == (2, 8) and not (ids == 4).any()
    assert (ids[:, [0, 1, 5, 6]] == torch.tensor([2, 10, 20, 21])).all()


def test_a_prompt_is_continued_by_max_new_tokens(exported, capsys, tmp_path):
    assert main(["generate", "--model", str(exported), "--prompt", "w10 w11", "--max-new-tokens", "5",
                 "--steps", "4", "--seed", "3", "--output", str(tmp_path / "out.json")]) == 0
    (words,) = generated_words(capsys)
    assert words[:2] == ["w10", "w11"]
    (ids,) = json.loads((tmp_path / "out.json").read_text())["sample_ids"]
    assert len(ids) == 8 and ids[:3] == [2, 10, 11] and 4 not in ids


def test_the_template_syntax():
    tokenizer, config = tiny_tokenizer(40), MdlmConfig(**SIZES)
    ids = infill_inputs("w10 [MASK]{2} w11 [MASK] w12 [MASK]", tokenizer, config)
    assert ids.tolist() == [[2, 10, 4, 4, 11, 4, 12, 4]]  # [CLS] first; the tokenizer's own token reads the same
    with pytest.raises(ValueError, match="no \\[MASK\\] span"):
        infill_inputs("w10 w11", tokenizer, config)
    with pytest.raises(ValueError, match="asks for no token"):
        infill_inputs("w10 [MASK]{0}", tokenizer, config)


def test_bad_requests_are_refused(exported):
    with pytest.raises(ValueError, match="max_new_tokens"):
        main(["generate", "--model", str(exported), "--prompt", "w10"])
    with pytest.raises(ValueError, match="its own spans"):
        main(["generate", "--model", str(exported), "--infill", "w10 [MASK]", "--max-new-tokens", "2"])
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(exported), "--prompt", "w10", "--infill", "w10 [MASK]"])


def test_the_model_cards_usage_code_runs_on_the_export(exported, capsys):
    """The card's snippet, as a user copies it (the repo id pointed at the folder, and 8 new tokens for the tiny
    model's 16 positions): unconditional and prompted samples, printed without the mask."""
    card = (exported / "README.md").read_text()
    code = card.split("## Usage", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "max_new_tokens=32" in code
    exec(code.replace("path/to/this/folder", str(exported)).replace("max_new_tokens=32", "max_new_tokens=8"), {})
    printed = capsys.readouterr().out
    assert "[MASK]" not in printed and printed.startswith("['")
