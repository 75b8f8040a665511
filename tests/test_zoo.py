"""The torchvision zoo: every model compresses, passes the oracle and exports, or says why.

CI runs a representative subset covering every hard case named in the guide (channel shuffle,
branch concat, dense concat, fire concat, squeeze-excite, grouped/depthwise convs, LayerNorm over
channels, attention); ``pytest -m slow`` (or ``make zoo``) runs all of
``torchvision.models.list_models(module=torchvision.models)``, each also through the FAIR path
(analyze on synthetic labelled batches, ``plan_for(params=0.5)``, compress, verify, export).
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from fairfx.apps.zoo import check_model, example_input, random_plan
from fairfx.engine.group_graph import build

SUBSET = [
    "resnet18",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "squeezenet1_0",
    "googlenet",
    "densenet121",
    "efficientnet_b0",
    "regnet_x_400mf",
    "resnext50_32x4d",
    "convnext_tiny",
    "inception_v3",
    "vit_b_32",
    "swin_t",
]
ALL = torchvision.models.list_models(module=torchvision.models)


def _check(name: str, *, fair: bool = False) -> None:
    r = check_model(name, fair=fair)
    assert r.handled, r.error
    assert r.unlisted == (), f"{name}: parameters in no channel group: {r.unlisted[:5]}"
    assert r.oracle_exact, f"{name}: oracle difference {r.oracle_diff}"
    assert r.params_after < r.params_before
    assert r.exported, f"{name}: export failed or differs: {r.error}"
    if fair:
        assert r.fair_done, r.fair_error
        assert r.fair_exact and r.fair_exported, r.fair_error
        assert r.fair_params_after < 0.6 * r.params_before


def test_zoo_fair_path() -> None:
    """analyze on synthetic labelled batches, plan_for(params=0.5), compress, verify, export."""
    _check("resnet18", fair=True)


@pytest.mark.parametrize("name", SUBSET)
def test_zoo_subset(name: str) -> None:
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in SUBSET])
def test_zoo_full(name: str) -> None:
    _check(name, fair=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_compile_matches_eager(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    x = example_input(name)
    graph = build(model, x)
    pruned = graph.prune(random_plan(graph)).eval()
    with torch.no_grad():
        want = pruned(x)
        got = torch.compile(pruned)(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
