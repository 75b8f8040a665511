"""Probe of the authors' reference package ``network-pruner`` (import ``Network_Pruner``, v2.16).

Runs its public pipeline on a tiny random CNN without BatchNorm and 8x8 one-channel random data
of 10 classes, times each call, checks what each call returns and mutates, and cross-checks the
scores against independent re-computations:

    get_metrics -> results dict (U = "D_j", R = "RE_j_hat", and their ascending argsorts)
    get_ratios  -> per-layer *counts* of units to remove
    get_skeleton-> a smaller copy of the model (fresh weights)
    prune       -> (pruned model with copied weights, report dict)

Findings are written up in benchmarks/PEERS_NOTES.md.  Run:

    python benchmarks/_network_pruner_probe.py
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_CLASSES = 10
PER_CLASS = 40
BATCH = 50


def make_model() -> nn.Sequential:
    # named_modules() indices: 0 root, 1 conv, 2 relu, 3 conv, 4 relu, 5 pool, 6 flatten,
    # 7 linear, 8 relu, 9 linear (output)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, N_CLASSES),
    )


def make_loader(seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N_CLASSES).repeat_interleave(PER_CLASS)
    # class-dependent mean so that units have something to separate
    x = torch.randn(len(y), 1, 8, 8, generator=g) + 0.3 * y.view(-1, 1, 1, 1).float()
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def seed_all(s: int) -> None:
    random.seed(s)
    torch.manual_seed(s)


def quiet(fn, *a, **k):
    """Call fn, swallow its prints, return (result, seconds, captured stdout)."""
    buf = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        out = fn(*a, **k)
    return out, time.perf_counter() - t, buf.getvalue()


# ---------------------------------------------------------------- independent re-computations
def my_reconstruction(model: nn.Module, loader: DataLoader, name: str) -> torch.Tensor:
    """|sum over batches of sum_{samples, positions} z * dL/dz| for the layer's outputs."""
    model = copy.deepcopy(model).train()
    target = dict(model.named_modules())[name]
    acc = None
    store = {}
    h = target.register_forward_hook(lambda m, i, o: store.__setitem__("z", o))
    for xb, yb in loader:
        out = model(xb)
        z = store["z"]
        loss = nn.functional.cross_entropy(out, yb)
        (gz,) = torch.autograd.grad(loss, z)
        dims = [d for d in range(z.dim()) if d != 1]
        c = (z * gz).sum(dim=dims).detach()
        acc = c if acc is None else acc + c
    h.remove()
    return acc.abs()


