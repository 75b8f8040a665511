"""Thin adapters around the peer tools used by the benchmarks (never imported by fairfx).

Torch-Pruning (``pip install torch-pruning``, import ``torch_pruning``), tested with 1.6.1.

Ratio semantics in Torch-Pruning, worth keeping in mind when reading its numbers:

* ``pruning_ratio`` is a *channel* ratio.  With ``global_pruning=False`` every prunable
  group (the channels a root Conv/Linear shares with everything coupled to it) loses
  ``C - int(C * (1 - ratio))`` channels, ranked by the group importance.  Because a conv loses
  both input and output channels, ``ratio=0.5`` removes roughly 75% of a conv's weights.
* With ``global_pruning=True`` all groups go into one ranking; the threshold removes
  ``total - int(total * (1 - ratio))`` channels overall, capped per layer by
  ``max_pruning_ratio``.  A group whose selection would empty a layer is skipped entirely
  (``DependencyGraph.check_pruning_group``), so the parameter count is not monotone in the ratio.
* ``MagnitudeImportance(p=1)`` is the L1 norm of every parameter slice in the group, reduced by
  ``mean`` over group members and normalised by its ``mean`` (Torch-Pruning's defaults).

Nothing here changes the caller's model: every function works on a deepcopy.
"""

from __future__ import annotations

import copy
import importlib.metadata
import time
from collections.abc import Iterable, Sequence

import torch
from torch import nn


def _tp():
    import torch_pruning as tp

    return tp


