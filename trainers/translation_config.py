"""A causal LM trained on English–French pairs and scored by translation (`trainers/run_backpack.py`): the run's
arguments and the builders the script composes: the pairs, a tokenizer shared by both languages with the tags, the
rows, the model (a Backpack LM or its GPT-2 baseline of the same width, depth and heads), its card, and the end-of-run
evaluation (translation, word similarity and, for the Backpack, sense figures)."""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from datasets import Dataset
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from eval_suites import sense_analysis, translation, word_similarity
from hub_exports import CardInfo, Metric, load_tokenizer
from hub_exports.adapter_files import is_peft_model
from modeling.backpack import BackpackConfig, BackpackForCausalLM
from trainers.adapters import check_peft_base, with_peft
from trainers.finishing import RunReport
from trainers.preflight import check_overrides, load_init_from
from trainers.tokenization import document_separator, train_tokenizer

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
    init_from: Optional[str] = field(default=None, metadata={"help": "Continue this Backpack export (loaded strictly, "
                                                                     "with its tokenizer); `peft` trains a LoRA "
                                                                     "adapter of it"})
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
    if args.tokenizer_name or args.init_from:  # a continued model keeps the tokenizer it was saved with
        tokenizer = load_tokenizer(args.tokenizer_name or args.init_from)
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


def held_out_rows(tokenizer, args: ParallelArguments) -> Dataset:
    """The validation pairs (perplexity), encoded as the training pairs are."""
    english, french = translation.load_parallel(args.source_validation, args.target_validation,
                                                limit=args.max_eval_pairs)
    return encode_pairs(tokenizer, args, english, french)


def check_model_arguments(args: ParallelArguments, peft: Optional[dict] = None,
                          output_dir: Optional[str] = None) -> None:
    check_peft_base(peft or {}, args.init_from, output_dir=output_dir, tokenizer_name=args.tokenizer_name)
    if args.init_from:
        if args.config_overrides or MODEL_BUILDERS[args.architecture] is not _backpack:
            raise ValueError("init_from continues a Backpack export as it was saved: no config_overrides, "
                             "architecture backpack (the GPT-2 baseline trains from scratch)")
        return
    # The GPT-2 baseline reads the Backpack's field names too (see build_model).
    check_overrides(args.config_overrides, BackpackConfig, required=REQUIRED_FIELDS,
                    set_by_run=("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id",
                                "max_position_embeddings"))


def build_model(args: ParallelArguments, tokenizer, peft: Optional[dict] = None):
    """A new model of `architecture`, or the Backpack export `init_from` loaded strictly (with `peft`: wrapped for
    LoRA training)."""
    check_model_arguments(args, peft)
    if args.init_from:
        model = load_init_from(args.init_from, BackpackForCausalLM, tokenizer, args.max_seq_length)
        return with_peft(model, peft or {}, args.init_from)
    # Rows start with the language tag, not a BOS: the config says so (Trainer would otherwise "align" it, warning).
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    return MODEL_BUILDERS[args.architecture](dict(args.config_overrides), ids, args.max_seq_length)


def _backpack(overrides: dict, ids: dict, max_seq_length: int):
    return BackpackForCausalLM(BackpackConfig(**overrides, **ids, max_position_embeddings=max_seq_length))


def _gpt2_baseline(overrides: dict, ids: dict, max_seq_length: int):
    """GPT-2 with the Backpack's contextualizer sizes; its senses' extra parameters are the difference."""
    dropout = overrides.get("dropout", 0.1)
    return GPT2LMHeadModel(GPT2Config(n_embd=overrides["hidden_size"], n_layer=overrides["num_hidden_layers"],
                                      n_head=overrides["num_attention_heads"], n_positions=max_seq_length,
                                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **ids))


MODEL_BUILDERS = {"backpack": _backpack, "gpt2": _gpt2_baseline}  # --architecture


def is_exported(model) -> bool:
    """The Backpack becomes a verified hubzoo export; the GPT-2 baseline is saved as a plain transformers folder."""
    return isinstance(model.get_base_model() if is_peft_model(model) else model, BackpackForCausalLM)


def save_plain(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def model_card(model, args: ParallelArguments, training_args, num_pairs: int) -> CardInfo:
    return CardInfo(description=f"A Backpack LM ({model.num_parameters():,} parameters) trained by hubzoo on "
                                "English–French pairs.",
                    training_data=f"{num_pairs:,} pairs: {', '.join(args.source_train)} (+ French)",
                    training_procedure=f"Causal LM on `{args.source_tag} en {args.target_tag} fr` rows, "
                                       f"{training_args.max_steps} steps.")


def evaluate_model(model, tokenizer, args: ParallelArguments, training_args, output: Path) -> dict:
    """Translation, word similarity and (Backpack) sense figures of the trained model."""
    if is_peft_model(model):
        model = model.get_base_model()  # its layers carry the adapter: the adapted model, as its own class
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


def evaluate_run(model, tokenizer, args: ParallelArguments, training_args, output: Path, eval_loss: float,
                 eval_rows: int, trained: dict) -> RunReport:
    """`evaluate_model` of the trained model in memory (figures into `output`) with the held-out perplexity
    (`eval_loss` over `eval_rows` pairs, measured by the trainer) and `trained` (steps, runtime): results.json,
    results.md, the card's BLEU and the printed summary."""
    report = evaluate_model(model, tokenizer, args, training_args, output)
    report.update(architecture=args.architecture, parameters=model.num_parameters(), eval_loss=eval_loss,
                  perplexity=math.exp(eval_loss), eval_rows=eval_rows, **trained)
    greedy = report["translation"]["greedy"]
    text = markdown(report, args)
    return RunReport(
        results=report, files={"results.md": text}, card_section=text,
        card_metrics=[Metric("translation", Path(args.source_test).name, "local", "bleu", round(greedy["bleu"], 2))],
        lines=[f"{args.architecture}: held-out perplexity {report['perplexity']:.2f}; translation (greedy) BLEU "
               f"{greedy['bleu']:.2f}, chrF {greedy['chrf']:.2f} over {greedy['num_segments']} test pairs"])
