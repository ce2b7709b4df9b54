"""Train a Backpack LM — or its baseline, transformers' own `GPT2LMHeadModel` of the same width, depth and heads, with
the same script, data, tokenizer and optimizer (`--architecture gpt2`) — as a causal LM on parallel English–French
text, then report held-out perplexity, translation by prompting (corpus BLEU and chrF), word similarity and, for the
Backpack, sense figures.

    accelerate launch trainers/run_backpack.py trainers/configs/backpack_enfr_small.yaml
    accelerate launch trainers/run_backpack.py trainers/configs/backpack_enfr_small.yaml --architecture gpt2 \
        --output_dir outputs/gpt2_enfr_small

Each training example is one pair, `<en> english <fr> french<EOS>` (the tags are special tokens), in a row of its own
(padding never counted). The tokenizer is a BPE trained jointly on both languages of the training pairs (or
`tokenizer_name`, e.g. xlm-roberta-base when the Hub is reachable, with the tags added). Outputs in `output_dir`:
`export/` (the Backpack as a verified hubzoo export; the baseline as a plain transformers folder), `results.json`,
`results.md`, and for the Backpack `senses.png` and `contextualization.png`.
"""

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from datasets import Dataset
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from eval_suites import sense_analysis, translation, word_similarity
from hub_exports import CardInfo, Metric, export
from hub_exports.exporting import add_results_to_card
from modeling.backpack import BackpackConfig, BackpackForCausalLM
from trainers.arguments import MuonTrainingArguments, parse_args
from trainers.callbacks import ExportCheckpointCallback, TimeBudgetCallback, finish_on_main_process, plot_loss_curve
from trainers.clm_trainer import CausalLMTrainer
from trainers.collators import CausalLMCollator
from trainers.preflight import check_before_training, check_overrides
from trainers.tokenization import document_separator, train_tokenizer

logger = logging.getLogger(__name__)
REQUIRED_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_senses")


@dataclass
class ParallelArguments:
    source_train: List[str] = field(metadata={"help": "English training files (line-aligned with target_train)."})
    target_train: List[str] = field(metadata={"help": "French training files."})
    source_validation: str = field(metadata={"help": "English held-out file (perplexity)."})
    target_validation: str = field(metadata={"help": "French held-out file."})
    source_test: str = field(metadata={"help": "English test file (translation)."})
    target_test: str = field(metadata={"help": "French references."})
    architecture: str = field(default="backpack", metadata={"choices": ["backpack", "gpt2"]})
    config_overrides: dict = field(default_factory=dict, metadata={"help": "hidden_size, num_hidden_layers, "
                                                                           "num_attention_heads, num_senses, ..."})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Hub id or folder (default: train a BPE)"})
    train_tokenizer_vocab_size: int = field(default=8000)
    source_tag: str = field(default="<en>")
    target_tag: str = field(default="<fr>")
    max_seq_length: int = field(default=96)
    max_train_pairs: Optional[int] = field(default=None)
    max_eval_pairs: Optional[int] = field(default=None)
    translation_pairs: Optional[int] = field(default=None, metadata={"help": "Test pairs translated (default all)."})
    num_beams: List[int] = field(default_factory=lambda: [1, 4])
    word_similarity_dir: Optional[str] = field(default=None, metadata={"help": "../shared/data, for the "
                                                                                "word-similarity tables"})
    sense_words: List[str] = field(default_factory=lambda: ["bank", "light", "play", "homme", "rouge"])


def read_pairs(sources, targets, limit=None):
    english, french = [], []
    for source, target in zip(sources, targets):
        pairs_en, pairs_fr = translation.load_parallel(source, target)
        english += pairs_en
        french += pairs_fr
    return (english[:limit], french[:limit]) if limit is not None else (english, french)


def obtain_tokenizer(args: ParallelArguments, training_args, english, french):
    """The named tokenizer, or a byte-level BPE trained on both languages by the main process (lossless: the
    translations it decodes are scored as written); the tags added as special tokens; [SEP] (or the tokenizer's EOS)
    ends every pair."""
    if args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    else:
        saved = Path(training_args.output_dir) / "tokenizer"
        with training_args.main_process_first(desc="train the tokenizer"):
            if training_args.process_index == 0:
                train_tokenizer(english + french, args.train_tokenizer_vocab_size,
                                kind="byte_level_bpe").save_pretrained(saved)
            tokenizer = AutoTokenizer.from_pretrained(saved)
    tokenizer.add_special_tokens({"additional_special_tokens": [args.source_tag, args.target_tag]})
    document_separator(tokenizer)
    return tokenizer


