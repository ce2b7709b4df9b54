"""python -m eval_suites blimp --model <export folder or Hub id> --data <dir of BLiMP-format jsonl[.gz]> --output DIR
python -m eval_suites classification --model <export folder> --data <tsv/csv/json/jsonl> --labels "0=neg,1=pos" ...

python -m eval_suites translation --model <causal LM export> --source test.en --target test.fr --num-beams 1 4
python -m eval_suites word-similarity --model <export> --data-dir ../shared/data [--source senses]
python -m eval_suites senses --model <Backpack export> --words bank light --sentence "..." --output figures/
python -m eval_suites generate --model <MDLM/BD3-LM export> --infill "The [MASK]{3} sat on the mat." (or --prompt)
python -m eval_suites gen-ppl --model <MDLM/BD3-LM export> --scorer-model gpt2-large --num-samples 64 --length 1024 \
    --steps 1000 --output gen_ppl.json [--sampler ddpm] [--top-p 0.9] [--seed 0] [--save-samples samples.jsonl]
python -m eval_suites gen-ppl --samples samples.jsonl --scorer-model gpt2-large --output gen_ppl.json

blimp writes `blimp.json` (all numbers) and `blimp.md` (tables) to --output, prints the headline, and with
--write-card adds the result to the model card of a local export. classification writes `classification.json` and
`classification.md`, prints the headline, and exits with status 3 when the classifier collapsed onto one class.
translation and word-similarity write `<suite>.json` and `<suite>.md`; senses writes `senses.json`, `senses.png` and
`contextualization.png`. gen-ppl writes one JSON file (--output) and prints the headline.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from eval_suites import classification
from eval_suites.blimp import evaluate_blimp, load_pairs, markdown_report
from eval_suites.generation import add_generate_parser
from eval_suites.scoring import SCORERS
from modeling import diffusion_policy

COLLAPSE_EXIT_CODE = 3  # distinct from 1 (a crash) and 2 (bad arguments), so scripts can tell a collapse apart


def load_model(name: str, scorer: str):
    auto_class = AutoModelForCausalLM if scorer == "causal" else AutoModelForMaskedLM
    model = auto_class.from_pretrained(name, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(name, trust_remote_code=True)


def run_blimp(args) -> int:
    try:  # the data is checked before the model is loaded
        pairs = load_pairs(args.data, limit_per_paradigm=args.limit_per_paradigm)
    except ValueError as error:
        print(f"BLiMP data refused: {error}", file=sys.stderr)
        return 1
    model, tokenizer = load_model(args.model, args.scorer)
    if args.device:
        model.to(args.device)
    result = evaluate_blimp(model, tokenizer, pairs, scorer=args.scorer, token_budget=args.token_budget)
    result.update(model=args.model, data=str(args.data))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "blimp.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown_report(result, title=f"BLiMP ({Path(args.data).name})")
    (output / "blimp.md").write_text(report)
    print(f"BLiMP accuracy {result['accuracy']:.4f} over {result['num_paradigms']} paradigms, "
          f"{result['num_pairs']} pairs, UNK rate {result['unk_rate']:.4f} -> {output}/blimp.json")
    if args.write_card:
        from hub_exports import Metric, add_results_to_card

        add_results_to_card(args.model, [Metric("text-scoring", Path(args.data).name, "blimp", "accuracy",
                                                round(result["accuracy"], 4), metric_name=f"BLiMP ({args.scorer})")],
                            report)
    return 0


def load_likelihood_model(name: str):
    """Diffusion exports (MDLM, BD3-LM) answer to AutoModelForMaskedLM, everything else is a causal LM."""
    config = AutoConfig.from_pretrained(name, trust_remote_code=True)
    auto_class = AutoModelForMaskedLM if diffusion_policy(config) is not None else AutoModelForCausalLM
    return auto_class.from_pretrained(name, trust_remote_code=True).eval()


def load_tokenizer(folders):
    """The one tokenizer of `folders`; per-class models must share it, or their scores compare different texts."""
    tokenizers = [AutoTokenizer.from_pretrained(folder, trust_remote_code=True) for folder in folders]
    for folder, tokenizer in zip(folders[1:], tokenizers[1:]):
        if tokenizer.get_vocab() != tokenizers[0].get_vocab():
            raise ValueError(f"{folder} has another tokenizer than {folders[0]}: per-class models must share one")
    return tokenizers[0]


def parse_model_per_class(entries, labels: dict) -> dict:
    """['0=dir', 'positive=dir2'] -> {class id: folder}; a class is named by its raw label value or its name."""
    class_of = {key: c for c, key in enumerate(labels)}
    class_of.update({name: c for c, name in enumerate(labels.values())})
    folders = {}
    for entry in entries:
        label, sep, folder = entry.partition("=")
        if not sep or label not in class_of:
            raise ValueError(f"--model-per-class {entry!r}: expected label=folder with a label among {list(class_of)}")
        folders[class_of[label]] = folder
    if set(folders) != set(range(len(labels))):
        raise ValueError(f"--model-per-class needs one model for every class ({list(labels.values())}), got "
                         f"{[list(labels.values())[c] for c in sorted(folders)]}")
    return folders


def parse_priors(value: str, args, labels: dict):
    """'uniform', a data file (its class frequencies) or 'value=weight,...' pairs."""
    if value == "uniform":
        return None
    if Path(value).is_file():
        _, train_labels = classification.load_examples(value, args.text_column, args.label_column, list(labels))
        return [train_labels.count(c) for c in range(len(labels))]
    weights = {key: float(weight) for key, weight in classification.parse_label_spec(value).items()}
    if set(weights) != set(labels):
        raise ValueError(f"--priors {value!r} must give a weight for each label value {list(labels)}")
    return [weights[key] for key in labels]


def run_classification(args) -> int:
    labels = classification.parse_label_spec(args.labels)  # raw value -> name, in class-id order
    names = list(labels.values())
    if args.model_per_class:
        folders = parse_model_per_class(args.model_per_class, labels)
        models = {c: load_likelihood_model(folder) for c, folder in folders.items()}
        tokenizer = load_tokenizer([folders[c] for c in sorted(folders)])
        to_place = list(models.values())
    else:
        models, tokenizer = load_likelihood_model(args.model), load_tokenizer([args.model])
        to_place = [models]
    if args.device:
        for model in to_place:
            model.to(args.device)
    texts, references = classification.load_examples(args.data, args.text_column, args.label_column, list(labels),
                                                     limit=args.limit)
    classifier = classification.GenerativeClassifier(
        models, tokenizer, dict(enumerate(names)), template=args.template,
        priors=parse_priors(args.priors, args, labels), num_samples=args.num_samples, seed=args.seed,
        token_budget=args.token_budget, truncate=args.truncate)
    result = classification.evaluate_classification(classifier, texts, references,
                                                    collapse_margin=args.collapse_margin)
    result.update(model=args.model, data=str(args.data), limit=args.limit,
                  models_per_class={names[c]: folder for c, folder in sorted(folders.items())}
                  if args.model_per_class else None)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "classification.json").write_text(json.dumps(result, indent=2) + "\n")
    report = classification.markdown_report(result, title=f"Generative classification ({Path(args.data).name})")
    (output / "classification.md").write_text(report)
    print(f"Classification accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, majority baseline "
          f"{result['majority_baseline_accuracy']:.4f} over {result['num_items']} items; collapsed: "
          f"{'YES' if result['collapsed'] else 'no'} -> {output}/classification.json")
    if result["collapsed"]:
        print(f"COLLAPSED: {result['collapse_reason']}", file=sys.stderr)
        return COLLAPSE_EXIT_CODE
    return 0


def add_classification_parser(commands) -> None:
    parser = commands.add_parser("classification", help="generative classification: argmax_y log prior(y) + "
                                                        "log p(text | y)")
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", help="export folder (or Hub id) of one label-conditioned model")
    models.add_argument("--model-per-class", action="append", metavar="LABEL=FOLDER",
                        help="one model per class (repeat per class); LABEL is a raw label value or its name")
    parser.add_argument("--data", required=True, help="a .tsv, .csv, .json or .jsonl file of labelled texts")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--labels", required=True,
                        help="raw label value=class name pairs in class-id order, e.g. '0=negative,1=positive'; the "
                             "names are the verbalizers put into --template")
    parser.add_argument("--template", default=classification.DEFAULT_TEMPLATE,
                        help="prompt naming the class (label-conditioned mode), with a {label} field")
    parser.add_argument("--priors", default="uniform",
                        help="'uniform', a data file with the same columns (its class frequencies, e.g. the train "
                             "split) or 'value=weight,...'")
    parser.add_argument("--num-samples", type=int, default=32, help="Monte Carlo draws (diffusion models)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared noise table (diffusion models)")
    parser.add_argument("--token-budget", type=int, default=16384, help="tokens per forward pass")
    parser.add_argument("--limit", type=int, help="classify only the first N examples")
    parser.add_argument("--truncate", action="store_true",
                        help="cut texts too long for the model to fit (counted in the report) instead of failing")
    parser.add_argument("--collapse-margin", type=float, default=0.25,
                        help="predicted share minus gold share of a class that counts as collapse")
    parser.add_argument("--device", help="e.g. cuda; default: where the model loads (CPU)")
    parser.add_argument("--output", default="classification_results")
    parser.set_defaults(run=run_classification)


def load_causal_lm(args):
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
    if args.device:
        model.to(args.device)
    return model, AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)


def write_report(output, name: str, result: dict, report: str) -> Path:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (output / f"{name}.md").write_text(report)
    return output


def run_translation(args) -> int:
    from eval_suites import translation

    model, tokenizer = load_causal_lm(args)
    sources, references = translation.load_parallel(args.source, args.target, limit=args.limit)
    result = translation.evaluate_translation(model, tokenizer, sources, references, num_beams=tuple(args.num_beams),
                                              source_tag=args.source_tag, target_tag=args.target_tag,
                                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    result.update(model=args.model, source=str(args.source), target=str(args.target))
    output = write_report(args.output, "translation", result,
                          translation.markdown_report(result, title=f"Translation ({Path(args.source).name})"))
    for name, scores in result.items():
        if isinstance(scores, dict):
            print(f"{name}: BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}, exact {scores['exact_match']:.4f} "
                  f"over {scores['num_segments']} segments -> {output}/translation.json")
    return 0


def run_word_similarity(args) -> int:
    from eval_suites import word_similarity

    model, tokenizer = load_causal_lm(args)
    results = word_similarity.evaluate_datasets(model, tokenizer, args.data_dir, names=args.datasets,
                                                source=args.source, multi_token=args.multi_token,
                                                prefix_space=args.prefix_space)
    output = write_report(args.output, "word_similarity", results, word_similarity.markdown_report(results))
    for name, result in results.items():
        rho = "n/a" if result["spearman"] is None else f"{result['spearman']:.3f}"
        print(f"{name}: Spearman {rho} ({result['num_scored']}/{result['num_pairs']} pairs) -> {output}")
    return 0


def run_senses(args) -> int:
    from eval_suites import sense_analysis

    model, tokenizer = load_causal_lm(args)
    reports = [sense_analysis.top_tokens_per_sense(model, tokenizer, word, count=args.count,
                                                   prefix_space=args.prefix_space) for word in args.words]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    sense_analysis.plot_sense_table(reports, output / "senses.png", count=min(args.count, 8))
    tokens, alpha = sense_analysis.contextualization(model, tokenizer, args.sentence)
    sense_analysis.plot_contextualization(tokens, alpha, output / "contextualization.png")
    (output / "senses.json").write_text(json.dumps({"words": reports, "sentence": args.sentence, "tokens": tokens,
                                                    "contextualization": alpha.tolist()}, indent=2) + "\n")
    for report in reports:
        print(f"{report['word']!r}: " + "; ".join(
            f"sense {s['sense']}: {', '.join(t.strip() for t, _ in s['top'][:5])}" for s in report["senses"]))
    print(f"figures -> {output}/senses.png, {output}/contextualization.png")
    return 0


def add_generation_parsers(commands) -> None:
    parser = commands.add_parser("translation", help="translate by prompting a causal LM; corpus BLEU and chrF")
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", required=True, help="source sentences, one per line")
    parser.add_argument("--target", required=True, help="reference translations, line-aligned")
    parser.add_argument("--source-tag", default="<en>")
    parser.add_argument("--target-tag", default="<fr>")
    parser.add_argument("--num-beams", type=int, nargs="+", default=[1], help="1 = greedy; several: one run each")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--device")
    parser.add_argument("--output", default="translation_results")
    parser.set_defaults(run=run_translation)

    parser = commands.add_parser("word-similarity", help="Spearman of cosine similarities vs human ratings")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True, help="the ../shared/data folder (word_similarity, multisimlex)")
    parser.add_argument("--datasets", nargs="+", help="subset of simlex999 ws353 rg65 simverb3500 multisimlex_en "
                                                      "multisimlex_fr (default: all)")
    parser.add_argument("--source", choices=["embeddings", "senses"], default="embeddings")
    parser.add_argument("--multi-token", choices=["skip", "mean"], default="skip")
    parser.add_argument("--prefix-space", action="store_true", help="encode words with a leading space (GPT-2 BPE)")
    parser.add_argument("--device")
    parser.add_argument("--output", default="word_similarity_results")
    parser.set_defaults(run=run_word_similarity)

    parser = commands.add_parser("senses", help="Backpack sense vectors: top tokens per sense and figures")
    parser.add_argument("--model", required=True)
    parser.add_argument("--words", nargs="+", required=True)
    parser.add_argument("--sentence", required=True, help="sentence whose contextualization weights are plotted")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--prefix-space", action="store_true")
    parser.add_argument("--device")
    parser.add_argument("--output", default="sense_results")
    parser.set_defaults(run=run_senses)


def run_generative_perplexity(args) -> int:
    from eval_suites import generative_perplexity as gen_ppl

    try:  # inputs are checked before anything is loaded, the sampling settings before anything is drawn
        gen_ppl.check_counts(args.num_samples, args.batch_size)
        context_length = gen_ppl.scorer_context_length(gen_ppl.scorer_config(args.scorer_model), args.scorer_context)
        if args.samples:
            gen_ppl.refuse_sampling_flags(steps=args.steps, sampler=args.sampler, top_p=args.top_p, length=args.length,
                                          save_samples=args.save_samples)
            texts, sample_ids = gen_ppl.read_samples(args.samples)
            sampling = None
        else:
            texts, sample_ids, sampling = gen_ppl.sample_from_export(
                args.model, args.num_samples, args.batch_size, args.seed, device=args.device,
                skip_special_tokens=args.skip_special_tokens, length=args.length, num_steps=args.steps,
                sampler=args.sampler, top_p=args.top_p)
    except ValueError as error:
        print(f"gen-ppl: {error}", file=sys.stderr)
        return 2
    if args.save_samples:
        gen_ppl.write_samples(args.save_samples, texts, sample_ids)
    result = {"samples_file": args.samples, "sampling": sampling,
              **gen_ppl.generative_perplexity(texts, args.scorer_model, context_length, args.batch_size, args.device,
                                              sample_ids)}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{gen_ppl.summary_line(result)} -> {output}")
    return 0


def add_generative_perplexity_parser(commands) -> None:
    parser = commands.add_parser("gen-ppl", help="generative perplexity of masked diffusion samples under a causal LM")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="MDLM or BD3-LM export folder (or Hub id) to draw samples from")
    source.add_argument("--samples", help="score these samples instead: .jsonl (a string or {\"text\": ...} per line) "
                                          "or a text file with one sample per line")
    parser.add_argument("--scorer-model", required=True, help="causal LM folder or Hub name, e.g. gpt2-large")
    parser.add_argument("--scorer-context", type=int,
                        help="tokens per scored chunk (default: the scorer's max_position_embeddings)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--length", type=int, help="tokens per sample (default: the model's max_position_embeddings)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's; BD3-LM: per block)")
    parser.add_argument("--sampler", help="the model's sampler name (default: the model's)")
    parser.add_argument("--top-p", type=float, help="nucleus filtering of p(x_0 | x_t) (default: the model's, 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="samples drawn, and chunks scored, at once")
    parser.add_argument("--skip-special-tokens", action="store_true",
                        help="decode without special tokens (the originals keep them: GPT-2's <|endoftext|>)")
    parser.add_argument("--save-samples", help="also write the drawn samples to this .jsonl (re-score with --samples)")
    parser.add_argument("--device", help="e.g. cuda; default: where the models load (CPU)")
    parser.add_argument("--output", required=True, help="the JSON report file")
    parser.set_defaults(run=run_generative_perplexity)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_suites", description=__doc__)
    commands = parser.add_subparsers(dest="suite", required=True)
    blimp = commands.add_parser("blimp", help="minimal-pair accuracy from sentence log-likelihoods")
    blimp.add_argument("--model", required=True, help="exported folder or Hub repo id")
    blimp.add_argument("--data", required=True, help="directory of BLiMP-format *.jsonl / *.jsonl.gz files")
    blimp.add_argument("--scorer", default="pll", choices=sorted(SCORERS))
    blimp.add_argument("--token-budget", type=int, default=8192, help="tokens per forward pass (masked copies)")
    blimp.add_argument("--limit-per-paradigm", type=int, help="score only the first N pairs of each file")
    blimp.add_argument("--device", help="e.g. cuda; default: where the model loads (CPU)")
    blimp.add_argument("--output", required=True,
                       help="folder for blimp.json and blimp.md (required: no default, so results never land in "
                            "the current directory, e.g. a source checkout, nor inside the model's folder)")
    blimp.add_argument("--write-card", action="store_true", help="add the result to the export's model card")
    blimp.set_defaults(run=run_blimp)
    add_classification_parser(commands)
    add_generation_parsers(commands)
    add_generate_parser(commands)
    add_generative_perplexity_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
