"""Train a LatentWire for several frozen decoders and show whether it carries the text: per decoder, question
answering from the full text prompt, from the wire's M latents, and from the text cut to M tokens.

    accelerate launch trainers/run_latent_wire.py trainers/configs/latent_wire_demo.yaml         # the demonstration
    accelerate launch trainers/run_latent_wire.py trainers/configs/latent_wire_demo.yaml \\
        --decoders llama=meta-llama/Llama-3.1-8B-Instruct qwen=Qwen/Qwen2.5-7B-Instruct \\
        --train_file train-v1.1.json --eval_file ../shared/data/squad/dev-v1.1.json --decoder_dtype bfloat16

Without `--decoders`, the decoders are built here: two small, different causal LMs (a Llama and a Qwen2 config,
other widths, depths and byte-level BPEs) trained on the same questions as text first, then frozen. Data: SQuAD-format
JSON files, or a generated corpus of contexts with random facts (`trainers/qa_corpus.py`). Texts longer than
`max_bytes` are dropped and counted, never cut. Outputs in `output_dir`: `decoders/<name>` (demo decoders), `export/`
(the wire, a verified hubzoo export naming its decoders), `metrics.json` (also as `results.json`), `predictions.jsonl`,
`results.md`.
"""

import logging

from transformers import set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from modeling.latent_wire import byte_tokenizer
from trainers.arguments import parse_args
from trainers.demo_decoders import obtain_decoders
from trainers.finishing import finish_run, run_callbacks
from trainers.latent_wire_config import (LatentWireTrainingArguments, WireArguments, build_wire, check_overrides_of,
                                         evaluate_wire, load_records, wire_card, wire_rows)
from trainers.latent_wire_trainer import LatentWireCollator, LatentWireTrainer
from trainers.preflight import check_before_training

logger = logging.getLogger(__name__)


def main(args: WireArguments, training_args: LatentWireTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_overrides_of(args)
    set_seed(training_args.seed)
    train_records, eval_records = load_records(args)
    paths = obtain_decoders(args, training_args, train_records)
    wire = build_wire(args, paths, training_args.device)
    tokenizer = byte_tokenizer(args.max_bytes)
    anchors = {name: wire.config.decoder(name)["anchor_ids"] for name in wire.decoders}
    collator = LatentWireCollator(tokenizer, wire.decoder_tokenizers, args.max_bytes,
                                  anchor_ids=anchors if training_args.distillation_weight else None)
    card = wire_card(wire, paths, args, len(train_records))
    check_before_training(training_args.output_dir, model=wire, tokenizer=tokenizer, card=card)
    trainer = LatentWireTrainer(model=wire, args=training_args, train_dataset=wire_rows(train_records),
                                eval_dataset=wire_rows(eval_records), data_collator=collator,
                                callbacks=run_callbacks(training_args, tokenizer, card))
    logger.info("wire: %s trainable parameters; decoders %s", f"{wire.num_parameters():,}",
                {name: f"{d.num_parameters():,}" for name, d in wire.decoders.items()})
    trainer.train()
    card.training_procedure = f"{trainer.state.global_step} steps, lr {training_args.learning_rate}."
    trained = dict(train_steps=trainer.state.global_step, decoders_paths=paths, wire_parameters=wire.num_parameters())
    # The wire in memory is evaluated, as trained (the export only copies its weights).
    finish_run(trainer, tokenizer, card, lambda folder: evaluate_wire(wire, eval_records, tokenizer, args, trained))


def parse(argv=None):
    return parse_args((WireArguments, LatentWireTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
