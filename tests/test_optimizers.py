"""Our optimizer pieces against torch's maintained ones: `MuonWithAdamW` against `torch.optim.Muon` and
`torch.optim.AdamW`, `ExponentialMovingAverage` against `torch.optim.swa_utils`. Where ours is torch's computation the
tests demand equality bit for bit; where it deliberately differs, they measure the difference the docstrings state."""

import copy
import inspect

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainers import muon
from trainers.ema import ExponentialMovingAverage
from trainers.muon import NEWTON_SCHULZ, NORM_EPS, MuonWithAdamW

MUON = dict(lr=0.02, momentum=0.9, weight_decay=0.1)


def random_like_shapes(shapes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def run_both(ours, theirs, ours_params, theirs_params, grads_per_step):
    """Steps both optimizers on the same gradients; yields after each step."""
    for grads in grads_per_step:
        for param, grad in zip(ours_params, grads):
            param.grad = grad.clone()
        for param, grad in zip(theirs_params, grads):
            param.grad = grad.clone()
        ours.step()
        theirs.step()
        yield


def twin_params(shapes, seed=0):
    start = random_like_shapes(shapes, seed)
    return ([torch.nn.Parameter(w.clone()) for w in start], [torch.nn.Parameter(w.clone()) for w in start])


@pytest.fixture
def bfloat16_newton_schulz(monkeypatch):
    """Our Newton-Schulz in torch's precision (bf16) on the CPU too."""
    monkeypatch.setattr(muon, "newton_schulz_dtype", lambda device: torch.bfloat16)


def test_muon_constants_and_defaults_are_torchs():
    defaults = {name: p.default for name, p in inspect.signature(torch.optim.Muon).parameters.items()}
    assert defaults["ns_coefficients"] == NEWTON_SCHULZ and defaults["eps"] == NORM_EPS
    group = MuonWithAdamW([dict(params=[torch.nn.Parameter(torch.zeros(2, 2))], use_muon=True, lr=0.1)]).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["ns_steps"]) == (
        defaults["momentum"], defaults["nesterov"], defaults["ns_steps"])


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_is_torch_muons_bit_for_bit_in_bfloat16(bfloat16_newton_schulz, nesterov):
    """Tall, wide and square weights, two of one shape (one stacked Newton-Schulz call), momentum, weight decay and
    the "original" lr scale: every step's weights and momentum buffers equal torch's exactly."""
    shapes = [(48, 16), (48, 16), (16, 40), (24, 24)]
    ours_params, theirs_params = twin_params(shapes)
    ours = MuonWithAdamW([dict(params=ours_params, use_muon=True, nesterov=nesterov, **MUON)])
    theirs = torch.optim.Muon(theirs_params, nesterov=nesterov, adjust_lr_fn="original", **MUON)
    grads = [random_like_shapes(shapes, seed) for seed in (1, 2, 3)]
    for _ in run_both(ours, theirs, ours_params, theirs_params, grads):
        for a, b in zip(ours_params, theirs_params):
            assert torch.equal(a, b)
            assert torch.equal(ours.state[a]["momentum_buffer"], theirs.state[b]["momentum_buffer"])
    assert max(float((a.detach() - w).abs().max()) for a, w in zip(ours_params, random_like_shapes(shapes, 0))) > 1e-2


def test_split_is_torch_muon_on_each_block(bfloat16_newton_schulz):
    """A fused (3d, d) weight with split=3 takes exactly the steps torch.optim.Muon takes on Q, K and V apart (torch
    on the fused weight would orthogonalise it as one matrix and scale the step by √3)."""
    d = 16
    (fused,), _ = twin_params([(3 * d, d)])
    blocks = [torch.nn.Parameter(block.detach().clone()) for block in fused.chunk(3)]
    ours = MuonWithAdamW([dict(params=[fused], use_muon=True, split=3, **MUON)])
    theirs = torch.optim.Muon(blocks, adjust_lr_fn="original", **MUON)
    for seed in (1, 2):
        (grad,) = random_like_shapes([(3 * d, d)], seed)
        fused.grad = grad.clone()
        for block, grad_block in zip(blocks, grad.chunk(3)):
            block.grad = grad_block.clone()
        ours.step()
        theirs.step()
        assert torch.equal(fused.detach(), torch.cat([block.detach() for block in blocks]))


def newton_schulz_float64(matrix, steps=5):
    a, b, c = NEWTON_SCHULZ
    x = matrix.double()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_muon_on_the_cpu_is_the_float32_newton_schulz(shape):
    """On the CPU ours iterates in float32, torch in bfloat16. One step against the float64 computation, measured:
    ours 1.4e-5 of lr off (the float32 rounding of weights of size ~2.5), torch 7e-3 to 1.2e-2 of lr (bf16 rounding;
    the update itself is up to 0.75 of lr)."""
    (start,) = random_like_shapes([shape], 0)
    (grad,) = random_like_shapes([shape], 1)
    ours_params, theirs_params = twin_params([shape])
    ours = MuonWithAdamW([dict(params=ours_params, use_muon=True, **MUON)])
    theirs = torch.optim.Muon(theirs_params, adjust_lr_fn="original", **MUON)
    list(run_both(ours, theirs, ours_params, theirs_params, [[grad]]))
    direction = grad.lerp(grad * (1 - MUON["momentum"]), MUON["momentum"])  # first step: buffer = (1 - m) g
    scale = max(1, shape[0] / shape[1]) ** 0.5
    exact = start.double() * (1 - MUON["lr"] * MUON["weight_decay"]) - MUON["lr"] * scale * newton_schulz_float64(
        direction)
    off = lambda params: float((params[0].detach().double() - exact).abs().max()) / MUON["lr"]  # noqa: E731
    assert off(ours_params) < 3e-5
    assert 3e-3 < off(theirs_params) < 3e-2