def encode_pairs(tokenizer, args: ParallelArguments, english, french) -> Dataset:
    texts = [f"{translation.prompt(en, args.source_tag, args.target_tag)} {fr}" for en, fr in zip(english, french)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = [row[:args.max_seq_length - 1] + [tokenizer.eos_token_id] for row in ids]
    return Dataset.from_dict({"input_ids": rows})


def check_model_arguments(args: ParallelArguments) -> None:
    # The GPT-2 baseline reads the Backpack's field names too (see build_model).
    check_overrides(args.config_overrides, BackpackConfig, required=REQUIRED_FIELDS,
                    set_by_run=("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id",
                                "max_position_embeddings"))


def build_model(args: ParallelArguments, tokenizer):
    check_model_arguments(args)
    overrides = dict(args.config_overrides)
    # Rows start with the language tag, not a BOS: the config says so (Trainer would otherwise "align" it, warning).
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    if args.architecture == "backpack":
        return BackpackForCausalLM(BackpackConfig(**overrides, **ids, max_position_embeddings=args.max_seq_length))
    # The baseline: GPT-2 with the Backpack's contextualizer sizes; its senses' extra parameters are the difference.
    dropout = overrides.get("dropout", 0.1)
    return GPT2LMHeadModel(GPT2Config(n_embd=overrides["hidden_size"], n_layer=overrides["num_hidden_layers"],
                                      n_head=overrides["num_attention_heads"], n_positions=args.max_seq_length,
                                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **ids))


def evaluate_model(model, tokenizer, args: ParallelArguments, training_args, output: Path) -> dict:
    """Translation, word similarity and (Backpack) sense figures of the trained model."""
    model.eval()
    sources, references = translation.load_parallel(args.source_test, args.target_test, limit=args.translation_pairs)
    report = {"translation": translation.evaluate_translation(
        model, tokenizer, sources, references, num_beams=tuple(args.num_beams), source_tag=args.source_tag,
        target_tag=args.target_tag, max_new_tokens=args.max_seq_length // 2,
        batch_size=training_args.per_device_eval_batch_size)}
    # Words are looked up as they occur inside a sentence, after a space (byte-level pieces: " bank", not "bank").
    if args.word_similarity_dir:
        report["word_similarity"] = {"embeddings": word_similarity.evaluate_datasets(
            model, tokenizer, args.word_similarity_dir, prefix_space=True)}
        if isinstance(model, BackpackForCausalLM):
            report["word_similarity"]["senses"] = word_similarity.evaluate_datasets(
                model, tokenizer, args.word_similarity_dir, source="senses", prefix_space=True)
    if isinstance(model, BackpackForCausalLM):
        words = [sense_analysis.top_tokens_per_sense(model, tokenizer, word, prefix_space=True)
                 for word in args.sense_words]
        sense_analysis.plot_sense_table(words, output / "senses.png")
        example = translation.prompt(sources[0], args.source_tag, args.target_tag) + " " + references[0]
        tokens, alpha = sense_analysis.contextualization(model, tokenizer, example)
        sense_analysis.plot_contextualization(tokens, alpha, output / "contextualization.png")
        report["senses"] = words
    return report


def markdown(report: dict, args: ParallelArguments) -> str:
    text = [f"# {args.architecture} on English–French", "",
            f"Held-out perplexity **{report['perplexity']:.2f}** ({report['eval_rows']} pairs).", "",
            translation.markdown_report(report["translation"], title="Translation (en→fr)")]
    for source, results in report.get("word_similarity", {}).items():
        text.append(word_similarity.markdown_report(results, title=f"Word similarity ({source})"))
    return "\n".join(text)


def main(args: ParallelArguments, training_args: MuonTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_model_arguments(args)
    set_seed(training_args.seed)
    english, french = read_pairs(args.source_train, args.target_train, args.max_train_pairs)
    tokenizer = obtain_tokenizer(args, training_args, english, french)
    valid_en, valid_fr = translation.load_parallel(args.source_validation, args.target_validation,
                                                   limit=args.max_eval_pairs)
    train_set, eval_set = encode_pairs(tokenizer, args, english, french), encode_pairs(tokenizer, args, valid_en,
                                                                                        valid_fr)
    model = build_model(args, tokenizer)
    logger.info("%s: %s parameters, %d train / %d eval pairs", type(model).__name__, f"{model.num_parameters():,}",
                len(train_set), len(eval_set))
    card = CardInfo(description=f"A Backpack LM ({model.num_parameters():,} parameters) trained by hubzoo on "
                                "English–French pairs.",
                    training_data=f"{len(train_set):,} pairs: {', '.join(args.source_train)} (+ French)",
                    training_procedure=f"Causal LM on `{args.source_tag} en {args.target_tag} fr` rows, "
                                       f"{training_args.max_steps} steps.")
    exported = isinstance(model, BackpackForCausalLM)  # the GPT-2 baseline is saved as a plain transformers folder
    check_before_training(training_args.output_dir, [args.source_test, args.target_test, args.word_similarity_dir],
                          model, tokenizer, card if exported else None)
    trainer = CausalLMTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                              processing_class=tokenizer,
                              data_collator=CausalLMCollator(tokenizer.pad_token_id, len(tokenizer)))
    if training_args.export_checkpoints and exported:
        trainer.add_callback(ExportCheckpointCallback(tokenizer, card))
    if training_args.max_train_minutes:
        trainer.add_callback(TimeBudgetCallback(training_args.max_train_minutes))
    train_output = trainer.train()
    metrics = trainer.evaluate()

    def export_and_report():
        output = Path(training_args.output_dir)
        plot_loss_curve(trainer.state.log_history, output / "loss_curve.png", ylabel="cross-entropy (nats per token)")
        report = evaluate_model(model, tokenizer, args, training_args, output)
        report.update(architecture=args.architecture, parameters=model.num_parameters(), eval_loss=metrics["eval_loss"],
                      perplexity=math.exp(metrics["eval_loss"]), eval_rows=len(eval_set),
                      train_steps=trainer.state.global_step, train_runtime_s=train_output.metrics.get("train_runtime"))
        (output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (output / "results.md").write_text(markdown(report, args))
        greedy = report["translation"]["greedy"]
        if exported:
            folder = export(model, tokenizer, output / "export", card=card)  # verified
            add_results_to_card(folder, [Metric("translation", Path(args.source_test).name, "local", "bleu",
                                                round(greedy["bleu"], 2))], markdown(report, args))
        else:
            model.save_pretrained(output / "export")
            tokenizer.save_pretrained(output / "export")
        print(f"{args.architecture}: held-out perplexity {report['perplexity']:.2f}; translation (greedy) BLEU "
              f"{greedy['bleu']:.2f}, chrF {greedy['chrf']:.2f} over {greedy['num_segments']} test pairs")

    finish_on_main_process(trainer, export_and_report)


def parse(argv=None):
    return parse_args((ParallelArguments, MuonTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
