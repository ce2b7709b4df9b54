"""Muon (MomentUm Orthogonalized by Newton-Schulz) with an AdamW side for the parameters it does not handle.

Muon (Keller Jordan's write-up; the modded-nanogpt speedrun): for each 2-D weight of the hidden layers, keep a
momentum buffer, take the Nesterov blend of gradient and buffer, replace it by an approximation of its nearest
semi-orthogonal matrix (5 iterations of the quintic Newton-Schulz map X <- aX + (bA + cA²)X with A = XXᵀ and
(a, b, c) = (3.4445, -4.7750, 2.0315), after dividing by the Frobenius norm), and step along it scaled by
max(1, rows/cols)^½, with decoupled weight decay.

How this relates to `torch.optim.Muon` (torch >= 2.9; its code is the same in 2.11 and 2.13): for a plain 2-D weight
the update is torch's, operation for operation: the same coefficients, the norm clamped at eps = 1e-7, a tall matrix
transposed, the two fused multiply-adds of each iteration (`addmm` there, `baddbmm` here), the momentum and Nesterov
lerps, weight decay with the unadjusted lr, its `adjust_lr_fn="original"` scale and its state key `momentum_buffer`.
In bfloat16 the weights after each step equal torch's bit for bit, on the CPU (tests/test_optimizers.py) and on an
H200 with torch 2.11, for stacked weights too. We still run our own step rather than one internal `torch.optim.Muon`
per group, because torch's cannot do three things we need:
* batch: torch orthogonalises one weight after the other; we stack the weights of one shape and iterate on the
  stack. Measured on an H200 (torch 2.11), the Muon step of modded_gpt_small's 24 matrices takes 1.5-2.2 ms with the
  stack and 9.5 ms with `torch.optim.Muon`; GPT-2 small's 36 matrices 4.2 against 20.1 ms, GPT-2 medium's 72
  15.5 against 33.6 ms.
* run in float32 on the CPU: torch iterates in bfloat16 on every device. On the CPU bf16 matmuls are slower, not
  faster, and a bf16 Newton-Schulz turns the last-bit differences of a gradient summed in another order (gradient
  accumulation, two processes) into changes of up to 7.6e-4 in the weights after one step, where
  tests/test_clm_trainer.py demands 1e-5. On the CPU our update is the float32 Newton-Schulz, a bf16 rounding
  (7e-3 to 1.2e-2 of lr) away from torch's.
* `split`: a group may set `split` > 1 to orthogonalise a fused weight as `split` stacked matrices (the speedrun's
  `qkv_w` is Q, K and V, each orthogonalised on its own and scaled by its own shape; torch would take the fused
  (3d, d) weight as one matrix and scale its step by √3).
Torch's functional form lives in the private `torch.optim._muon` and takes one 2-D matrix at a time, so it would give
none of the three either.

Embeddings, the head and scalar gains are not hidden-layer matrices and take AdamW steps in the same optimizer
(param groups with `use_muon=False`), so Trainer's scheduler, gradient clipping and checkpoint/resume see one
optimizer. The AdamW step itself is torch's public functional `torch.optim.adamw.adamw` over the state torch's `AdamW`
keeps (`step`, `exp_avg`, `exp_avg_sq`): its weights equal `torch.optim.AdamW`'s bit for bit (CPU and H200).
"""

import math
from collections import defaultdict

import torch
from torch.optim.adamw import adamw

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NORM_EPS = 1e-7


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on accelerators, as the speedrun and torch; float32 on the CPU (see the module docstring)."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U Vᵀ of the SVD of each matrix in the last two dims (singular values pushed into ~[0.7, 1.2]),
    computed as `torch.optim.Muon` computes it for one matrix."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.to(newton_schulz_dtype(matrix.device))
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: X Xᵀ is then the smaller Gram matrix
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=NORM_EPS)
    stack = x.reshape(-1, *x.shape[-2:])
    for _ in range(steps):
        gram = stack @ stack.mT
        stack = torch.baddbmm(stack, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), stack, beta=a)
    x = stack.view(x.shape)
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
            if params:
                (self._muon_update if group["use_muon"] else self._adamw_update)(params, group)
        return loss

    def _muon_update(self, params, group):
        """One Muon step for the group: momentum on every weight at once, then Newton-Schulz on stacks of
        equally shaped matrices (one batched call per shape instead of one per weight)."""
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
            scale = math.sqrt(max(1.0, matrices.size(-2) / matrices.size(-1)))
            updates = orthogonalize(matrices, group["ns_steps"]).unbind(0)
            torch._foreach_add_([params[i] for i in indices], [u.view(shape) for u in updates],
                                alpha=-group["lr"] * scale)

    def _adamw_update(self, params, group):
        for param in params:
            state = self.state[param]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
        states = [self.state[param] for param in params]
        beta1, beta2 = group["betas"]
        adamw(params, [param.grad for param in params], [state["exp_avg"] for state in states],
              [state["exp_avg_sq"] for state in states], [], [state["step"] for state in states], amsgrad=False,
              beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
              maximize=False)


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