def tp_version() -> str:
    """Torch-Pruning's installed version (its ``__version__`` says 1.6.0 in release 1.6.1); a
    one-line exit naming the install when it is missing."""
    try:
        _tp()
    except ImportError:
        raise SystemExit(
            "Torch-Pruning is not installed: pip install 'fairfx[bench]' (or torch-pruning==1.6.1)"
        ) from None
    return importlib.metadata.version("torch-pruning")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def find_output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear modules that run last in a forward pass (the classifier).

    Good enough for classification nets, where the last executed Conv/Linear produces the logits
    (also SqueezeNet's conv classifier).  Pass ``ignored_layers`` explicitly for anything else.
    """
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
        # attention projections live inside nn.MultiheadAttention and never end a network
        and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)
    ]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return [order[-1]] if order else []


def _model_specific_kwargs(model: nn.Module) -> dict:
    """Settings Torch-Pruning's own torchvision example uses for some families."""
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        # keep the embedding width divisible by the number of heads
        return {"round_to": model.encoder.layers[0].num_heads}
    return {}


def _after_prune_fixups(model: nn.Module) -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        # torchvision's ViT reshapes with a python int stored on the module (TP issue #446 class)
        model.hidden_dim = model.conv_proj.out_channels


def _make_pruner(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    *,
    global_pruning: bool,
    ignored_layers: Sequence[nn.Module],
    max_pruning_ratio: float = 1.0,
    importance: str = "l1",
):
    tp = _tp()
    imp = (
        tp.importance.TaylorImportance()  # |w * dL/dw| per group, mean-normalised
        if importance == "taylor"
        else tp.importance.MagnitudeImportance(p=1)
    )
    return tp.pruner.BasePruner(  # MagnitudePruner / MetaPruner are aliases of BasePruner in 1.6
        model,
        example_inputs=example_input,
        importance=imp,
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        max_pruning_ratio=max_pruning_ratio,
        iterative_steps=1,
        ignored_layers=list(ignored_layers),
        **_model_specific_kwargs(model),
    )


def tp_build_and_prune(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float = 0.5,
    ignored_layers: Iterable[nn.Module | str] | None = None,
) -> tuple[float, float, float, nn.Module]:
    """Torch-Pruning on a deepcopy: uniform L1 magnitude pruning of ``ratio`` of each group.

    Returns ``(copy_seconds, build_seconds, prune_seconds, pruned_model)``.

    * copy = ``copy.deepcopy(model)``: Torch-Pruning prunes in place, so a user who wants to keep
      the original pays for it (fairfx never mutates its input).
    * build = ``BasePruner(...)``: ``DependencyGraph.build_dependency`` (a traced forward plus the
      graph) and one pass over ``get_all_groups`` to count channels.
    * prune = ``pruner.step()``: importance of every group, ranking, index mapping and the in-place
      surgery of every coupled layer.

    The output-layer search (a forward pass a user replaces by naming the layer) is untimed.
    """
    t0 = time.perf_counter()
    work = copy.deepcopy(model).eval()
    t1 = time.perf_counter()
    ignored = _resolve_ignored(model, work, ignored_layers, example_input)
    t2 = time.perf_counter()
    pruner = _make_pruner(work, example_input, ratio, global_pruning=False, ignored_layers=ignored)
    t3 = time.perf_counter()
    pruner.step()
    _after_prune_fixups(work)
    t4 = time.perf_counter()
    return t1 - t0, t3 - t2, t4 - t3, work


def _resolve_ignored(
    original: nn.Module,
    copy_: nn.Module,
    ignored_layers: Iterable[nn.Module | str] | None,
    example_input: torch.Tensor,
) -> list[nn.Module]:
    """Translate ignored layers given as modules of ``original`` or as names onto ``copy_``."""
    if ignored_layers is None:
        return find_output_layers(copy_, example_input)
    by_id = {id(m): n for n, m in original.named_modules()}
    wanted: set[str] = set()
    for item in ignored_layers:
        if isinstance(item, str):
            wanted.add(item)
        elif id(item) in by_id:
            wanted.add(by_id[id(item)])
        else:
            raise ValueError(f"ignored layer {type(item).__name__} is not a submodule of the model")
    return [m for n, m in copy_.named_modules() if n in wanted]


def taylor_gradients(model: nn.Module, calib) -> dict[str, torch.Tensor]:
    """Gradients of the summed cross-entropy over ``calib`` (eval mode, on a copy), for
    TaylorImportance: computed once, then given to every bisection trial's copy."""
    import torch.nn.functional as F

    m = copy.deepcopy(model).eval()
    m.zero_grad()
    for x, y in calib:
        F.cross_entropy(m(x), y, reduction="sum").backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def tp_prune_ratio(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    *,
    global_pruning: bool,
    ignored_layers: Iterable[nn.Module | str] | None = None,
    max_pruning_ratio: float = 0.9,
    importance: str = "l1",
    grads: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Torch-Pruning at one channel ``ratio`` (one step), on a deepcopy of ``model``.

    ``importance="taylor"`` needs ``grads`` from :func:`taylor_gradients` (computed once per
    model, so a bisection over ratios does not repeat the backward passes)."""
    if importance == "taylor" and grads is None:
        raise ValueError("Taylor importance needs grads=taylor_gradients(model, calib)")
    m = copy.deepcopy(model).eval()
    ignored = _resolve_ignored(model, m, ignored_layers, example_input)
    if ratio > 0:
        pruner = _make_pruner(
            m,
            example_input,
            ratio,
            global_pruning=global_pruning,
            ignored_layers=ignored,
            max_pruning_ratio=max_pruning_ratio,
            importance=importance,
        )
        if importance == "taylor":
            for n, p in m.named_parameters():
                p.grad = grads[n].clone() if n in grads else None
        pruner.step()
        m.zero_grad(set_to_none=True)
        _after_prune_fixups(m)
    return m


def tp_prune_to_budget(
    model: nn.Module,
    example_input: torch.Tensor,
    params_fraction_removed: float,
    global_pruning: bool,
    ignored_layers: Iterable[nn.Module | str] | None = None,
    *,
    tol: float = 0.005,
    max_iter: int = 20,
    max_pruning_ratio: float = 0.9,
    importance: str = "l1",
    calib=None,
) -> nn.Module:
    """Torch-Pruning (L1 magnitude or Taylor, uniform or global) hitting a *parameter* budget.

    ``importance="taylor"`` uses ``TaylorImportance`` with gradients of the summed cross-entropy
    over the ``calib`` batches (computed once on a copy of ``model``, eval mode).

    ``params_fraction_removed`` is the target fraction of parameters removed (0.3 = keep 70%).
    The channel ratio is bisected; the model whose achieved fraction is closest to the target is
    returned (within ``tol`` when reachable).  ``ignored_layers``: modules of ``model`` or their
    qualified names; ``None`` protects the output layer only.  ``max_pruning_ratio`` caps how much
    of one layer global ranking may take (Torch-Pruning default is 1.0, which lets global pruning
    try to empty layers).  The achieved fraction is stored on the result as
    ``_tp_params_fraction_removed`` and the ratio as ``_tp_pruning_ratio``.
    """
    if not 0.0 <= params_fraction_removed < 1.0:
        raise ValueError("params_fraction_removed must be in [0, 1)")
    n0 = count_params(model)
    grads = taylor_gradients(model, calib) if importance == "taylor" else None

    def achieved(m):
        return 1.0 - count_params(m) / n0

    best, best_err, best_ratio = None, float("inf"), 0.0
    lo, hi = 0.0, max_pruning_ratio if global_pruning else 0.99
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        m = tp_prune_ratio(
            model,
            example_input,
            mid,
            global_pruning=global_pruning,
            ignored_layers=ignored_layers,
            max_pruning_ratio=max_pruning_ratio,
            importance=importance,
            grads=grads,
        )
        f = achieved(m)
        err = abs(f - params_fraction_removed)
        if err < best_err:
            best, best_err, best_ratio = m, err, mid
        if err <= tol:
            break
        if f < params_fraction_removed:
            lo = mid
        else:
            hi = mid
    assert best is not None
    best._tp_params_fraction_removed = achieved(best)  # type: ignore[attr-defined]
    best._tp_pruning_ratio = best_ratio  # type: ignore[attr-defined]
    return best
