"""Crafted ``.pt2`` files never run code, and malformed plans inside them are refused.

Each case takes a good ``fairfx.save_pruned`` file and plants one route torch 2.14's
``torch.export.load`` would run code through (see fairfx/engine/pt2_check.py); the payload
creates a marker file when unpickled or evaluated, and the marker must never appear.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import fairfx
from fairfx import FairfxError


class Evil:
    """Unpickling this creates ``marker``: the proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[nn.Module, torch.Tensor, Path]:
    model, x = _net(), torch.randn(4, 3, 4, 4)
    pruned = fairfx.prune(model, x, {"0": [0, 1, 2, 3]})
    path = tmp_path_factory.mktemp("good") / "good.pt2"
    fairfx.save_pruned(path, pruned, x)
    return model, x, path


def _edit(src: Path, dst: Path, replace=None, add=None, drop=()) -> Path:
    """A copy of the archive ``src`` with members (named below its root folder) replaced,
    added or dropped; ``replace`` values may be callables of the old bytes."""
    replace, add = dict(replace or {}), dict(add or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0] + "/"
        for info in zin.infolist():
            name = info.filename[len(root) :]
            if name in drop:
                continue
            data = zin.read(info)
            if name in replace:
                new = replace[name]
                data = new(data) if callable(new) else new
            zout.writestr(root + name, data)
        for name, data in add.items():
            zout.writestr(root + name, data)
    return dst


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _json_edit(fn):
    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()

    return edit


def _refused(path: Path, marker: Path, *words: str, model=None, x=None) -> str:
    with pytest.raises(FairfxError) as exc:
        if model is None:
            fairfx.load_pruned(path)
        else:
            fairfx.load_pruned(path, model, x)
    assert not marker.exists(), "the load ran code from the file"
    line = str(exc.value)
    assert "\n" not in line, line
    assert str(path) in line, line
    for w in words:
        assert w in line, line
    return line


WEIGHTS_CFG = "data/weights/model_weights_config.json"
CONSTANTS_CFG = "data/constants/model_constants_config.json"


# ------------------------------------------------------------------------ code routes in .pt2
def test_pickled_sample_inputs_never_run(good, tmp_path) -> None:
    model, x, src = good
    marker = tmp_path / "PWNED"
    evil = _torch_bytes(((Evil(marker),), {}))
    bad = _edit(src, tmp_path / "a.pt2", replace={"data/sample_inputs/model.pt": evil})
    _refused(bad, marker, "sample inputs", "Python objects", "io.open")
    _refused(bad, marker, "sample inputs", model=model, x=x)


def test_weight_marked_use_pickle_never_runs(good, tmp_path) -> None:
    marker = tmp_path / "PWNED"

    def mark(doc):
        doc["config"]["0.weight"]["use_pickle"] = True

    bad = _edit(
        good[2], tmp_path / "b.pt2",
        replace={
            WEIGHTS_CFG: _json_edit(mark), "data/weights/weight_0": _torch_bytes(Evil(marker))
        },
    )  # fmt: skip
    _refused(bad, marker, "'0.weight'", "use_pickle")


def test_legacy_weights_file_never_runs(good, tmp_path) -> None:
    marker = tmp_path / "PWNED"
    bad = _edit(
        good[2], tmp_path / "c.pt2", add={"data/weights/model.pt": _torch_bytes(Evil(marker))}
    )
    _refused(bad, marker, "legacy pickled weights", "data/weights/model.pt")


@pytest.mark.parametrize("prefix", ["opaque_obj_", "custom_obj_"])
def test_pickled_constant_never_runs_even_with_forced_weights_only(
    good, tmp_path, monkeypatch, prefix
) -> None:
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    name = f"{prefix}0"

    def add(doc):
        doc["config"]["c"] = {
            "path_name": name,
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }

    bad = _edit(
        good[2], tmp_path / "d.pt2",
        replace={CONSTANTS_CFG: _json_edit(add)},
        add={f"data/constants/{name}": pickle.dumps(Evil(marker))},
    )  # fmt: skip
    _refused(bad, marker, "constant 'c'")


def test_compiled_native_code_is_refused(good, tmp_path) -> None:
    bad = _edit(good[2], tmp_path / "e.pt2", add={"data/aotinductor/model/model.so": b"\x7fELF"})
    _refused(bad, tmp_path / "none", "compiled native code")


