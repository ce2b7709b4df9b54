"""Write a trained hubzoo model as a complete `trust_remote_code` Hub repo folder.

The folder holds: `config.json` with the full `auto_map`, the configuration/modeling files copied from `modeling/`
(the files the model was trained with), `model.safetensors`, the tokenizer, and a model card (`README.md`). It is
written into a temporary sibling folder and renamed into place, so a crash never leaves a half-written export and a
previous export at the same path survives until the new one is complete.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import modeling

CARD_DIR = Path(__file__).with_name("model_cards")
# Files a training run may leave next to the weights that must never reach the Hub: pickles and optimizer state.
FORBIDDEN_FILES = ("training_args.bin", "pytorch_model.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")

# What the card says for the class that was saved: pipeline tag and a runnable usage line.
TASKS = {
    "AutoModelForMaskedLM": (
        "fill-mask",
        'inputs = tokenizer(f"The capital of France is {tokenizer.mask_token}.", return_tensors="pt")\n'
        "logits = model(**inputs).logits",
    ),
    "AutoModelForSequenceClassification": (
        "text-classification",
        'logits = model(**tokenizer("A sentence to classify.", return_tensors="pt")).logits',
    ),
    "AutoModelForTokenClassification": (
        "token-classification",
        'logits = model(**tokenizer("A sentence to tag.", return_tensors="pt")).logits',
    ),
    "AutoModel": (
        "feature-extraction",
        'hidden = model(**tokenizer("A sentence to embed.", return_tensors="pt")).last_hidden_state',
    ),
}


@dataclass
class Metric:
    """One evaluation result for the card's `model-index` (e.g. task "fill-mask", metric "accuracy")."""

    task_type: str
    dataset_name: str
    dataset_type: str
    metric_type: str
    metric_value: float
    metric_name: Optional[str] = None
    dataset_split: Optional[str] = None


@dataclass
class CardInfo:
    """What the model card says beyond what the model itself tells."""

    repo_id: Optional[str] = None  # where it will live on the Hub; used in the usage snippet
    description: str = "A hubzoo model."
    training_data: str = "Not documented."
    training_procedure: str = "Not documented."
    limitations: str = "Not documented."
    datasets: list = field(default_factory=list)  # Hub dataset ids, if any
    language: Optional[str] = "en"
    license: str = "apache-2.0"
    metrics: list = field(default_factory=list)  # list[Metric]


def saved_auto_class(model) -> str:
    """The Auto class name under which the saved architecture is loaded."""
    for auto_name, model_class in modeling.ARCHITECTURES[model.config.model_type][1].items():
        if model_class.__name__ == type(model).__name__:
            return auto_name
    raise ValueError(f"{type(model).__name__} is not a registered hubzoo class")


def load_checkpoint(folder):
    """Load a saved hubzoo model folder (e.g. a Trainer checkpoint) with the local classes, strictly."""
    config = json.loads((Path(folder) / "config.json").read_text())
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    classes = {cls.__name__: cls for cls in modeling.ARCHITECTURES.get(model_type, (None, {}))[1].values()}
    if len(architectures) != 1 or architectures[0] not in classes:
        raise ValueError(f"{folder}: model_type {model_type!r} / architectures {architectures} is not a hubzoo model")
    model, info = classes[architectures[0]].from_pretrained(folder, output_loading_info=True)
    problems = {key: sorted(map(str, value)) for key, value in info.items() if value}
    if problems:
        raise ValueError(f"{folder} does not load cleanly: {problems}")
    return model


def check_tokenizer_matches(model, tokenizer) -> None:
    """Fail before writing anything if tokenizer ids could index outside the embedding or special ids disagree."""
    vocab_size = model.config.vocab_size
    largest = max(tokenizer.get_vocab().values())
    if len(tokenizer) > vocab_size or largest >= vocab_size:
        raise ValueError(
            f"Tokenizer has {len(tokenizer)} tokens (largest id {largest}) but the model's vocab_size is {vocab_size}"
        )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        in_config, in_tokenizer = getattr(model.config, name, None), getattr(tokenizer, name, None)
        if in_config is not None and in_tokenizer is not None and in_config != in_tokenizer:
            raise ValueError(f"config.{name}={in_config} but the tokenizer's {name} is {in_tokenizer}")
    if saved_auto_class(model) == "AutoModelForMaskedLM" and tokenizer.mask_token_id is None:
        raise ValueError("A masked-LM export needs a tokenizer with a mask token")


