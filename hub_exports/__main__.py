"""python -m hub_exports {export,verify,push,convert} ... — see each command's --help."""

import argparse
import logging
import sys

from transformers import AutoTokenizer

from hub_exports.exporting import CardInfo, Metric, export, load_checkpoint
from hub_exports.publishing import push
from hub_exports.verification import VerificationError, format_report, verify


def _metric(text: str) -> Metric:
    parts = text.split(":")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--metric wants task:dataset:metric:value, got {text!r}")
    return Metric(task_type=parts[0], dataset_name=parts[1], dataset_type=parts[1], metric_type=parts[2],
                  metric_value=float(parts[3]))


def _add_card_arguments(parser):
    parser.add_argument("--repo-id", help="Hub repo id the card's usage snippet should name")
    parser.add_argument("--description", default=CardInfo.description)
    parser.add_argument("--training-data", default=CardInfo.training_data)
    parser.add_argument("--training-procedure", default=CardInfo.training_procedure)
    parser.add_argument("--limitations", default=CardInfo.limitations)
    parser.add_argument("--dataset", action="append", default=[], help="Hub dataset id (repeatable)")
    parser.add_argument("--metric", action="append", type=_metric, default=[], help="task:dataset:metric:value")


def _card(args) -> CardInfo:
    return CardInfo(repo_id=args.repo_id, description=args.description, training_data=args.training_data,
                    training_procedure=args.training_procedure, limitations=args.limitations,
                    datasets=args.dataset, metrics=args.metric)


def _export_and_verify(model, tokenizer, out, card) -> int:
    try:
        folder = export(model, tokenizer, out, card=card)  # logs the verification report
    except VerificationError as error:
        print(f"Not exported ({out} left as it was):\n{error}", file=sys.stderr)
        return 1
    print(f"Exported and verified: {folder}")
    return 0


def cmd_export(args) -> int:
    model = load_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    return _export_and_verify(model, tokenizer, args.out, _card(args))


def cmd_verify(args) -> int:
    try:
        print(format_report(args.folder, verify(args.folder, python=args.python)))
    except VerificationError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def cmd_push(args) -> int:
    try:
        url = push(args.folder, args.repo_id, token=args.token, private=args.private, endpoint=args.endpoint)
    except VerificationError as error:
        print(f"Not pushed, the export does not verify:\n{error}", file=sys.stderr)
        return 1
    print(f"Pushed {args.folder} to {args.repo_id}: {url}")
    return 0


def cmd_convert(args) -> int:
    from hub_exports.convert_ltg_bert import convert_ltg_bert

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.source)
    model = convert_ltg_bert(args.source, args.position_qk_split, tokenizer=tokenizer, pad_token_id=args.pad_token_id)
    return _export_and_verify(model, tokenizer, args.out, _card(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hub_exports", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("export", help="saved model folder (e.g. a Trainer checkpoint) -> Hub-ready folder")
    p.add_argument("--model", required=True, help="folder with config.json + weights")
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    p.add_argument("--out", required=True)
    _add_card_arguments(p)
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("verify", help="check an exported folder; exit 1 with the report if anything fails")
    p.add_argument("folder")
    p.add_argument("--python", help="interpreter for the fresh-process load (e.g. one with another transformers)")
    p.set_defaults(run=cmd_verify)

    p = commands.add_parser("push", help="verify, then upload an exported folder to the Hub")
    p.add_argument("folder")
    p.add_argument("repo_id")
    p.add_argument("--token")
    p.add_argument("--private", action="store_true")
    p.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.set_defaults(run=cmd_push)

    p = commands.add_parser("convert", help="original checkpoint -> verified hubzoo export")
    p.add_argument("source_format", choices=["ltg_bert"])
    p.add_argument("source", help="folder with the original config.json and pytorch_model.bin")
    p.add_argument("out")
    p.add_argument("--position-qk-split", required=True, choices=["chunk_first", "per_head_interleaved"],
                   help="relative-position split the checkpoint was trained with (not visible in its keys)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the source folder)")
    p.add_argument("--pad-token-id", type=int, help="checked against the tokenizer's pad id (the tokenizer decides)")
    _add_card_arguments(p)
    p.set_defaults(run=cmd_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("hub_exports").setLevel(logging.INFO)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