def test_shape_expression_is_never_evaluated(good, tmp_path) -> None:
    marker = tmp_path / "PWNED"
    code = f"__import__('builtins').open('{marker}', 'w') and Symbol('s0')"

    def inject(doc):
        size = doc["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]
        size["as_expr"]["expr_str"] = code

    bad = _edit(good[2], tmp_path / "f.pt2", replace={"models/model.json": _json_edit(inject)})
    _refused(bad, marker, "shape expression")


def test_guard_code_is_never_run(good, tmp_path) -> None:
    marker = tmp_path / "PWNED"

    def inject(doc):
        doc["guards_code"] = [f"open('{marker}', 'w') is None"]

    bad = _edit(good[2], tmp_path / "g.pt2", replace={"models/model.json": _json_edit(inject)})
    _refused(bad, marker, "guard code")


def test_graph_calling_a_python_function_is_refused(good, tmp_path) -> None:
    def inject(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    bad = _edit(good[2], tmp_path / "h.pt2", replace={"models/model.json": _json_edit(inject)})
    _refused(bad, tmp_path / "none", "'torch.os.system'", "not an aten operator")


def test_old_layout_and_zip_tricks_are_refused(good, tmp_path) -> None:
    marker = tmp_path / "PWNED"
    old = tmp_path / "old.pt2"
    with zipfile.ZipFile(old, "w") as z:
        z.writestr("version", "8.20")
        z.writestr("serialized_state_dict.json", _torch_bytes({"w": Evil(marker)}))
    _refused(old, marker, "outside the archive folder")
    with zipfile.ZipFile(good[2]) as z:
        root = z.namelist()[0].split("/")[0]
    twice = _edit(good[2], tmp_path / "i.pt2")
    with zipfile.ZipFile(twice, "a") as z, pytest.warns(UserWarning):
        z.writestr(f"{root}/data/sample_inputs/model.pt", _torch_bytes(Evil(marker)))
    _refused(twice, marker, "twice")
    packed = tmp_path / "j.pt2"
    with zipfile.ZipFile(good[2]) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        for info in zin.infolist():
            z.writestr(info.filename, zin.read(info))
    _refused(packed, marker, "compressed")


def test_not_a_zip_is_one_line(tmp_path) -> None:
    path = tmp_path / "x.pt2"
    path.write_bytes(b"hello")
    _refused(path, tmp_path / "none", "not a .pt2 zip archive")


def test_good_file_still_loads_and_runs(good) -> None:
    model, x, path = good
    loaded = fairfx.load_pruned(path)
    rebuilt = fairfx.load_pruned(path, model, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), rebuilt(x))
    assert loaded.meta["fairfx"]["keep"] == {"0": [0, 1, 2, 3]}


# --------------------------------------------------------------------- plan metadata in .pt2
@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(format="fairfx.pruned/99"), ("'fairfx.pruned/99'", "version")),
        (lambda d: d.update(keep=5), ("malformed",)),
        (lambda d: d.update(units=[1, 2]), ("malformed",)),
        (lambda d: d.update(units={"x": [0]}), ("group ids",)),
        (lambda d: d["keep"].update({"0": ["a"]}), ("malformed",)),
    ],
)
@pytest.mark.parametrize("with_model", [False, True])
def test_malformed_plan_is_refused(good, tmp_path, edit, words, with_model) -> None:
    model, x, src = good
    bad = _edit(src, tmp_path / "p.pt2", replace={"extra/fairfx.json": _json_edit(edit)})
    kw = {"model": model, "x": x} if with_model else {}
    _refused(bad, tmp_path / "none", *words, **kw)


def test_plan_that_is_a_list_is_refused(good, tmp_path) -> None:
    bad = _edit(good[2], tmp_path / "l.pt2", replace={"extra/fairfx.json": b"[1, 2]"})
    _refused(bad, tmp_path / "none", "without a fairfx plan")


# -------------------------------------------------------------- crafted pickles elsewhere
@pytest.mark.parametrize("raw", [False, True])
def test_crafted_scores_file_says_python_objects(tmp_path, raw) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "scores.pt"
    payload = {"format": "fairfx.analysis/2", "state": Evil(marker)}
    if raw:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(FairfxError) as exc:
        fairfx.load_analysis(path)
    assert not marker.exists()
    line = str(exc.value)
    assert "\n" not in line and "holds Python objects" in line and "damaged" not in line, line
    assert "builtins.open" in line or "io.open" in line, line
