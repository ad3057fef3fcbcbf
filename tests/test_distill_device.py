"""Every distillation method's auxiliary loss is device-aware (tiny, seeded).

Without a GPU these check what a CUDA run depends on: no tensor is created on the host inside
``forward`` (every factory call names a device, or is a ``*_like`` / ``new_*`` call), every tensor
of a loss is a registered parameter or buffer (so ``.to`` moves it), and the methods' own
optimisers still hold the module's parameters after ``.to`` (``Module.to`` keeps their identity).
With a GPU, the same losses train towers on CUDA.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from avret.data import SynthConfig, make_vegas_synth
from avret.distill.configs import KDConfig, MIKDConfig, MSDConfig, VideoAdviserConfig
from avret.distill.context import MethodContext, TeacherOutputs
from avret.distill.methods import METHODS, Method, build_method
from avret.distill.step1 import RelevanceHead
from avret.models.towers import TowerConfig
from avret.train.tower_training import Batch, TrainConfig, train_towers

EMBED = 8
VARIANTS = {  # name -> (method, its typed settings)
    "kd": ("kd", KDConfig()),
    "videoadviser": ("videoadviser", VideoAdviserConfig()),
    "videoadviser-per-clip": ("videoadviser", VideoAdviserConfig(student_target="per-clip")),
    "msd": ("msd", MSDConfig(teacher_epochs=2, teacher_hidden=16)),
    "msd-learned": ("msd", MSDConfig(teacher_epochs=2, teacher_hidden=16, weighting="learned")),
    "mi-kd": ("mi-kd", MIKDConfig(hidden=16, proj_dim=8)),
}
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.as_tensor, torch.arange,
             torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace}


class HostFactoryCalls(TorchFunctionMode):
    """Records tensor factory calls that name no device (they would allocate on the CPU).

    A draw from an explicit (CPU, seeded) generator is allowed: it is reproducible on every device
    and the caller moves it. So are torch's own calls (an optimiser's CPU ``step`` counter).
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs and "generator" not in kwargs:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not caller.startswith("torch."):
                self.calls.append(f"{func.__name__} in {caller}")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def data():
    ds = make_vegas_synth(SynthConfig(n_clips=160, seed=1)).with_validation_split(0.2, seed=0)
    return ds


def build(variant: str, ds) -> nn.Module:
    train, val = ds.subset("train"), ds.subset("val")
    post = torch.softmax(torch.randn(len(train), ds.num_classes, generator=torch.Generator().manual_seed(0)), -1)
    method, config = VARIANTS[variant]
    ctx = MethodContext(train, val, TeacherOutputs(post.log(), post, RelevanceHead()), EMBED, 0, device="cpu")
    aux = build_method(method, ctx, config)
    assert isinstance(aux, nn.Module)
    return aux


def batch_of(ds, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> Batch:
    train = ds.subset("train")
    return Batch(rows, torch.from_numpy(train.audio)[rows].to(dtype), torch.from_numpy(train.visual)[rows].to(dtype),
                 torch.from_numpy(train.labels)[rows].long())


def embeddings(n: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    a, v = (nn.functional.normalize(torch.randn(n, EMBED, generator=gen, dtype=dtype), dim=-1) for _ in range(2))
    return a.requires_grad_(True), v.requires_grad_(True)


def test_every_method_with_an_auxiliary_loss_is_checked():
    assert {method for method, _ in VARIANTS.values()} == set(METHODS) - {"none"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_creates_no_host_tensors(variant, data):
    aux = build(variant, data)
    batch = batch_of(data, torch.arange(24))
    audio, visual = embeddings(24)
    with HostFactoryCalls() as mode:
        loss, logs = aux(batch, audio, visual)
        loss.backward()
    assert mode.calls == [], f"{variant}: factory calls without a device in forward: {mode.calls}"
    assert torch.isfinite(loss) and logs and audio.grad is not None


def plain_tensor_attributes(module: nn.Module) -> list[str]:
    """Tensors held as plain attributes (``.to`` would leave them behind)."""
    return [f"{name}.{k}" for name, m in module.named_modules() for k, v in vars(m).items() if torch.is_tensor(v)]


def optimisers(module: nn.Module) -> list[torch.optim.Optimizer]:
    return [v for m in module.modules() for v in vars(m).values() if isinstance(v, torch.optim.Optimizer)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_is_registered_and_own_optimisers_survive_to(variant, data):
    aux = build(variant, data)
    assert plain_tensor_attributes(aux) == []
    opts = optimisers(aux)
    before = [[id(p) for g in o.param_groups for p in g["params"]] for o in opts]
    aux.to(torch.float64)  # the same Module._apply path as .to(device)
    assert all(t.dtype == torch.float64 for t in [*aux.parameters(), *aux.buffers()] if t.is_floating_point())
    owned = {id(p) for p in nn.Module.parameters(aux)}
    for o, ids in zip(opts, before, strict=True):
        params = [p for g in o.param_groups for p in g["params"]]
        assert [id(p) for p in params] == ids and set(ids) <= owned  # still the module's own parameters
    snapshot = [[p.detach().clone() for g in o.param_groups for p in g["params"]] for o in opts]
    batch = batch_of(data, torch.arange(24), torch.float64)
    audio, visual = embeddings(24, torch.float64)
    loss, _ = aux(batch, audio, visual)
    loss.backward()
    assert loss.dtype == torch.float64
    for o, snap in zip(opts, snapshot, strict=True):  # each own optimiser stepped the moved parameters
        params = [p for g in o.param_groups for p in g["params"]]
        assert any(not torch.equal(p, s) for p, s in zip(params, snap, strict=True))
        assert all(st[k].dtype == torch.float64 for st in o.state.values() for k in st if k != "step")
    if variant in ("msd-learned", "mi-kd"):
        assert opts, "expected the method's own optimiser(s)"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_methods_train_towers_on_cuda(variant, data):
    aux = build(variant, data)
    result = train_towers(data, TowerConfig(embed_dim=EMBED, hidden_dim=32), TrainConfig(epochs=2, batch_size=32,
                                                                                           device="cuda"),
                          aux_loss=aux)
    assert result.device.startswith("cuda")
    assert all(t.device.type == "cuda" for t in [*nn.Module.parameters(aux), *aux.buffers()])
    assert all(st[k].device.type == "cuda" for o in optimisers(aux) for st in o.state.values() for k in st
               if k != "step")


@needs_cuda
def test_msd_teacher_trains_on_the_context_device(data):
    train, val = data.subset("train"), data.subset("val")
    ctx = MethodContext(train, val, None, EMBED, 0, device="cuda")
    aux = build_method("msd", ctx, VARIANTS["msd"][1])
    assert aux.teacher_full.device.type == "cpu"  # built on the CPU; the tower trainer moves it
    assert aux.constant_logs["msd_teacher_val_acc"] > 0


def test_pipeline_hands_the_towers_device_to_the_method(monkeypatch, tmp_path, data):
    from avret.distill.pipeline import DistillConfig, run_distillation

    seen: list[MethodContext] = []
    monkeypatch.setitem(METHODS, "msd", Method(MSDConfig, lambda ctx, cfg: seen.append(ctx)))
    run_distillation(data, tmp_path / "run", DistillConfig(method="msd"),
                     TrainConfig(epochs=1, batch_size=64, device="auto"), TowerConfig(embed_dim=EMBED, hidden_dim=16))
    assert [c.device for c in seen] == ["auto"]
