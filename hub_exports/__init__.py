"""Export -> verify -> push of hubzoo models as `trust_remote_code` Hub repos, and converters for foreign checkpoints.

Library use: `export(model, tokenizer, out_dir, card=CardInfo(...))`, `verify(out_dir)`, `push(out_dir, repo_id)`;
for the training scripts also `load_checkpoint`, `load_tokenizer`, `full_fp32_matmuls` and `add_results_to_card`.
Command line: `python -m hub_exports {export,verify,push,convert} --help`.
Modules inside this package import each other's modules, never this package's names (that would be a cycle).
"""

from hub_exports.checkpoints import load_checkpoint
from hub_exports.exporting import export
from hub_exports.model_cards import CardInfo, Metric, add_results_to_card
from hub_exports.precision import full_fp32_matmuls
from hub_exports.publishing import push
from hub_exports.tokenizer_files import load_tokenizer
from hub_exports.verification import VerificationError, format_report, verify

__all__ = ["CardInfo", "Metric", "export", "verify", "push", "format_report", "VerificationError", "load_checkpoint",
           "load_tokenizer", "full_fp32_matmuls", "add_results_to_card"]
