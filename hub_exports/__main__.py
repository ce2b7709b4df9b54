"""python -m hub_exports {export,verify,push,convert} ... — see each command's --help."""

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers import AutoTokenizer

from hub_exports.adapter_files import check_hub_id, is_adapter_folder, resolve_base_folder
from hub_exports.adapters import merged_model, refuse_local_base_on_push
from hub_exports.checkpoints import load_adapter_model, load_checkpoint
from hub_exports.exporting import export
from hub_exports.folder_swap import check_export_target
from hub_exports.model_cards import CardInfo, Metric
from hub_exports.publishing import push
from hub_exports.strict_mapping import ConversionError, first_line
from hub_exports.tokenizer_files import load_tokenizer
from hub_exports.verification import VerificationError, format_report, verify
from modeling import DIFFUSION_POLICIES, diffusion_policy


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
    if not is_adapter_folder(args.model):
        if args.merge or args.base or args.base_model:
            print(f"Not exported: --merge, --base and --base-model belong to adapters; {args.model} holds no "
                  "adapter_config.json", file=sys.stderr)
            return 1
        model = load_checkpoint(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        return _export_and_verify(model, tokenizer, args.out, _card(args))
    if (args.tokenizer and not args.merge) or (args.base_model and args.merge):
        print("Not exported: an adapter repo ships no tokenizer (--tokenizer belongs to --merge) and a merged export "
              "names no base (--base-model belongs to adapter repos)", file=sys.stderr)
        return 1
    try:
        if args.base_model:
            check_hub_id(args.base_model, "--base-model")
        base = resolve_base_folder(args.model, args.base)
        model = load_adapter_model(args.model, base=base)
    except ValueError as error:
        print(f"Not exported: {error}", file=sys.stderr)
        return 1
    if _refuse_out(args.out, base):  # the adapter's base must survive the export
        return 1
    tokenizer = load_tokenizer(args.tokenizer or base)
    if args.base_model:
        model.peft_config[model.active_adapter].base_model_name_or_path = args.base_model
    return _export_and_verify(merged_model(model) if args.merge else model, tokenizer, args.out, _card(args))


def cmd_verify(args) -> int:
    if args.base and not is_adapter_folder(args.folder):
        print(f"--base belongs to adapter repos; {args.folder} holds no adapter_config.json", file=sys.stderr)
        return 1
    try:
        print(format_report(args.folder, verify(args.folder, python=args.python, base=args.base)))
    except VerificationError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def cmd_push(args) -> int:
    if is_adapter_folder(args.folder):
        try:
            refuse_local_base_on_push(args.folder)
        except ValueError as error:
            print(f"Not pushed: {error}", file=sys.stderr)
            return 1
    try:
        url = push(args.folder, args.repo_id, token=args.token, private=args.private, endpoint=args.endpoint,
                   base=args.base)
    except VerificationError as error:
        print(f"Not pushed, the export does not verify:\n{error}", file=sys.stderr)
        return 1
    print(f"Pushed {args.folder} to {args.repo_id}: {url}")
    return 0


def cmd_convert(args) -> int:
    """Only a ConversionError (the checkpoint, its tokenizer or a flag it needs, named) ends the command with one
    message and status 1; anything else is a bug and keeps its traceback."""
    if _refuse_out(args.out, args.source, args.tokenizer):
        return 1
    source_format = SOURCE_FORMATS[args.source_format]
    try:
        source_format.check_flags(args)
        tokenizer = conversion_tokenizer(args)
        model, description = source_format.convert(args, tokenizer)
    except ConversionError as error:
        print(f"Not converted: {error}", file=sys.stderr)
        return 1
    print(description)
    return _export_and_verify(model, tokenizer, args.out, _card(args))


# Files one of which every tokenizer folder holds (GPT-2's BPE pair may carry the `gpt2_` prefix).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "gpt2_vocab.json")
GPT2_TOKENIZER_HINT = "a folder with GPT-2's vocab.json and merges.txt, or any tokenizer folder"


def conversion_tokenizer(args):
    """The tokenizer the converted model is exported with, loaded before any conversion work: --tokenizer, else the
    source folder's own (ltg_bert, mdlm, bd3lm) or GPT-2's from the Hub (modded_gpt, backpack). A source that ships
    none, a folder that holds none, or a tokenizer that cannot be loaded is a ConversionError saying how to give it."""
    gpt_family = SOURCE_FORMATS[args.source_format].gpt2_tokenizer
    name = args.tokenizer or ("gpt2" if gpt_family else args.source)
    how = ("pass --tokenizer with the folder (or Hub id) of the tokenizer the checkpoint was trained with"
           + (f" ({GPT2_TOKENIZER_HINT})" if gpt_family else ""))
    folder = Path(name)
    if (args.tokenizer is None and not gpt_family) or folder.exists():
        if not folder.is_dir() or not any((folder / file).is_file() for file in TOKENIZER_FILES):
            what = f"--tokenizer {name} is not a tokenizer folder" if args.tokenizer else \
                f"{args.source} ships no tokenizer"
            raise ConversionError(f"{what} (none of {', '.join(TOKENIZER_FILES)}): {how}")
    try:
        return load_tokenizer(name) if gpt_family else AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, ImportError) as error:  # offline Hub, unknown id, missing tokenizer backend
        default = "" if args.tokenizer else " (the default: GPT-2's, from the Hub)"
        raise ConversionError(f"the tokenizer {name!r}{default} cannot be loaded ({first_line(error)}): "
                              f"{how}") from None


