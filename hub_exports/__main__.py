"""python -m hub_exports {export,verify,push,convert} ... — see each command's --help."""

import argparse
import logging
import sys

from transformers import AutoTokenizer

from hub_exports.exporting import CardInfo, Metric, check_export_target, export, load_checkpoint
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


def _refuse_out(out, *sources) -> bool:
    """True (after saying why on stderr) if `out` may not receive the export; checked before anything is loaded."""
    try:
        check_export_target(out, sources=[source for source in sources if source])
    except ValueError as error:
        print(f"Not exported: {error}", file=sys.stderr)
        return True
    return False


def cmd_export(args) -> int:
    if _refuse_out(args.out, args.model, args.tokenizer):
        return 1
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
    if _refuse_out(args.out, args.source, args.tokenizer):
        return 1
    if args.source_format in ("modded_gpt", "backpack"):
        return convert_gpt_family_command(args)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.source)
    if args.source_format == "ltg_bert":
        from hub_exports.convert_ltg_bert import convert_ltg_bert

        if args.position_qk_split is None:
            raise SystemExit("convert ltg_bert needs --position-qk-split (it is not visible in the checkpoint's keys)")
        model = convert_ltg_bert(args.source, args.position_qk_split, tokenizer=tokenizer,
                                 pad_token_id=args.pad_token_id)
    else:
        from hub_exports.convert_diffusion import convert_diffusion

        model = convert_diffusion(args.source, tokenizer=tokenizer, mask_token_id=args.mask_token_id,
                                  weights=args.weights)
        if model.config.model_type != args.source_format:
            raise SystemExit(f"{args.source} holds a {model.config.model_type} checkpoint, not {args.source_format}")
        if tokenizer.mask_token_id is None:  # the original appended the mask id after the tokenizer's vocabulary
            tokenizer.add_special_tokens({"mask_token": "[MASK]"})
            if tokenizer.mask_token_id != model.config.mask_token_id:
                raise SystemExit(f"could not give the tokenizer the mask id {model.config.mask_token_id}")
        print(f"Converted {model.config.model_type} ({args.weights} weights): {model.num_parameters():,} parameters, "
              f"mask id {model.config.mask_token_id}")
    return _export_and_verify(model, tokenizer, args.out, _card(args))


def convert_gpt_family_command(args) -> int:
    """modded_gpt and backpack: the GPT-2 tokenizer by default; what was detected is printed before the export."""
    from hub_exports import convert_backpack, convert_modded_gpt

    tokenizer = convert_modded_gpt.load_tokenizer(args.tokenizer or "gpt2")
    try:
        if args.source_format == "modded_gpt":
            model, checkpoint_format = convert_modded_gpt.convert_modded_gpt(
                args.source, tokenizer, eot_token_id=args.eot_token_id, head_dim=args.head_dim,
                sliding_window_num_blocks=None if args.window_blocks == 0 else args.window_blocks,
                max_position_embeddings=args.max_length)
            print(convert_modded_gpt.describe(model, checkpoint_format))
        else:
            model, checkpoint_format = convert_backpack.convert_backpack(args.source, tokenizer)
            print(convert_backpack.describe(model, checkpoint_format))
    except ValueError as error:
        print(f"Not converted: {error}", file=sys.stderr)
        return 1
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
    p.add_argument("source_format", choices=["ltg_bert", "mdlm", "bd3lm", "modded_gpt", "backpack"])
    p.add_argument("source", help="ltg_bert: folder with config.json + pytorch_model.bin; mdlm/bd3lm: Hub folder "
                                  "(config.json + model.safetensors) or Lightning .ckpt file; modded_gpt: the "
                                  "speedrun's state_step*.pt; backpack: a backpack-gpt2 folder or a nanoBackpackLM "
                                  "ckpt.pt")
    p.add_argument("out")
    p.add_argument("--position-qk-split", choices=["chunk_first", "per_head_interleaved"],
                   help="ltg_bert (required): relative-position split the checkpoint was trained with")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the source folder; modded_gpt: 'gpt2' from the "
                                       "Hub, or a folder with GPT-2's vocab.json and merges.txt)")
    p.add_argument("--pad-token-id", type=int, help="ltg_bert: checked against the tokenizer's pad id")
    p.add_argument("--mask-token-id", type=int, help="mdlm/bd3lm: checked against the tokenizer's (or its size)")
    p.add_argument("--weights", choices=["ema", "live"], default="ema",
                   help="mdlm/bd3lm Lightning checkpoints: the EMA (default) or the live weights")
    p.add_argument("--eot-token-id", type=int, help="modded_gpt: checked against the tokenizer's EOS id")
    p.add_argument("--head-dim", type=int, default=128, help="modded_gpt: not visible in the shapes (default 128)")
    p.add_argument("--window-blocks", type=int, default=-1,
                   help="modded_gpt: long sliding window in 128-token blocks (default -1: the era's final training "
                        "window, small 14 / medium 27; 0: none)")
    p.add_argument("--max-length", type=int, default=4096, help="modded_gpt: max_position_embeddings")
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
