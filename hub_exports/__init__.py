"""Export -> verify -> push of hubzoo models as `trust_remote_code` Hub repos, and converters for foreign checkpoints.

Library use: `export(model, tokenizer, out_dir, card=CardInfo(...))`, `verify(out_dir)`, `push(out_dir, repo_id)`.
Command line: `python -m hub_exports {export,verify,push,convert} --help`.
"""

from hub_exports.exporting import CardInfo, Metric, export
from hub_exports.publishing import push
from hub_exports.verification import VerificationError, format_report, verify

__all__ = ["CardInfo", "Metric", "export", "verify", "push", "format_report", "VerificationError"]