def my_utilization(
    model, class_x: dict[int, torch.Tensor], layer_name: str, p: int = 128, seed: int = 0
) -> torch.Tensor:
    """max over class pairs of W1 (Linear) / sliced W1 with fixed directions (Conv)."""
    feats = {}
    store = {}
    mod = dict(model.named_modules())[layer_name]
    h = mod.register_forward_hook(lambda m, i, o: store.__setitem__("z", o))
    with torch.no_grad():
        for k, xk in class_x.items():
            model(xk)
            feats[k] = store["z"].flatten(2) if store["z"].dim() == 4 else store["z"].unsqueeze(-1)
    h.remove()
    n_units, d = next(iter(feats.values())).shape[1:]
    g = torch.Generator().manual_seed(seed)
    theta = torch.nn.functional.normalize(torch.randn(d, p, generator=g), dim=0) if d > 1 else None
    q = {}
    for k, f in feats.items():  # [N, C, D] -> sorted projections [N, C, P]
        proj = f if theta is None else f @ theta
        q[k] = proj.sort(dim=0).values
    best = torch.zeros(n_units)
    ks = sorted(q)
    for i in range(len(ks)):
        for j in range(i):
            dist = (q[ks[i]] - q[ks[j]]).abs().mean(dim=(0, 2))
            best = torch.maximum(best, dist)
    return best


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(np.asarray(a)))
    rb = np.argsort(np.argsort(np.asarray(b)))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    torch.set_num_threads(2)
    import importlib.metadata as md

    import Network_Pruner as NP

    print(f"network-pruner {md.version('network-pruner')}, torch {torch.__version__}")
    seed_all(0)
    model = make_model()
    loader = make_loader()
    named = list(model.named_modules())
    print(
        "named_modules indices:",
        [(i, n or "<root>", type(m).__name__) for i, (n, m) in enumerate(named)],
    )

    tmp = tempfile.mkdtemp(prefix="np_probe_")
    cpu = torch.device("cpu")
    before = copy.deepcopy(model.state_dict())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # to see whether the package silently flips it back

    # ---------------------------------------------------------------- get_metrics
    seed_all(0)
    results, t_metrics, log = quiet(
        NP.get_metrics,
        model,
        loader,
        device=cpu,
        results_save_path=os.path.join(tmp, "results.pkl"),
    )
    print(f"\nget_metrics (auto layers): {t_metrics:.3f}s; keys: {sorted(results)}")
    print("  stdout of get_metrics:", " | ".join(s for s in log.splitlines() if s.strip())[:300])
    for k in sorted(results):
        v = results[k]
        desc = (
            f"tensor{tuple(v.shape)} {v.dtype}"
            if torch.is_tensor(v)
            else f"{type(v).__name__}[{len(v)}]"
        )
        print(f"  {k}: {desc}")
    print(
        "  mutated: training =",
        model.training,
        "| requires_grad all True =",
        all(p.requires_grad for p in model.parameters()),
        "| grads left on params =",
        [n for n, p in model.named_parameters() if p.grad is not None],
        "| weights unchanged =",
        all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
    )

    # time the two scores separately with the package's internals (for the notes only)
    # the package facade hides its helpers; the submodule object is still in sys.modules
    FP = sys.modules["Network_Pruner.FAIR_Pruner"]
    seed_all(0)
    _, t_r, _ = quiet(
        lambda: [
            FP._get_reconstructionScore_fast(
                model, loader, layer_num=i, device=cpu, loss_function=nn.CrossEntropyLoss()
            )
            for i in (1, 3)
        ]
    )
    seed_all(0)
    cache = FP._build_comprehensive_index_cache(loader.dataset, class_num=N_CLASSES)
    samples = FP._sample_data_once(loader, cache, samples_per_class=32, max_classes=N_CLASSES)
    _, t_u, _ = quiet(
        lambda: [
            FP._get_layer_distance(
                model,
                layer_num=i,
                class_samples=samples,
                device=cpu,
                sample_classes=N_CLASSES,
                num_iterations=1,
            )
            for i in (1, 3)
        ]
    )
    print(f"  split: R for both layers {t_r:.3f}s, U for both layers {t_u:.3f}s")

    # ---------------------------------------------------------------- determinism
    seed_all(0)
    again, _, _ = quiet(
        NP.get_metrics, model, loader, device=cpu, results_save_path=os.path.join(tmp, "r2.pkl")
    )
    seed_all(1)
    other, _, _ = quiet(
        NP.get_metrics, model, loader, device=cpu, results_save_path=os.path.join(tmp, "r3.pkl")
    )
    print(
        "  same seeds -> identical U:",
        all(torch.equal(results[f"D_{j}"], again[f"D_{j}"]) for j in range(2)),
        "| other seed: max rel. change of U (conv):",
        f"{float(((results['D_0'] - other['D_0']).abs() / results['D_0']).max()):.3f}",
        "| R identical:",
        all(torch.equal(results[f"RE_{j}_hat"], other[f"RE_{j}_hat"]) for j in range(2)),
    )

    # ---------------------------------------------------------------- cross-checks
    for j, lname in enumerate(["0", "2"]):
        mine_r = my_reconstruction(model, loader, lname)
        rel = float(((mine_r - results[f"RE_{j}_hat"]).abs().max()) / mine_r.abs().max())
        print(f"  R layer {lname}: max rel diff vs |sum z*dL/dz| = {rel:.2e}")
    # U: exact for the hidden Linear (1-D W1); sliced W1 for convs (different random directions)
    seed_all(0)
    res_fc, t_fc, _ = quiet(
        NP.get_metrics,
        model,
        loader,
        [7],
        [7],
        device=cpu,
        results_save_path=os.path.join(tmp, "fc.pkl"),
    )
    seed_all(0)
    cache = FP._build_comprehensive_index_cache(loader.dataset, class_num=N_CLASSES)
    cx = FP._sample_data_once(loader, cache, samples_per_class=32, max_classes=N_CLASSES)
    mine_fc = my_utilization(model, cx, "6")
    print(
        f"  U hidden Linear (layers2prune=[7]), {t_fc:.3f}s: max abs diff vs exact W1 max-pair ="
        f" {float((mine_fc - res_fc['D_0']).abs().max()):.2e}"
    )
    for j, lname in enumerate(["0", "2"]):
        mine_u = my_utilization(model, cx, lname)
        print(
            f"  U conv {lname}: Spearman vs my sliced W1 (own directions) = "
            f"{spearman(mine_u, results[f'D_{j}']):.3f}, mean ratio "
            f"{float((results[f'D_{j}'] / mine_u).mean()):.3f}"
        )

    # ---------------------------------------------------------------- get_ratios
    for alpha in (0.005, 0.05, 0.2):
        counts, t_rat, _ = quiet(NP.get_ratios, model, results, ToD_level=alpha)
        print(
            f"get_ratios(ToD_level={alpha}) -> {counts} (units to REMOVE per layer), "
            f"{t_rat * 1e3:.2f} ms"
        )
    counts, _, _ = quiet(NP.get_ratios, model, results, ToD_level=0.2)

    # ---------------------------------------------------------------- get_skeleton / prune
    x = next(iter(loader))[0]
    skel, t_skel, _ = quiet(NP.get_skeleton, model, counts, x)
    print(
        f"get_skeleton: {t_skel:.3f}s -> {type(skel).__name__}, shapes "
        f"{[tuple(m.weight.shape) for m in skel.modules() if hasattr(m, 'weight')]}"
    )
    (pruned, report), t_prune, _ = quiet(
        NP.prune,
        skel,
        model,
        results,
        counts,
        example_inputs=x,
        device="cpu",
        pruned_model_save_path=os.path.join(tmp, "pruned.pht"),
    )
    print(f"prune: {t_prune:.3f}s -> report {report}; pruned is skeleton: {pruned is skel}")
    # oracle: pruned(x) == original with the dropped conv channels zeroed at the conv output
    # auto selection = every Conv/Linear except the last one, so the hidden Linear is pruned too
    auto_idx = (1, 3, 7)
    keep = {}
    for j, (idx, k) in enumerate(zip(auto_idx, counts, strict=True)):
        order = results[f"D_{j}_s2b_idx"]
        keep[named[idx][0]] = sorted(order[k:]) if k < len(order) else sorted(order[:1])
    masks = []
    for name, kept in keep.items():
        mod = dict(model.named_modules())[name]
        width = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        m = torch.zeros(width)
        m[kept] = 1
        masks.append(
            mod.register_forward_hook(
                lambda _m, _i, o, m=m: o * m.view(1, -1, *([1] * (o.dim() - 2)))
            )
        )
    with torch.no_grad():
        ref = model(x)
        got = pruned(x)
    for h in masks:
        h.remove()
    print(
        "  kept (lowest-U removed):",
        {k: len(v) for k, v in keep.items()},
        "| pruned == masked original:",
        torch.allclose(ref, got, atol=1e-5),
    )
    print("  files written:", sorted(os.listdir(tmp)))

    # ---------------------------------------------------------------- side effects
    model.train()
    quiet(NP.get_skeleton, model, counts, x)
    print("get_skeleton leaves the user's model in training mode:", model.training)
    bn_model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, N_CLASSES),
    ).eval()
    rm0 = bn_model[1].running_mean.clone()
    quiet(
        FP._get_reconstructionScore_fast,
        bn_model,
        loader,
        layer_num=1,
        device=cpu,
        loss_function=nn.CrossEntropyLoss(),
    )
    print(
        "R scoring changes BatchNorm running_mean:",
        not torch.equal(rm0, bn_model[1].running_mean),
        "| model left in training mode:",
        bn_model.training,
    )


if __name__ == "__main__":
    main()
