"""The model card (`README.md`) of an export: `huggingface_hub.ModelCard` from `model_cards/template.md`, with YAML
metadata (pipeline tag, tags, `model-index` metrics) and a usage snippet for the class that was saved.

`build_model_card(model, CardInfo(...))` writes the card at export; `add_results_to_card` appends evaluation results
to an existing export (the card is the one file its manifest leaves out, so the export still verifies).
"""

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import modeling

CARD_DIR = Path(__file__).with_name("model_cards")

# What the card says for the class that was saved: pipeline tag and a runnable usage line.
TASKS = {
    "AutoModelForMaskedLM": (
        "fill-mask",
        'inputs = tokenizer(f"The capital of France is {tokenizer.mask_token}.", return_tensors="pt")\n'
        "logits = model(**inputs).logits",
    ),
    "AutoModelForCausalLM": (
        "text-generation",
        'inputs = tokenizer("The meaning of life is", return_tensors="pt")\n'
        "output_ids = model.generate(**inputs, max_new_tokens=20, do_sample=False)\n"
        "print(tokenizer.decode(output_ids[0]))",
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


# Classes whose card shows another usage than their Auto class's task (diffusion LMs sample rather than fill masks).
USAGE_BY_CLASS = {
    name: (
        "samples = model.sample(num_samples=2, seed=0)  # unconditional, from all-mask\n"
        "# Conditional: the mask id marks what to generate, every other token is kept (prompts, infilling)\n"
        "start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id\n"
        'prompt = [start] + tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]\n'
        "import torch\n"
        "samples = model.sample(input_ids=torch.tensor([prompt]), max_new_tokens=32, sampler=\"confidence\", seed=0)\n"
        "print(tokenizer.batch_decode(samples, skip_special_tokens=True))"
    )
    for name in ("MdlmForMaskedDiffusionLM", "Bd3lmForMaskedDiffusionLM")
}
USAGE_BY_CLASS["LatentWireModel"] = (
    "model.load_decoders()  # the frozen decoders named in config.decoders (or attach_decoder(name, lm, tok))\n"
    'texts = tokenizer(["Context: ... Question: ..."], return_tensors="pt", padding=True)\n'
    "for name in model.decoders:\n"
    "    answer_ids = model.generate_with(name, **texts, max_new_tokens=12, do_sample=False)\n"
    "    print(name, model.decoder_tokenizers[name].batch_decode(answer_ids, skip_special_tokens=True))"
)


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



def build_model_card(model, card: CardInfo) -> ModelCard:
    if type(model).__module__.split(".")[0] == "peft":  # a LoRA run's export: an adapter repo
        return build_adapter_card(model, card)
    model_type = model.config.model_type
    auto_class, _ = modeling.task_class(model_type, type(model).__name__)
    pipeline_tag, usage = TASKS[auto_class]
    usage = USAGE_BY_CLASS.get(type(model).__name__, usage)
    eval_results = [_eval_result(m) for m in card.metrics]
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
        metrics_table=metrics_table(card.metrics),
        limitations=card.limitations,
        citation=citation.read_text().strip() if citation.exists() else "",
    )


# PEFT's one-call Auto class of an adapter over a base loaded with each transformers Auto class (masked LMs have none)
AUTO_PEFT_CLASSES = {"AutoModelForCausalLM": "AutoPeftModelForCausalLM"}


def build_adapter_card(model, card: CardInfo) -> ModelCard:
    """The card of an adapter repo: `library_name: peft`, `base_model` (what the adapter config names), and a usage
    snippet that loads the base with `trust_remote_code` and the adapter on it."""
    base = model.get_base_model()
    model_type = base.config.model_type
    auto_class, _ = modeling.task_class(model_type, type(base).__name__)
    pipeline_tag, _ = TASKS[auto_class]
    config = model.peft_config[model.active_adapter]
    trainable, total = model.get_nb_trainable_parameters()
    eval_results = [_eval_result(m) for m in card.metrics]
    model_name = (card.repo_id or f"{model_type}-lora").split("/")[-1]
    base_model = config.base_model_name_or_path
    data = ModelCardData(
        language=card.language, license=card.license, library_name="peft", pipeline_tag=pipeline_tag,
        base_model=base_model, tags=["hubzoo", model_type, "custom_code", "lora", "peft"],
        datasets=card.datasets or None, model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    is_hub_id = not Path(base_model).is_absolute()
    base_kwargs = ""
    if "Classification" in type(base).__name__:  # a classifier over a language-model export: its labels
        base_kwargs = (f", num_labels={base.config.num_labels}, id2label={dict(base.config.id2label)}, "
                       f"label2id={dict(base.config.label2id)}")
    return ModelCard.from_template(
        data,
        template_path=str(CARD_DIR / "adapter_template.md"),
        model_name=model_name,
        repo_id=card.repo_id or "path/to/this/folder",
        description=card.description,
        rank=config.r, alpha=config.lora_alpha, num_targets=len(config.target_modules),
        modules_to_save=", ".join(f"`{name}`" for name in sorted(config.modules_to_save or ())),
        num_trainable=f"{trainable:,}", num_parameters=f"{total - trainable:,}",
        architecture=type(base).__name__, model_type=model_type, base_model=base_model,
        base_model_link=f"https://huggingface.co/{base_model}" if is_hub_id else base_model,
        hubzoo_version=metadata.version("hubzoo"), transformers_version=transformers.__version__,
        peft_version=metadata.version("peft"), auto_class=auto_class, base_kwargs=base_kwargs,
        auto_peft_class=AUTO_PEFT_CLASSES.get(auto_class, ""),
        training_data=card.training_data,
        training_procedure=card.training_procedure,
        metrics_table=metrics_table(card.metrics),
        limitations=card.limitations,
    )


def metrics_table(metrics: list) -> str:
    """The rows of the card's evaluation table."""
    return "".join(f"| {m.task_type} | {m.dataset_name} | {m.metric_name or m.metric_type} | {m.metric_value} |\n"
                   for m in metrics)


def add_results_to_card(folder, metrics: list, section: str) -> None:
    """Append evaluation results to an export's card: `model-index` entries plus a markdown section. The card is
    the one file the manifest leaves out, so the export still verifies."""
    path = Path(folder) / "README.md"
    card = ModelCard.load(path)
    card.data.eval_results = list(card.data.eval_results or []) + [_eval_result(m) for m in metrics]
    card.data.model_name = card.data.model_name or Path(folder).resolve().name
    card.text = card.text.rstrip() + "\n\n" + section.strip() + "\n"
    card.save(path)


def _eval_result(metric: Metric) -> EvalResult:
    return EvalResult(task_type=metric.task_type, dataset_name=metric.dataset_name, dataset_type=metric.dataset_type,
                      metric_type=metric.metric_type, metric_value=metric.metric_value, metric_name=metric.metric_name,
                      dataset_split=metric.dataset_split)