def _convert_modded_gpt(args, tokenizer):
    from hub_exports import convert_modded_gpt

    model, checkpoint_format = convert_modded_gpt.convert_modded_gpt(
        args.source, tokenizer, eot_token_id=args.eot_token_id, head_dim=args.head_dim,
        sliding_window_num_blocks=None if args.window_blocks == 0 else args.window_blocks,
        max_position_embeddings=args.max_length)
    return model, convert_modded_gpt.describe(model, checkpoint_format)


def _convert_backpack(args, tokenizer):
    from hub_exports import convert_backpack

    model, checkpoint_format = convert_backpack.convert_backpack(args.source, tokenizer)
    return model, convert_backpack.describe(model, checkpoint_format)


def _require_position_qk_split(args) -> None:
    if args.position_qk_split is None:
        raise ConversionError("convert ltg_bert needs --position-qk-split (it is not visible in the checkpoint's "
                              "keys)")


def _convert_ltg_bert(args, tokenizer):
    from hub_exports.convert_ltg_bert import convert_ltg_bert

    model = convert_ltg_bert(args.source, args.position_qk_split, tokenizer=tokenizer, pad_token_id=args.pad_token_id)
    return model, f"Converted ltg_bert ({args.position_qk_split}): {model.num_parameters():,} parameters"


def _convert_diffusion(args, tokenizer):
    from hub_exports.convert_diffusion import convert_diffusion

    model = convert_diffusion(args.source, tokenizer=tokenizer, mask_token_id=args.mask_token_id, weights=args.weights)
    if diffusion_policy(model) is not DIFFUSION_POLICIES[args.source_format]:
        raise ConversionError(f"{args.source} holds a {model.config.model_type} checkpoint, not {args.source_format}")
    if tokenizer.mask_token_id is None:  # the original appended the mask id after the tokenizer's vocabulary
        tokenizer.add_special_tokens({"mask_token": "[MASK]"})
        if tokenizer.mask_token_id != model.config.mask_token_id:
            raise ConversionError(f"could not give the tokenizer the mask id {model.config.mask_token_id}")
    return model, (f"Converted {model.config.model_type} ({args.weights} weights): {model.num_parameters():,} "
                   f"parameters, mask id {model.config.mask_token_id}")


def _no_flags_needed(args) -> None:
    """Every flag of the format has a default or is checked by its converter."""


