"""The last check of every converter: the mapped tensors are exactly the model's, with the model's shapes."""


def check_complete(mapped: dict, target: dict, source: str) -> None:
    """Raise ValueError naming the tensors the model needs and the checkpoint lacks, then those of the wrong shape.
    (Unknown checkpoint keys are refused earlier, by each converter's key table.)"""
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ValueError(f"the {source} checkpoint lacks tensors for {missing}")
    wrong = [f"{key}: checkpoint {tuple(mapped[key].shape)}, model {tuple(target[key].shape)}"
             for key in target if mapped[key].shape != target[key].shape]
    if wrong:
        raise ValueError("tensors with the wrong shape for the architecture: " + "; ".join(wrong))
