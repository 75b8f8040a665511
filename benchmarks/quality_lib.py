"""Pieces of the quality benchmark: data, cached trained models, the authors' package, helpers.

The package (``pip install --no-deps network-pruner==2.16``, import ``Network_Pruner``) scores
with ``get_metrics``, plans with ``get_ratios`` at a ToD level and prunes with ``get_skeleton`` +
``prune``. It runs on deep copies: its R pass runs the model in train mode and would change
BatchNorm running statistics; ``prune`` copies weights from an untouched copy.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import os
import random
import time
import traceback
from pathlib import Path

import numpy as np
import peers
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import fairfx
import fairfx.apps.digits as digits

ART = Path(__file__).resolve().parent.parent / "artifacts" / "bench_quality"
DEFAULT_EPOCHS = {"vgg": 10, "resnet": 15, "densenet": 12}
ROUND_STEPS = 3  # rounds of fairfx.compress(rounds=...) and steps of TP's iterative pruning


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def quiet():
    """Swallow the prints of the authors' package."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def timed_block():
    """A timer with the cyclic collector paused (as timeit does); yields a 1-element list."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start
        if was:
            gc.enable()


def make_model(arch: str, args) -> nn.Module:
    if arch == "vgg":
        return digits.VGGStyle(width=args.width)
    if arch == "resnet":
        return digits.ResNetStyle(width=args.width)
    if arch == "densenet":
        return digits.DenseNetStyle(growth=args.growth)
    raise SystemExit(f"unknown architecture {arch!r}")


def trained_model(arch: str, seed: int, split: digits.Split, args) -> tuple[nn.Module, float]:
    """Train (or load the cached state_dict of) ``arch`` for ``seed``; returns (model, seconds)."""
    epochs = args.train_epochs or DEFAULT_EPOCHS[arch]
    size = args.growth if arch == "densenet" else args.width
    path = ART / "models" / f"{arch}_{size}_e{epochs}_seed{seed}.pt"
    torch.manual_seed(seed)
    model = make_model(arch, args)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0
    start = time.perf_counter()
    digits.train(model, split, epochs=epochs, seed=seed)
    took = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), took


def calibration_set(split: digits.Split, per_class: int, seed: int):
    """``per_class`` training samples of every class, a seeded choice, in data order."""
    g = torch.Generator().manual_seed(10_000 + seed)
    keep = []
    for c in range(10):
        idx = torch.nonzero(split.y_train == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    idx = torch.cat(keep).sort().values
    return split.x_train[idx], split.y_train[idx]


def train_loader(split: digits.Split, seed: int) -> DataLoader:
    """Shuffled train batches, the same order for every pruned model of one seed."""
    g = torch.Generator().manual_seed(20_000 + seed)
    return DataLoader(
        TensorDataset(split.x_train, split.y_train), batch_size=64, shuffle=True, generator=g
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was)
    return int(counter.get_total_flops() // 2)


# ---------------------------------------------------------------------------- network-pruner
def _np():
    import Network_Pruner as NP  # the authors' package

    return NP


def np_dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    """A map-style dataset the package can read labels from (``.targets``, ``.classes``)."""
    ds = TensorDataset(x, y)
    ds.targets = y  # type: ignore[attr-defined]
    ds.classes = [str(c) for c in range(int(y.max()) + 1)]  # type: ignore[attr-defined]
    return ds


def np_unit_counts(model: nn.Module) -> list[int]:
    from Network_Pruner.FAIR_Pruner import _auto_prunable_layer_indices

    named = list(model.named_modules())
    out = []
    for i in _auto_prunable_layer_indices(model, exclude_output_layer=True):
        m = named[i][1]
        out.append(int(m.out_channels if hasattr(m, "out_channels") else m.out_features))
    return out


def np_check(model: nn.Module, example: torch.Tensor, tmp: str) -> str | None:
    """Run the package's skeleton + prune on fake scores (remove a quarter of every layer);
    None when it works, else the reason.  Cheap, so an unsupported architecture costs no
    scoring time."""
    NP = _np()
    sizes = np_unit_counts(model)
    results = {}
    for j, n in enumerate(sizes):
        results[f"D_{j}_s2b_idx"] = list(range(n))
        results[f"RE_{j}_hat_s2b_idx"] = list(range(n))
    counts = [n // 4 for n in sizes]
    stage = "get_skeleton"
    try:
        with quiet():
            skel = NP.get_skeleton(copy.deepcopy(model), counts, example)
            stage = "prune"
            pruned, _ = NP.prune(
                skel,
                copy.deepcopy(model),
                results,
                counts,
                example_inputs=example,
                pruned_model_save_path=os.path.join(tmp, "check.pht"),
                device=torch.device("cpu"),
            )
            stage = "forward of the pruned model"
            out = pruned(example)
        if tuple(out.shape) != (example.shape[0], 10):
            return f"pruned model returns shape {tuple(out.shape)}"
    except Exception as exc:  # the reason goes into the table
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return (
            f"{stage} raised {type(exc).__name__} (in {where.name}): "
            f"{str(exc).splitlines()[0][:160]}"
        )
    return None


class DenseNetTorchFlatten(digits.DenseNetStyle):
    """``digits.DenseNetStyle`` with ``torch.flatten(t, 1)`` instead of ``t.flatten(1)``: the same
    function (same weights, same outputs).  network-pruner's ``get_skeleton`` does not resize the
    output Linear when the pooled features reach it through the tensor *method* ``flatten``."""

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1), 1))


def np_variant(model: nn.Module, example: torch.Tensor, args) -> nn.Module:
    """The workaround model for the package: same weights, torch.flatten in forward."""
    if not isinstance(model, digits.DenseNetStyle):
        raise RuntimeError("no workaround variant for this architecture")
    other = DenseNetTorchFlatten(growth=args.growth)
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        if not torch.equal(other(example), model(example)):
            raise RuntimeError("the workaround variant computes something else")
    return other


class NPScores:
    """get_metrics once per model; plans for a parameter budget by bisecting the ToD level."""

    def __init__(self, model, calib_x, calib_y, example, seed, tmp):
        NP = _np()
        self.model = copy.deepcopy(model).eval()  # untouched weights for the pruned copies
        self.example = example
        self.tmp = tmp
        scoring_copy = copy.deepcopy(model)
        loader = DataLoader(np_dataset(calib_x, calib_y), batch_size=64, shuffle=False)
        seed_all(seed)  # the package draws samples and directions from the global generators
        with quiet(), timed_block() as t:
            self.results = NP.get_metrics(
                scoring_copy,
                loader,
                device=torch.device("cpu"),
                the_samplesize_for_compute_distance=32,
                results_save_path=os.path.join(tmp, "results.pkl"),
            )
        self.seconds = t[0]
        self.n0 = count_params(self.model)
        self._skeletons: dict[tuple[int, ...], int] = {}

    def counts(self, level: float) -> list[int]:
        with quiet():
            return _np().get_ratios(self.model, self.results, ToD_level=level)

    def kept(self, counts: list[int]) -> float:
        key = tuple(counts)
        if key not in self._skeletons:
            with quiet():
                skel = _np().get_skeleton(self.model, counts, self.example)
            self._skeletons[key] = count_params(skel)
        return self._skeletons[key] / self.n0

    def prune_to(self, keep: float, steps: int = 20):
        """(pruned model, ToD level, achieved kept fraction, final plan+prune seconds)."""
        lo, hi = 0.0, 1.0
        tried = []
        for level in (lo, hi):
            tried.append((level, self.counts(level)))
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            c = self.counts(mid)
            tried.append((mid, c))
            if self.kept(c) > keep:
                lo = mid
            else:
                hi = mid
        level, counts = min(tried, key=lambda t: (abs(self.kept(t[1]) - keep), -self.kept(t[1])))
        NP = _np()
        with quiet(), timed_block() as t:
            counts = NP.get_ratios(self.model, self.results, ToD_level=level)
            skel = NP.get_skeleton(self.model, counts, self.example)
            pruned, _ = NP.prune(
                skel,
                self.model,
                self.results,
                counts,
                example_inputs=self.example,
                pruned_model_save_path=os.path.join(self.tmp, "pruned.pht"),
                device=torch.device("cpu"),
            )
        return pruned, level, count_params(pruned) / self.n0, t[0]


def _finetune(model: nn.Module, split, seed: int, epochs: int, val=None, lr=1e-3) -> float:
    torch.manual_seed(seed)
    with timed_block() as t:
        fairfx.finetune(
            model, train_loader(split, seed), epochs=epochs, lr=lr, val_data=val, progress=False
        )
    return t[0]


def tp_iterative(model, example, calib, budget, split, seed) -> nn.Module:
    """Torch-Pruning Taylor global in ROUND_STEPS geometric steps (the schedule of
    ``compress(rounds=...)``), recalibrated and fine-tuned one epoch between steps."""
    n0 = count_params(model)
    current = model
    for i in range(1, ROUND_STEPS + 1):
        keep = n0 * budget ** (i / ROUND_STEPS) / count_params(current)
        current = peers.tp_prune_to_budget(
            current,
            example,
            max(0.0, 1.0 - keep),
            global_pruning=True,
            importance="taylor",
            calib=calib,
            tol=0.01,
            max_iter=12,
        )
        if i < ROUND_STEPS:
            current = fairfx.recalibrate(current, calib)
            _finetune(current, split, seed, 1)
    return current