@dataclass(frozen=True)
class SourceFormat:
    """One kind of original checkpoint the convert command reads."""

    convert: Callable  # (args, tokenizer) -> (model, what was converted, in a paragraph)
    check_flags: Callable = _no_flags_needed  # raises ConversionError before any work when a needed flag is missing
    gpt2_tokenizer: bool = False  # trained with GPT-2's tokenizer, the default (else the source folder's own)


# Named as the architecture the checkpoint converts to.
SOURCE_FORMATS = {
    "ltg_bert": SourceFormat(_convert_ltg_bert, check_flags=_require_position_qk_split),
    **dict.fromkeys(DIFFUSION_POLICIES, SourceFormat(_convert_diffusion)),
    "modded_gpt": SourceFormat(_convert_modded_gpt, gpt2_tokenizer=True),
    "backpack": SourceFormat(_convert_backpack, gpt2_tokenizer=True),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hub_exports", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("export", help="saved model folder (e.g. a Trainer checkpoint) -> Hub-ready folder")
    p.add_argument("--model", required=True, help="folder with config.json + weights, or an adapter (a LoRA run's "
                                                  "export or checkpoint): written as an adapter repo, or merged")
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model; an adapter's: its base's)")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="adapter: fold it into the base's weights and write a full "
                                                       "export of the base class")
    p.add_argument("--base", help="adapter: local folder of its base export (default: the folder its config names)")
    p.add_argument("--base-model", help="adapter: the Hub id its repo names as base (where the base is pushed)")
    _add_card_arguments(p)
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("verify", help="check an exported folder; exit 1 with the report if anything fails")
    p.add_argument("folder")
    p.add_argument("--python", help="interpreter for the fresh-process load (e.g. one with another transformers)")
    p.add_argument("--base", help="adapter repos: local folder of the base export it names by Hub id")
    p.set_defaults(run=cmd_verify)

    p = commands.add_parser("push", help="verify, then upload an exported folder to the Hub")
    p.add_argument("folder")
    p.add_argument("repo_id")
    p.add_argument("--token")
    p.add_argument("--private", action="store_true")
    p.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--base", help="adapter repos: local folder of the base export it names by Hub id")
    p.set_defaults(run=cmd_push)

    p = commands.add_parser("convert", help="original checkpoint -> verified hubzoo export")
    p.add_argument("source_format", choices=list(SOURCE_FORMATS))
    p.add_argument("source", help="ltg_bert: folder with config.json + pytorch_model.bin; mdlm/bd3lm: Hub folder "
                                  "(config.json + model.safetensors) or Lightning .ckpt file; modded_gpt: the "
                                  "speedrun's state_step*.pt; backpack: a backpack-gpt2 folder or a nanoBackpackLM "
                                  "ckpt.pt")
    p.add_argument("out")
    p.add_argument("--position-qk-split", choices=["chunk_first", "per_head_interleaved"],
                   help="ltg_bert (required): relative-position split the checkpoint was trained with")
    p.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the source folder's, refused when it "
                                       "ships none; modded_gpt/backpack: 'gpt2' from the Hub). modded_gpt/backpack "
                                       "also take a folder with GPT-2's vocab.json and merges.txt")
    p.add_argument("--pad-token-id", type=int, help="ltg_bert: checked against the tokenizer's pad id")
    p.add_argument("--mask-token-id", type=int, help="mdlm/bd3lm: checked against the tokenizer's (or its size)")
    p.add_argument("--weights", choices=["ema", "live"], default="ema",
                   help="mdlm/bd3lm Lightning checkpoints: the EMA (default) or the live weights")
    p.add_argument("--eot-token-id", type=int, help="modded_gpt: checked against the tokenizer's EOS id")
    p.add_argument("--head-dim", type=int, default=128, help="modded_gpt: not visible in the shapes (default 128)")
    p.add_argument("--window-blocks", type=int, default=-1,
                   help="modded_gpt: long sliding window in 128-token blocks; 0: none. Default: the window the "
                        "training script stored in the checkpoint sets at its step (read as text, never run); "
                        "required when the checkpoint records none")
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