def test_adamw_groups_are_torch_adamw_bit_for_bit_and_resume():
    """20 steps with weight decay equal torch.optim.AdamW's exactly (same state keys too); a state dict saved after
    8 steps and loaded into a new optimizer continues exactly as the uninterrupted one."""
    shapes = [(40, 24), (24,)]
    hyper = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    ours_params, theirs_params = twin_params(shapes)
    ours = MuonWithAdamW([dict(params=ours_params, **hyper)])
    theirs = torch.optim.AdamW(theirs_params, **hyper)
    grads = [random_like_shapes(shapes, seed) for seed in range(1, 21)]
    for step, _ in enumerate(run_both(ours, theirs, ours_params, theirs_params, grads), start=1):
        assert all(torch.equal(a, b) for a, b in zip(ours_params, theirs_params))
        assert all(sorted(ours.state[a]) == sorted(theirs.state[b]) for a, b in zip(ours_params, theirs_params))
        if step == 8:
            saved_state = copy.deepcopy(ours.state_dict())
            resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in ours_params]
    resumed = MuonWithAdamW([dict(params=resumed_params, **hyper)])
    resumed.load_state_dict(saved_state)
    for step_grads in grads[8:]:
        for param, grad in zip(resumed_params, step_grads):
            param.grad = grad.clone()
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, ours_params))


def warmup_ema_avg_fn(decay):
    """The MDLM decay rule as a swa_utils multi_avg_fn: AveragedModel's first update copies the weights, so its
    n-th averaging call (n_averaged = n) is our n-th update."""
    def average(averaged, current, n_averaged):
        get_ema_multi_avg_fn(min(decay, (1 + int(n_averaged)) / (10 + int(n_averaged))))(averaged, current, n_averaged)
    return average


def drifting_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3, bias=False))
    model[0].bias.requires_grad_(False)  # frozen: not averaged by ours
    return model.to(dtype)


def train_a_little(model, generator):
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator).to(param.dtype))


def averaged_weights(averaged_model):
    return {name: param.detach() for name, param in averaged_model.module.named_parameters()}


def largest_gap(ema, weights):
    return max(float((shadow - weights[name]).abs().max()) for name, shadow in zip(ema.names, ema.shadow))


def test_ema_is_averaged_model_with_the_mdlm_decay_bit_for_bit():
    """50 updates of ours equal AveragedModel with get_ema_multi_avg_fn at the MDLM decay_k; a fixed decay (what
    get_ema_multi_avg_fn alone gives) is another average."""
    model, generator = drifting_model(), torch.Generator().manual_seed(1)
    ours = ExponentialMovingAverage(model, decay=0.999)
    theirs = AveragedModel(model, multi_avg_fn=warmup_ema_avg_fn(0.999))
    fixed = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    theirs.update_parameters(model)
    fixed.update_parameters(model)
    for _ in range(50):
        train_a_little(model, generator)
        ours.update(model)
        theirs.update_parameters(model)
        fixed.update_parameters(model)
    averaged = averaged_weights(theirs)
    assert ours.names == [name for name, param in model.named_parameters() if param.requires_grad] != list(averaged)
    assert largest_gap(ours, averaged) == 0.0
    assert largest_gap(ours, averaged_weights(fixed)) > 0.1


def test_ema_of_a_bfloat16_model_is_kept_in_float32():
    """AveragedModel copies the module in its dtype: over 200 small drifts its bf16 average strays 9e-3 to 2.4e-2
    from the float32 one (measured), which ours computes exactly (its shadow is float32 whatever the model's dtype)."""
    model, generator = drifting_model(torch.bfloat16), torch.Generator().manual_seed(1)
    ours = ExponentialMovingAverage(model, decay=0.999)
    reference = AveragedModel(model, multi_avg_fn=warmup_ema_avg_fn(0.999))
    reference.module.float()
    in_bf16 = AveragedModel(model, multi_avg_fn=warmup_ema_avg_fn(0.999))
    for averaged in (reference, in_bf16):
        averaged.update_parameters(model)
    for _ in range(200):
        train_a_little(model, generator)
        ours.update(model)
        reference.update_parameters(copy.deepcopy(model).float())
        in_bf16.update_parameters(model)
    assert all(shadow.dtype == torch.float32 for shadow in ours.shadow)
    exact = averaged_weights(reference)
    bf16 = averaged_weights(in_bf16)
    assert largest_gap(ours, exact) == 0.0
    assert max(float((bf16[name].float() - exact[name]).abs().max()) for name in ours.names) > 5e-3
