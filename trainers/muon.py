"""Muon (MomentUm Orthogonalized by Newton-Schulz) with an AdamW side for the parameters it does not handle.

Written from the published description (Keller Jordan's Muon write-up and the modded-nanogpt README): for each 2-D
weight of the hidden layers, keep a momentum buffer, take the Nesterov-style blend of gradient and buffer, replace it
by an approximation of its nearest semi-orthogonal matrix (5 iterations of the quintic Newton-Schulz map
X <- aX + (bA + cA²)X with A = XXᵀ and (a, b, c) = (3.4445, -4.7750, 2.0315), in bfloat16 on accelerators, after
normalising by the Frobenius norm), and step along it scaled by max(1, rows/cols)^½. Embeddings, the head and scalar
gains are not hidden-layer matrices and take AdamW steps in the same optimizer (param groups with `use_muon=False`),
so Trainer's scheduler, gradient clipping and checkpoint/resume handle one optimizer.

A group may set `split` > 1 to orthogonalise a fused weight as `split` stacked matrices (the speedrun's `qkv_w` is
Q, K and V, each orthogonalised on its own).
"""

from collections import defaultdict

import torch

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U Vᵀ of the SVD of each matrix in the last two dims (singular values pushed into ~[0.7, 1.2]).
    In bfloat16 on accelerators, as the speedrun; in float32 on the CPU, where bf16 matmuls are slower, not faster."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.float() if matrix.device.type == "cpu" else matrix.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: X Xᵀ is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(matrix.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """Param groups with `use_muon=True` (2-D weights) take Muon steps (`lr`, `momentum`, `nesterov`, `weight_decay`,
    `ns_steps`, `split`); the others AdamW steps (`lr`, `betas`, `eps`, `weight_decay`)."""

    def __init__(self, param_groups):
        groups = []
        for group in param_groups:
            group = dict(group)
            if group.get("use_muon"):
                group.setdefault("momentum", 0.95)
                group.setdefault("nesterov", True)
                group.setdefault("ns_steps", 5)
                group.setdefault("split", 1)
                bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if bad:
                    raise ValueError(f"Muon handles 2-D weights only, got shapes {bad}")
            else:
                group["use_muon"] = False
                group.setdefault("betas", (0.9, 0.999))
                group.setdefault("eps", 1e-8)
            group.setdefault("weight_decay", 0.0)
            groups.append(group)
        super().__init__(groups, {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if group["use_muon"]:
                self._muon_update(params, group)
            else:
                for param in params:
                    self._adamw_update(param, group)
        return loss

    def _muon_update(self, params, group):
        """One Muon step for the group: momentum on every weight at once, then Newton-Schulz on stacks of
        equally shaped matrices (one batched call per shape instead of one per weight)."""
        if not params:
            return
        for param in params:
            if "momentum_buffer" not in self.state[param]:
                self.state[param]["momentum_buffer"] = torch.zeros_like(param)
        grads = [param.grad for param in params]
        buffers = [self.state[param]["momentum_buffer"] for param in params]
        torch._foreach_lerp_(buffers, grads, 1 - group["momentum"])
        directions = torch._foreach_lerp(grads, buffers, group["momentum"]) if group["nesterov"] else buffers
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        by_shape = defaultdict(list)
        for index, param in enumerate(params):
            by_shape[tuple(param.shape)].append(index)
        for shape, indices in by_shape.items():
            matrices = torch.stack([directions[i] for i in indices]).view(len(indices), group["split"], -1, shape[-1])
            scale = max(1.0, matrices.size(-2) / matrices.size(-1)) ** 0.5
            updates = orthogonalize(matrices, group["ns_steps"]).unbind(0)
            torch._foreach_add_([params[i] for i in indices], [u.view(shape) for u in updates],
                                alpha=-group["lr"] * scale)

    def _adamw_update(self, param, group):
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        step = state["step"].item()
        state["exp_avg"].lerp_(param.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
        if group["weight_decay"]:
            param.mul_(1 - group["lr"] * group["weight_decay"])
        param.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1 ** step))


def muon_param_groups(model, args) -> list:
    """Muon for the 2-D weights of the blocks (`model.layers.*`; a fused QKV as three matrices), AdamW for everything
    else (embeddings, value embeddings, head, classifier, `scalars`), as the speedrun splits them."""
    muon, fused, adam = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".layers." in f".{name}" and param.dim() == 2:
            (fused if name.endswith("qkv_proj.weight") else muon).append(param)
        else:
            adam.append(param)
    groups = [dict(params=adam, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                   eps=args.adam_epsilon, weight_decay=args.weight_decay)]
    for params, split in ((muon, 1), (fused, 3)):
        if params:
            groups.append(dict(params=params, use_muon=True, lr=args.muon_learning_rate, momentum=args.muon_momentum,
                               weight_decay=args.muon_weight_decay, split=split))
    return groups


class MuonOptimizerMixin:
    """For `Trainer` subclasses: `args.optimizer == "muon"` builds `MuonWithAdamW` over `muon_param_groups`; anything
    else is Trainer's own optimizer (`optim`)."""

    def create_optimizer(self, model=None):
        if getattr(self.args, "optimizer", "adamw") != "muon":
            return super().create_optimizer(model)
        if self.optimizer is None:
            self.optimizer = MuonWithAdamW(muon_param_groups(self.accelerator.unwrap_model(self.model), self.args))
        return self.optimizer
