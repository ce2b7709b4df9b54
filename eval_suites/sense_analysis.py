"""Sense analysis of Backpack LMs: what each sense vector of a word predicts, and how the contextualization weights
spread over a sentence, as tables and PNG figures (matplotlib, no display needed).

A sense vector s contributes E·s to the logits wherever it is used (E the tied output embedding), so the tokens with
the largest E·s are what that sense pushes up (and the smallest what it pushes down), as in the Backpack paper's
sense visualisations.
"""

from pathlib import Path
from typing import Dict, List, Sequence

import torch

from eval_suites.word_similarity import sense_vectors, token_ids


@torch.no_grad()
def top_tokens_per_sense(model, tokenizer, word: str, count: int = 10, prefix_space: bool = False) -> Dict:
    """{"word", "token_ids", "senses": [{"sense": l, "top": [(token, logit)], "bottom": [...]}]}; a multi-token word
    uses the mean of its tokens' sense vectors (and says so)."""
    ids = token_ids(tokenizer, word, prefix_space)
    if not ids:
        raise ValueError(f"{word!r} encodes to no token")
    device = model.get_output_embeddings().weight.device
    senses = sense_vectors(model, torch.tensor([ids], device=device))[0].mean(dim=1)  # (k, d)
    logits = model.get_output_embeddings()(senses).float()  # (k, V)
    report = {"word": word, "token_ids": ids, "multi_token_mean": len(ids) > 1, "senses": []}
    for sense, row in enumerate(logits):
        top, bottom = row.topk(count), (-row).topk(count)
        report["senses"].append({
            "sense": sense,
            "top": [(tokenizer.decode([i]), round(v, 4)) for i, v in zip(top.indices.tolist(), top.values.tolist())],
            "bottom": [(tokenizer.decode([i]), round(-v, 4))
                       for i, v in zip(bottom.indices.tolist(), bottom.values.tolist())],
        })
    return report


def plot_sense_table(reports: Sequence[Dict], path, count: int = 6) -> Path:
    """One panel per word: a table of senses (rows) by their top tokens (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(reports), 1, figsize=(1.6 * count + 1, 0.45 * sum(len(r["senses"]) + 2
                                                                                  for r in reports)), squeeze=False)
    for axis, report in zip(axes[:, 0], reports):
        axis.axis("off")
        cells = [[token.strip() or repr(token) for token, _ in sense["top"][:count]] for sense in report["senses"]]
        table = axis.table(cellText=cells, rowLabels=[f"sense {s['sense']}" for s in report["senses"]],
                           colLabels=[f"top {i + 1}" for i in range(count)], loc="center")
        table.scale(1, 1.2)
        axis.set_title(f"{report['word']!r}: tokens each sense vector promotes (E·s)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


@torch.no_grad()
def contextualization(model, tokenizer, sentence: str):
    """(tokens, α (k, T, T)) of one sentence."""
    encoded = tokenizer(sentence, return_tensors="pt", add_special_tokens=False)
    device = model.get_output_embeddings().weight.device
    outputs = model(input_ids=encoded.input_ids.to(device))
    if getattr(outputs, "contextualization", None) is None:
        raise ValueError(f"{type(model).__name__} exposes no contextualization weights")
    tokens = [tokenizer.decode([i]) for i in encoded.input_ids[0].tolist()]
    return tokens, outputs.contextualization[0].float().cpu()


def plot_contextualization(tokens: List[str], alpha: torch.Tensor, path, title: str = "") -> Path:
    """One heatmap per sense: α[sense, i, j], the weight of token j's sense for the prediction at position i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    senses = alpha.shape[0]
    columns = min(4, senses)
    rows = -(-senses // columns)
    size = 0.28 * len(tokens) + 1.5
    figure, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size), squeeze=False)
    labels = [token.strip() or repr(token) for token in tokens]
    for sense in range(rows * columns):
        axis = axes[sense // columns][sense % columns]
        if sense >= senses:
            axis.axis("off")
            continue
        axis.imshow(alpha[sense].numpy(), cmap="viridis", vmin=0, vmax=1)
        axis.set_title(f"sense {sense}", fontsize=9)
        axis.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        axis.set_yticks(range(len(labels)), labels, fontsize=7)
    figure.suptitle(title or "contextualization weights α (rows: predicting position, columns: source token)")
    figure.tight_layout(rect=(0, 0, 1, 0.97))  # leave the top strip to the title
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
