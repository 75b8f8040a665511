"""The compact calibration state: codecs, class choice from the labels seen, memory estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fairfx
from fairfx.apps.cli import main
from fairfx.apps.cli_inputs import load_data
from fairfx.method import memory
from fairfx.method.codec import CODECS, decode, encode
from fairfx.method.finalize import balanced_split, sketch_index
from fairfx.method.wasserstein import w1_1d


class Wide(nn.Module):
    """A small conv net with 1000 outputs, like an ImageNet classifier on a tiny input."""

    def __init__(self, outputs: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3)
        )
        self.head = nn.Linear(8, outputs)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def wide() -> Wide:
    torch.manual_seed(0)
    return Wide().eval()


def labelled(classes: list[int], per_class: int, seed: int = 0, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([c for c in classes for _ in range(per_class)])
    x = torch.randn(len(y), 3, size, size, generator=g) + y.view(-1, 1, 1, 1) % 7 * 0.1
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(y), 16)]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("values", [1, 7, 128])
def test_codecs_round_trip_within_their_precision(codec, values) -> None:
    x = torch.randn(5, 3, values) * 3 + 1
    back = decode(encode(x, codec), codec, values)
    assert back.shape == x.shape and back.dtype == torch.float32
    span = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)).clamp_min(1e-6)
    tol = {"float32": 0, "float16": 2e-3, "bfloat16": 1e-2, "uint8": 0.5 / 255, "int4": 0.5 / 15}
    rel = ((back - x).abs() / (span if codec in ("uint8", "int4") else x.abs())).max()
    assert rel <= tol[codec] * (1 + 1e-3)
    if values == 1:  # one value per channel is always exact
        assert torch.equal(back, x)


def test_float16_overflow_is_refused() -> None:
    with pytest.raises(fairfx.CalibrationError, match="bfloat16"):
        encode(torch.full((1, 1, 4), 1e6), "float16")


def test_quantile_sketch_is_exact_when_counts_divide() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, generator=g).sort().values, torch.randn(12, generator=g).sort().values
    sketch = a[sketch_index(4, 12)]
    torch.testing.assert_close((sketch - b).abs().mean(), w1_1d(a, b))
    assert sketch_index(12, 12).tolist() == list(range(12))
    # counts that do not divide: within one quantile step of the exact W1
    c = torch.randn(7, generator=g).sort().values
    err = ((c[sketch_index(7, 12)] - b).abs().mean() - w1_1d(c, b)).abs()
    assert err <= (c[-1] - c[0]) / 7


def test_balanced_split_covers_every_item_once() -> None:
    owner = balanced_split([5, 1, 9, 3, 3, 8], 2)
    loads = [
        sum(c for c, o in zip([5, 1, 9, 3, 3, 8], owner, strict=True) if o == r) for r in (0, 1)
    ]
    assert sorted(set(owner)) == [0, 1] and abs(loads[0] - loads[1]) <= 2
    assert owner == balanced_split([5, 1, 9, 3, 3, 8], 2)


@pytest.mark.parametrize("classes", [[0, 500, 999], list(range(10, 20))])
def test_a_1000_output_model_uses_every_class_and_image_present(classes) -> None:
    data = labelled(classes, 5)
    an = fairfx.analyze(wide(), data[0][0][:2], data, samples_per_class=8, progress=False)
    assert an.record["classes"] == sorted(classes)
    assert an.record["classes_seen"] == len(classes)
    assert an.record["samples"] == an.record["samples_seen"] == 5 * len(classes)


def test_class_choice_is_the_smallest_hashes_seen_order_free_and_mergeable() -> None:
    from fairfx.method.finalize import finalize
    from fairfx.method.stats import class_key

    classes = list(range(0, 1000, 37))  # 28 classes, 5 taken
    data = labelled(classes, 3)
    kw = {"samples_per_class": 4, "max_classes": 5, "progress": False}
    one = fairfx.analyze(wide(), data[0][0][:2], data, **kw)
    want = sorted(sorted(classes, key=lambda c: class_key(c, 0))[:5])
    assert one.record["classes"] == want and one.record["classes_seen"] == len(classes)
    rev = fairfx.analyze(wide(), data[0][0][:2], list(reversed(data)), **kw)
    assert rev.record["classes"] == want
    a = fairfx.analyze(wide(), data[0][0][:2], data[0::2], **kw).state
    b = fairfx.analyze(wide(), data[0][0][:2], data[1::2], **kw).state
    merged = b.merge(a)
    assert merged.classes == want and merged.sample_count() == one.state.sample_count()
    for gid, s in finalize(one.graph, merged).items():
        np.testing.assert_allclose(s.u, one.scores[gid].u, rtol=1e-5)


def _folder(root, classes: int, per_class: int):
    from PIL import Image

    rng = np.random.default_rng(classes)
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 200, (6, 6, 3), dtype=np.uint8)
            pixels[..., c % 3] += 50
            Image.fromarray(pixels).save(root / f"c{c:02d}" / f"{i}.png")
    return root


@pytest.mark.parametrize("classes", [3, 10])
def test_image_folder_through_the_cli_loader_uses_every_class(tmp_path, classes) -> None:
    ds = load_data(str(_folder(tmp_path / "img", classes, 4)), 8, 3)
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    an = fairfx.analyze(wide(), torch.randn(2, 3, 8, 8), loader, progress=False)
    assert an.record["classes"] == list(range(classes))
    assert an.record["samples"] == an.record["samples_seen"] == 4 * classes


def test_compress_command_reports_every_class_of_a_10_class_folder(
    tmp_path, monkeypatch, capsys
) -> None:
    (tmp_path / "fairfx_wide_model.py").write_text(
        "from tests.test_calibration_state import wide\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _folder(tmp_path / "img", 10, 3)
    argv = ["compress", "--model", "fairfx_wide_model:wide", "--data", str(tmp_path / "img")]
    argv += ["--image-size", "8", "--alpha", "0.05", "--out", str(tmp_path / "m.pt2")]
    argv += ["--report", str(tmp_path / "r.json"), "--quiet", "--val-fraction", "0"]
    assert main(argv) == 0
    import json

    scores = json.loads((tmp_path / "r.json").read_text())["scores"]
    assert scores["classes"] == scores["classes_seen"] == 10
    assert scores["samples"] == scores["samples_seen"] == 30
    assert "scoring needs about" in scores["memory"]["line"]


def test_estimate_is_the_state_analyze_builds(monkeypatch) -> None:
    data = labelled(list(range(6)), 5)
    for codec in ("float16", "int4"):
        est = fairfx.estimate_memory(
            wide(), data[0][0][:2], classes=6, samples_per_class=5, state_dtype=codec
        )
        an = fairfx.analyze(
            wide(), data[0][0][:2], data, samples_per_class=5, state_dtype=codec, progress=False
        )
        held = sum(
            t.nbytes
            for st in an.state.per_class.values()
            for t in [*st.proj.values(), *st.taylor.values()]
        )
        assert held == est.state_bytes
        assert "scoring needs about" in est.line()
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    with pytest.raises(fairfx.CalibrationError, match=r"will not fit.*memory_check=False"):
        fairfx.analyze(wide(), data[0][0][:2], data, samples_per_class=5, progress=False)
    an = fairfx.analyze(
        wide(), data[0][0][:2], data, samples_per_class=5, memory_check=False, progress=False
    )
    assert an.record["samples"] == 30


def test_scores_do_not_depend_on_the_scoring_chunk() -> None:
    data = labelled(list(range(4)), 6)
    a = fairfx.analyze(wide(), data[0][0][:2], data, batch_size=3, progress=False)
    b = fairfx.analyze(wide(), data[0][0][:2], data, batch_size=64, progress=False)
    for gid in a.scores:
        np.testing.assert_allclose(a.scores[gid].u, b.scores[gid].u, rtol=1e-5)
        np.testing.assert_allclose(a.scores[gid].r, b.scores[gid].r, rtol=1e-5)


def test_auto_dtype_is_the_most_precise_that_fits(monkeypatch) -> None:
    data = labelled(list(range(6)), 5)
    x = data[0][0][:2]
    est = {
        d: fairfx.estimate_memory(wide(), x, classes=6, samples_per_class=5, state_dtype=d)
        for d in memory.AUTO_ORDER
    }
    for dtype in memory.AUTO_ORDER:
        # a budget (a third of what is available) just fitting this codec's whole estimate
        total = est[dtype].total_bytes
        monkeypatch.setattr(memory, "available_memory", lambda t=total: 3 * t + 3)
        auto = fairfx.estimate_memory(wide(), x, classes=6, samples_per_class=5)
        assert auto.state_dtype == dtype
        assert "(auto: the most precise within 1/3" in auto.line()
        assert auto.state_bytes == est[dtype].state_bytes
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * est["int4"].total_bytes)
    smallest = fairfx.estimate_memory(wide(), x, classes=6, samples_per_class=5)
    assert smallest.state_dtype == "int4" and "none fits" in smallest.line()
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    assert fairfx.estimate_memory(wide(), x, classes=6, samples_per_class=5).state_dtype == (
        "float16"
    )
    # analyze builds the state in the codec auto picked, and a resumed state keeps its own
    monkeypatch.setattr(memory, "available_memory", lambda: 3 * est["uint8"].total_bytes + 3)
    an = fairfx.analyze(wide(), x, data, samples_per_class=5, max_classes=6, progress=False)
    assert an.state.state_dtype == an.record["memory"]["state_dtype"] == "uint8"
    monkeypatch.setattr(memory, "available_memory", lambda: 10**12)
    again = fairfx.analyze(
        wide(), x, data, samples_per_class=5, max_classes=6, progress=False, state=an.state
    )
    assert again.state.state_dtype == "uint8"