def build_model_card(model, card: CardInfo) -> ModelCard:
    model_type = model.config.model_type
    auto_class = saved_auto_class(model)
    pipeline_tag, usage = TASKS[auto_class]
    eval_results = [
        EvalResult(
            task_type=m.task_type, dataset_name=m.dataset_name, dataset_type=m.dataset_type,
            metric_type=m.metric_type, metric_value=m.metric_value, metric_name=m.metric_name,
            dataset_split=m.dataset_split,
        )
        for m in card.metrics
    ]
    model_name = (card.repo_id or model_type).split("/")[-1]
    data = ModelCardData(
        language=card.language, license=card.license, library_name="transformers", pipeline_tag=pipeline_tag,
        tags=["hubzoo", model_type, "custom_code"], datasets=card.datasets or None,
        model_name=model_name if eval_results else None, eval_results=eval_results or None,
    )
    citation = CARD_DIR / f"{model_type}.bib"
    other = [name for name in modeling.auto_map(model_type) if name not in ("AutoConfig", auto_class)]
    return ModelCard.from_template(
        data,
        template_path=str(CARD_DIR / "template.md"),
        model_name=model_name,
        repo_id=card.repo_id or "path/to/this/folder",
        description=card.description,
        architecture=type(model).__name__,
        model_type=model_type,
        num_parameters=f"{model.num_parameters():,}",
        hubzoo_version=metadata.version("hubzoo"),
        transformers_version=transformers.__version__,
        architecture_notes=(CARD_DIR / f"{model_type}.md").read_text().strip(),
        auto_class=auto_class,
        usage_example=usage,
        other_auto_classes=", ".join(f"`{name}`" for name in other),
        training_data=card.training_data,
        training_procedure=card.training_procedure,
        metrics_table="".join(
            f"| {m.task_type} | {m.dataset_name} | {m.metric_name or m.metric_type} | {m.metric_value} |\n"
            for m in card.metrics
        ),
        limitations=card.limitations,
        citation=citation.read_text().strip() if citation.exists() else "",
    )


def export(model, tokenizer, out_dir, card: Optional[CardInfo] = None) -> Path:
    """Write `model` + `tokenizer` as a Hub-ready folder at `out_dir` (replacing it atomically). Returns the path."""
    if model.config.model_type not in modeling.ARCHITECTURES:
        raise ValueError(f"{model.config.model_type!r} is not a hubzoo architecture")
    check_tokenizer_matches(model, tokenizer)
    card = card or CardInfo()
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.config.auto_map = modeling.auto_map(model.config.model_type)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_portable_tokenizer_config(staging / "tokenizer_config.json", model)
        build_model_card(model, card).save(staging / "README.md")
        for name in FORBIDDEN_FILES:
            (staging / name).unlink(missing_ok=True)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_portable_tokenizer_config(tokenizer_config: Path, model) -> None:
    """Pin what transformers 4.x and 5.x would otherwise read differently from the same tokenizer files."""
    settings = json.loads(tokenizer_config.read_text())
    # 5.x calls a plain fast tokenizer `TokenizersBackend`, which 4.x cannot resolve; both know this name.
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    # 4.x fast tokenizers default to emitting token_type_ids, which the models' forward() does not take.
    settings["model_input_names"] = ["input_ids", "attention_mask"]
    # `truncation=True` should cut at the model's limit instead of tripping its length check.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and settings.get("model_max_length", float("inf")) > limit:
        settings["model_max_length"] = limit
    tokenizer_config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _replace_dir(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` is moved aside first and deleted only after the swap."""
    os.chmod(new, 0o755)  # mkdtemp creates 0700 folders
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old)

