"""CandleCkptPyTorch with real torch: the CANDLE pattern, extra state, RNG, wrappers,
safe loading, the original CANDLE torch checkpoints, and exact resume across processes."""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from torch import nn  # noqa: E402

import candle_ckpt as candle  # noqa: E402
from candle_ckpt import CheckpointNotFoundError, CkptParamError  # noqa: E402
from candle_ckpt.storage.integrity import checksum_file  # noqa: E402

HERE = Path(__file__).parent
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "original-candle"
if not FIXTURES.is_dir():  # the tree may live elsewhere; the shared fixtures do not move
    FIXTURES = Path("/work/shared/fixtures/original-candle")


# ------------------------------------------------------------------------------ helpers
def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))


def train_steps(model: nn.Module, optimizer: Any, steps: int = 3) -> float:
    x = torch.randn(16, 4)
    y = x.sum(dim=1, keepdim=True)
    loss = torch.zeros(())
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def params_for(directory: Path, **extra: Any) -> dict[str, Any]:
    return {"epochs": 10, "ckpt_directory": str(directory), **extra}


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two (nested) state dicts hold identical values, bit for bit."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    assert list(a) == list(b)
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        elif isinstance(va, dict):
            assert_same_state(va, vb)
        elif isinstance(va, list) and va and isinstance(va[0], dict):
            for ga, gb in zip(va, vb, strict=True):
                assert_same_state(ga, gb)
        else:
            assert va == vb, key


def new_ckpt(directory: Path, **extra: Any) -> Any:
    return candle.CandleCkptPyTorch(params_for(directory, **extra), logger=None)


# ------------------------------------------------------------------------------ CANDLE usage
def test_candle_pattern_saves_model_pt_and_restarts_into_fresh_objects(tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ckpt = candle.CandleCkptPyTorch(params_for(tmp_path), logger=None)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    assert J is None  # nothing yet: start from scratch
    for epoch in range(2):
        loss = train_steps(model, optimizer)
        assert ckpt.ckpt_epoch(epoch, torch.tensor(loss))  # a 0-d tensor is a fine metric
    ckpt.on_train_end()

    last = tmp_path / "ckpts" / "last"
    info = json.loads((last / "ckpt-info.json").read_text())
    assert info["epoch"] == 2 and info["model_file"] == "model.pt"
    assert set(info["files"]) == {"model.pt"}
    assert info["backend"] == "torch" and info["torch_version"] == torch.__version__
    assert info["entries"] == ["model", "optimizer"]
    assert {"torch", "numpy", "python"} <= set(info["rng_states"])
    saved = torch.load(last / "model.pt", weights_only=True)
    assert {"epoch", "model_state_dict", "optimizer_state_dict", "loss"} <= set(saved)

    model2 = make_net(1)
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    ckpt2 = candle.CandleCkptPyTorch(params_for(tmp_path), logger=None)
    ckpt2.set_model({"model": model2, "optimizer": optimizer2})
    J = ckpt2.restart(model2)
    assert J is not None and J["epoch"] == 2
    assert_same_state(model2.state_dict(), model.state_dict())
    assert_same_state(optimizer2.state_dict(), optimizer.state_dict())
    ckpt2.close()


def test_capture_copies_so_later_training_does_not_change_the_snapshot(tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer, 1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        snapshot = ckpt.capture_state()
        before = {k: v.clone() for k, v in snapshot.payload["model_state_dict"].items()}
        exp_avg = snapshot.payload["optimizer_state_dict"]["state"][0]["exp_avg"].clone()
        train_steps(model, optimizer, 2)
        assert_same_state(snapshot.payload["model_state_dict"], before)
        assert torch.equal(snapshot.payload["optimizer_state_dict"]["state"][0]["exp_avg"],
                           exp_avg)


def test_capture_reuses_the_previous_buffers_and_holds_the_new_values(tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer, 1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        first = ckpt.capture_state().payload
        buffers = {k: v.data_ptr() for k, v in first["model_state_dict"].items()}
        train_steps(model, optimizer, 2)
        second = ckpt.capture_state().payload
        assert {k: v.data_ptr() for k, v in second["model_state_dict"].items()} == buffers
        assert_same_state(second["model_state_dict"], model.state_dict())
        assert_same_state(second["optimizer_state_dict"], optimizer.state_dict())
        live = model.state_dict()
        assert all(second["model_state_dict"][k] is not live[k] for k in live)


def test_sync_saves_write_live_tensors_but_never_make_them_capture_buffers(
        tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer, 1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.capture_state()
        ckpt.ckpt_epoch(0, 1.0)  # a sync save, from the live state
        snapshot = ckpt.capture_state().payload["model_state_dict"]
        before = {k: v.clone() for k, v in snapshot.items()}
        train_steps(model, optimizer, 2)
        assert_same_state(snapshot, before)
    saved = torch.load(tmp_path / "ckpts" / "last" / "model.pt", weights_only=True)
    assert not torch.equal(saved["model_state_dict"]["0.weight"], model.state_dict()["0.weight"])


def test_capture_after_the_state_changed_shape_copies_afresh(tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.capture_state()
        bigger = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        adam = torch.optim.Adam(bigger.parameters())
        train_steps(bigger, adam, 1)
        ckpt.set_model({"model": bigger, "optimizer": adam})
        snapshot = ckpt.capture_state().payload
        assert_same_state(snapshot["model_state_dict"], bigger.state_dict())
        assert_same_state(snapshot["optimizer_state_dict"], adam.state_dict())


def test_background_save_writes_the_state_of_its_epoch(tmp_path: Path) -> None:
    if not hasattr(candle.CandleCkpt, "wait"):
        pytest.skip("this engine has no background saves")
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer, 1)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with new_ckpt(tmp_path, ckpt_async=True) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
        with torch.no_grad():  # training goes on while the checkpoint is written
            for p in model.parameters():
                p.fill_(7.0)
        ckpt.wait()
    saved = torch.load(tmp_path / "ckpts" / "last" / "model.pt", weights_only=True)
    assert_same_state(saved["model_state_dict"], expected)


def test_set_model_names_the_missing_entries(tmp_path: Path) -> None:
    model = make_net()
    with new_ckpt(tmp_path) as ckpt:
        with pytest.raises(CkptParamError, match="missing 'optimizer'"):
            ckpt.set_model({"model": model})
        with pytest.raises(CkptParamError, match="missing 'model' and 'optimizer'.*'net'"):
            ckpt.set_model({"net": model})
        with pytest.raises(CkptParamError, match="'model' must be a torch.nn.Module"):
            ckpt.set_model({"model": object(), "optimizer": torch.optim.SGD(
                model.parameters(), lr=0.1)})


def test_restart_and_ckpt_epoch_before_set_model_raise_clearly(tmp_path: Path) -> None:
    model = make_net()
    with new_ckpt(tmp_path) as ckpt:
        with pytest.raises(CkptParamError, match=r"call ckpt.set_model"):
            ckpt.restart(model)
        with pytest.raises(CkptParamError, match=r"call ckpt.set_model"):
            ckpt.restart()
        with pytest.raises(CkptParamError, match=r"call ckpt.set_model"):
            ckpt.ckpt_epoch(0, 1.0)
    assert not (tmp_path / "ckpts" / "last").exists()


def test_restart_accepts_the_set_model_dict(tmp_path: Path) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with new_ckpt(tmp_path) as ckpt:
        assert ckpt.restart({"model": model, "optimizer": optimizer}) is None
        assert ckpt.ckpt_epoch(0, 1.0)


def test_restart_refuses_a_model_other_than_set_models(tmp_path: Path) -> None:
    model = make_net()
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": torch.optim.SGD(model.parameters(), 0.1)})
        with pytest.raises(CkptParamError, match="not the one given to set_model"):
            ckpt.restart(make_net())


# Every way CANDLE code calls restart on the object: the method's spec order, the
# module-level function's order (candle_lib's example), and gParameters where the model
# goes (Uno, after set_model). ``g`` is the gParameters, ``m`` the model.
RESTART_SHAPES = {
    "restart()": lambda ckpt, g, m: ckpt.restart(),
    "restart(model)": lambda ckpt, g, m: ckpt.restart(m),
    "restart(model, verbose)": lambda ckpt, g, m: ckpt.restart(m, False),
    "restart(gParameters, model)": lambda ckpt, g, m: ckpt.restart(g, m),
    "restart(Namespace, model)": lambda ckpt, g, m: ckpt.restart(argparse.Namespace(**g), m),
    "restart(gParameters)": lambda ckpt, g, m: ckpt.restart(g),
    "restart(not_a_model)": lambda ckpt, g, m: ckpt.restart("model.pt"),
}


def _one_saved_epoch(directory: Path) -> dict[str, torch.Tensor]:
    """A run with one checkpoint (epoch 1); its model's state."""
    model = make_net(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_steps(model, optimizer)
    with new_ckpt(directory) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("shape", list(RESTART_SHAPES))
def test_restart_after_set_model_accepts_every_candle_call_shape(
        tmp_path: Path, shape: str) -> None:
    saved = _one_saved_epoch(tmp_path)
    fresh = make_net(1)
    g = params_for(tmp_path)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)})
        J = RESTART_SHAPES[shape](ckpt, g, fresh)
    assert J is not None and J["epoch"] == 1
    assert_same_state(fresh.state_dict(), saved)
    log = (tmp_path / "ckpt.log").read_text()
    if shape == "restart(not_a_model)":  # as the original, but said: it is not loaded into
        assert "WARNING" in log and "str given is not a model; ignored" in log
    if shape == "restart(gParameters)":
        assert "hyperparameters (gParameters) is not a model; ignored" in log


def test_restart_with_gparameters_and_the_set_model_dict_needs_no_set_model(
        tmp_path: Path) -> None:
    saved = _one_saved_epoch(tmp_path)
    fresh = make_net(1)
    objects = {"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)}
    with new_ckpt(tmp_path) as ckpt:
        J = ckpt.restart(params_for(tmp_path), objects)
        assert J is not None and J["epoch"] == 1
        assert ckpt.model == objects
    assert_same_state(fresh.state_dict(), saved)


@pytest.mark.parametrize("shape", list(RESTART_SHAPES))
def test_restart_without_set_model_raises_saying_what_to_do(tmp_path: Path, shape: str) -> None:
    _one_saved_epoch(tmp_path)
    fresh = make_net(1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with new_ckpt(tmp_path) as ckpt:
        with pytest.raises(CkptParamError) as err:
            RESTART_SHAPES[shape](ckpt, params_for(tmp_path), fresh)
    if shape == "restart(not_a_model)":
        assert "argument is a str, not a model" in str(err.value)
        assert "restart(gParameters, model)" in str(err.value)  # the accepted shapes
    else:
        assert "call ckpt.set_model(" in str(err.value)
    assert_same_state(fresh.state_dict(), before)


def test_restart_with_a_model_in_both_places_is_refused(tmp_path: Path) -> None:
    model = make_net()
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": torch.optim.SGD(model.parameters(), 0.1)})
        with pytest.raises(CkptParamError, match=r"verbose is a .*Sequential.*first argument"):
            ckpt.restart(model, model)


def test_state_weights_only_cannot_read_is_refused_at_set_model(tmp_path: Path) -> None:
    class Custom:
        pass

    class Holder:
        def state_dict(self) -> dict[str, Any]:
            return {"thing": Custom()}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    model = make_net()
    with new_ckpt(tmp_path) as ckpt:
        with pytest.raises(CkptParamError, match=r"holder\['thing'\].*weights_only"):
            ckpt.set_model({"model": model, "optimizer": torch.optim.SGD(
                model.parameters(), lr=0.1), "holder": Holder()})


class TaggedTensor(torch.Tensor):
    """A tensor subclass as user code makes one: torch.load(weights_only=True) refuses it."""


class PlainTaggedTensor(torch.Tensor):
    """A subclass that detaches to a plain tensor (as nn.Parameter does)."""

    __torch_function__ = torch._C._disabled_torch_function_impl


class Scaled(nn.Module):
    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale.as_subclass(torch.Tensor)


def test_a_tensor_subclass_buffer_is_refused_at_set_model_naming_entry_and_type(
        tmp_path: Path) -> None:
    model = Scaled(torch.ones(1).as_subclass(TaggedTensor))
    with new_ckpt(tmp_path) as ckpt:
        with pytest.raises(CkptParamError) as err:
            ckpt.set_model({"model": model, "optimizer": torch.optim.SGD(
                model.parameters(), lr=0.1)})
    message = str(err.value)
    assert "model['scale']" in message and "TaggedTensor" in message
    assert "weights_only=True" in message and "add_safe_globals" in message
    assert not (tmp_path / "ckpts" / "epochs").exists()


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("replaced", ["buffer", "optimizer state"])
def test_state_made_unloadable_after_set_model_is_refused_at_ckpt_epoch_writing_nothing(
        tmp_path: Path, replaced: str, async_: bool) -> None:
    model = Scaled(torch.ones(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with new_ckpt(tmp_path, ckpt_async=async_) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        train_steps(model, optimizer, 1)
        ckpt.ckpt_epoch(0, 1.0)
        ckpt.wait()
        on_disk = _tree_bytes(tmp_path)
        if replaced == "buffer":
            model.scale = torch.full((1,), 2.0).as_subclass(TaggedTensor)
            where = "model['scale']"
        else:
            state = optimizer.state[model.linear.weight]
            state["momentum_buffer"] = state["momentum_buffer"].as_subclass(TaggedTensor)
            where = "optimizer['state'][0]['momentum_buffer']"
        with pytest.raises(CkptParamError) as err:
            ckpt.ckpt_epoch(1, 0.5)
        ckpt.wait()
        assert where in str(err.value) and "TaggedTensor" in str(err.value)
    assert _tree_bytes(tmp_path) == on_disk
    assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/001"
    assert sorted(os.listdir(tmp_path / "ckpts")) == ["best", "epochs", "last"]


def test_a_subclass_that_detaches_to_a_plain_tensor_round_trips_exactly(tmp_path: Path) -> None:
    """Saved as the plain tensor it detaches to; restore copies it into the live subclass."""
    model = Scaled(torch.full((1,), 3.0).as_subclass(PlainTaggedTensor))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
    fresh = Scaled(torch.zeros(1).as_subclass(PlainTaggedTensor))
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)})
        assert ckpt.restart(fresh) is not None
    assert type(fresh.scale) is PlainTaggedTensor and float(fresh.scale) == 3.0
    assert_same_state(dict(fresh.state_dict()), dict(model.state_dict()))


def test_parameters_and_subclasses_registered_as_safe_round_trip(tmp_path: Path) -> None:
    class KeepVars:
        """An entry whose state holds the nn.Parameters themselves (keep_vars=True)."""

        def __init__(self, module: nn.Module) -> None:
            self.module = module

        def state_dict(self) -> dict[str, Any]:
            return self.module.state_dict(keep_vars=True)

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.module.load_state_dict(state)

    def objects(scale: float, seed: int) -> dict[str, Any]:
        model = Scaled(torch.full((1,), scale).as_subclass(TaggedTensor))
        torch.manual_seed(seed)
        ema = nn.Linear(2, 2)
        return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
                "ema": KeepVars(ema), "ema_module": ema}

    with torch.serialization.safe_globals([TaggedTensor]):  # this test only
        run = objects(5.0, 0)
        with new_ckpt(tmp_path) as ckpt:
            ckpt.set_model(run)
            ckpt.ckpt_epoch(0, 1.0)
        fresh = objects(0.0, 1)
        with new_ckpt(tmp_path) as ckpt:
            ckpt.set_model(fresh)
            assert ckpt.restart(fresh["model"]) is not None
    assert float(fresh["model"].scale) == 5.0
    assert_same_state(dict(fresh["ema_module"].state_dict()), dict(run["ema_module"].state_dict()))


def test_numpy_scalars_in_state_are_saved_as_python_numbers(tmp_path: Path) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=np.float64(0.125))
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, np.float32(1.5))
    saved = torch.load(tmp_path / "ckpts" / "last" / "model.pt", weights_only=True)
    lr = saved["optimizer_state_dict"]["param_groups"][0]["lr"]
    assert type(lr) is float and lr == 0.125
    assert saved["loss"] == 1.5


def test_best_direction_follows_ckpt_save_best_mode(tmp_path: Path) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for mode, values, best in (("auto", [3.0, 1.0, 2.0], 2), ("max", [3.0, 1.0, 2.0], 1)):
        directory = tmp_path / mode
        with new_ckpt(directory, ckpt_save_best_mode=mode) as ckpt:
            ckpt.set_model({"model": model, "optimizer": optimizer})
            for epoch, value in enumerate(values):
                ckpt.ckpt_epoch(epoch, value)
        assert os.readlink(directory / "ckpts" / "best") == f"epochs/{best:03d}"


def test_a_run_that_redoes_the_best_epoch_worse_moves_best_to_the_best_that_exists(
        tmp_path: Path) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    base = tmp_path / "ckpts"
    # The first run's best is epoch 2; the second loops from epoch 0 again (restart or not).
    for values in ([0.5, 0.1, 0.3], [0.6, 0.4]):
        with new_ckpt(tmp_path) as ckpt:
            ckpt.set_model({"model": model, "optimizer": optimizer})
            for epoch, value in enumerate(values):
                ckpt.ckpt_epoch(epoch, value)
    assert os.readlink(base / "best") == "epochs/003"
    metrics = {p.name: json.loads((p / "ckpt-info.json").read_text())["metric_value"]
               for p in (base / "epochs").iterdir()}
    assert metrics == {"001": 0.6, "002": 0.4, "003": 0.3}
    last = json.loads((base / "last" / "ckpt-info.json").read_text())
    assert (last["epoch"], last["epoch_best"], last["best_metric_last"]) == (2, 3, 0.3)
    # A restart takes that best over: the next improvement is measured against 0.3.
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        assert ckpt.restart()["epoch"] == 2
        assert ckpt.best_metric_last == 0.3
        ckpt.ckpt_epoch(2, 0.35)
        assert os.readlink(base / "best") == "epochs/003"
        best = json.loads((base / "best" / "ckpt-info.json").read_text())
        assert best["metric_value"] == best["best_metric_last"] == 0.35


def test_a_redone_best_epoch_stays_best_when_nothing_else_is_better(tmp_path: Path) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for value in (0.1, 0.4):
        with new_ckpt(tmp_path, ckpt_restart_mode="off") as ckpt:
            ckpt.set_model({"model": model, "optimizer": optimizer})
            ckpt.ckpt_epoch(0, value)
    base = tmp_path / "ckpts"
    assert os.readlink(base / "best") == "epochs/001"
    info = json.loads((base / "best" / "ckpt-info.json").read_text())
    assert info["metric_value"] == info["best_metric_last"] == 0.4


# ------------------------------------------------------------------------------ extra state
def test_lr_scheduler_gradscaler_and_generators_are_saved_and_restored(tmp_path: Path) -> None:
    def build(seed: int) -> dict[str, Any]:
        model = make_net(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return {
            "model": model,
            "optimizer": optimizer,
            "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
            "scaler": torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3),
            # A disabled scaler (CUDA AMP code on a CPU machine) has an empty state.
            "cuda_scaler": torch.amp.GradScaler("cuda", enabled=False),
            "generator": torch.Generator().manual_seed(seed),
            "np_rng": np.random.default_rng(seed),
            "py_rng": random.Random(seed),
        }

    run = build(0)
    for _ in range(3):
        train_steps(run["model"], run["optimizer"], 1)
        run["scheduler"].step()
    run["scaler"].scale(torch.tensor(1.0))  # the scaler's state exists once it has scaled
    run["scaler"].update(new_scale=64.0)
    run["generator"].seed()
    run["np_rng"].random(5)
    run["py_rng"].random()
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model(run)
        ckpt.ckpt_epoch(0, 1.0)
    expected = {k: v.state_dict() for k, v in run.items() if hasattr(v, "state_dict")}
    draws = (torch.rand(3, generator=run["generator"]), run["np_rng"].random(3),
             run["py_rng"].random())

    fresh = build(1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model(fresh)
        assert ckpt.restart(fresh["model"])["epoch"] == 1
    for key, state in expected.items():
        assert_same_state(fresh[key].state_dict(), state)
    assert fresh["scheduler"].get_last_lr() == run["scheduler"].get_last_lr()
    assert fresh["scaler"].get_scale() == 64.0
    assert torch.equal(torch.rand(3, generator=fresh["generator"]), draws[0])
    assert np.array_equal(fresh["np_rng"].random(3), draws[1])
    assert fresh["py_rng"].random() == draws[2]


def test_global_rng_states_are_restored(tmp_path: Path) -> None:
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
    expected = (torch.rand(4), np.random.random(4), np.random.normal(size=3), random.random())

    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.restart(model)
    got = (torch.rand(4), np.random.random(4), np.random.normal(size=3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and np.array_equal(got[2], expected[2])
    assert got[3] == expected[3]


# ------------------------------------------------------------------------------ wrappers
def test_dataparallel_saves_the_inner_module_and_restarts_either_way(tmp_path: Path) -> None:
    inner = make_net(0)
    wrapped = nn.DataParallel(inner)
    optimizer = torch.optim.Adam(wrapped.parameters())
    train_steps(wrapped, optimizer, 2)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": wrapped, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
    saved = torch.load(tmp_path / "ckpts" / "last" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in saved["model_state_dict"])

    plain = make_net(1)
    plain_opt = torch.optim.Adam(plain.parameters())
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": plain, "optimizer": plain_opt})
        assert ckpt.restart(plain) is not None
    assert_same_state(plain.state_dict(), inner.state_dict())
    assert_same_state(plain_opt.state_dict(), optimizer.state_dict())

    # And back: saved unwrapped, restarted into a wrapper (restart given the inner module).
    with new_ckpt(tmp_path / "b") as ckpt:
        ckpt.set_model({"model": plain, "optimizer": plain_opt})
        ckpt.ckpt_epoch(0, 1.0)
    rewrapped = nn.DataParallel(make_net(2))
    with new_ckpt(tmp_path / "b") as ckpt:
        ckpt.set_model({"model": rewrapped, "optimizer": torch.optim.Adam(
            rewrapped.parameters())})
        assert ckpt.restart(rewrapped.module) is not None
    assert_same_state(rewrapped.module.state_dict(), inner.state_dict())


def test_module_prefixed_state_from_other_code_loads_unwrapped(tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
    wrapped_state = nn.DataParallel(model).state_dict()
    assert all(k.startswith("module.") for k in wrapped_state)
    _replace_model_file(tmp_path / "ckpts" / "epochs" / "001",
                        {"model_state_dict": wrapped_state,
                         "optimizer_state_dict": optimizer.state_dict()})
    plain = make_net(1)
    with new_ckpt(tmp_path, ckpt_restart_mode="required") as ckpt:
        ckpt.set_model({"model": plain, "optimizer": torch.optim.SGD(plain.parameters(), 0.1)})
        ckpt.restart(plain)
    assert_same_state(plain.state_dict(), model.state_dict())


def test_compiled_module_is_unwrapped() -> None:
    from candle_ckpt.backends.torch import unwrap_module

    inner = make_net()
    compiled = torch.compile(inner)  # compiles lazily: nothing runs here
    assert unwrap_module(nn.DataParallel(compiled)) is inner


def test_distributed_data_parallel_saves_the_inner_module(tmp_path: Path) -> None:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        inner = make_net(0)
        ddp = nn.parallel.DistributedDataParallel(inner)
        optimizer = torch.optim.Adam(ddp.parameters())
        train_steps(ddp, optimizer, 2)
        with new_ckpt(tmp_path / "c") as ckpt:
            ckpt.set_model({"model": ddp, "optimizer": optimizer})
            ckpt.ckpt_epoch(0, 1.0)
    finally:
        dist.destroy_process_group()
    plain = make_net(1)
    with new_ckpt(tmp_path / "c") as ckpt:
        ckpt.set_model({"model": plain, "optimizer": torch.optim.Adam(plain.parameters())})
        assert ckpt.restart(plain) is not None
    assert_same_state(plain.state_dict(), inner.state_dict())


# ------------------------------------------------------------------------------ safety
class _RunsCode:
    """Unpickling this calls exec(): what a malicious checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _replace_model_file(epoch_dir: Path, payload: Any) -> None:
    """Swap a checkpoint's model file and fix the manifest so only loading can object."""
    model_file = epoch_dir / "model.pt"
    model_file.unlink()
    torch.save(payload, model_file)
    info_file = epoch_dir / "ckpt-info.json"
    info = json.loads(info_file.read_text())
    entry: dict[str, Any] = {"size": model_file.stat().st_size}
    if info["checksum_algorithm"]:
        entry["checksum"] = info["checksum"] = checksum_file(model_file,
                                                             info["checksum_algorithm"])
    info["files"]["model.pt"] = entry
    info_file.write_text(json.dumps(info))


def test_checkpoint_crafted_to_run_code_is_not_executed(tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    directory = tmp_path / "save"
    with new_ckpt(directory, ckpt_checksum=True) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 2.0)
        good = {k: v.clone() for k, v in model.state_dict().items()}
        train_steps(model, optimizer)
        ckpt.ckpt_epoch(1, 1.0)
    marker = tmp_path / "marker"
    evil = {"model_state_dict": _RunsCode(marker), "optimizer_state_dict": {}}
    _replace_model_file(directory / "ckpts" / "epochs" / "002", evil)

    fresh = make_net(1)
    with new_ckpt(directory, ckpt_checksum=True) as ckpt:
        ckpt.set_model({"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)})
        J = ckpt.restart(fresh)
    assert not marker.exists()
    assert J is not None and J["epoch"] == 1  # fell back to the older, clean checkpoint
    assert [s["epoch"] for s in J["skipped"]] == [2]
    reason = J["skipped"][0]["reason"]
    assert "UnpicklingError" in reason and "GLOBAL exec was not an allowed global" in reason
    assert "allowlist" not in reason  # torch's advice to trust the file is left out
    assert_same_state(fresh.state_dict(), good)

    # Mode "required" with no clean checkpoint left: refused, still nothing executed.
    shutil.rmtree(directory / "ckpts" / "epochs" / "001")
    with new_ckpt(directory, ckpt_restart_mode="required") as ckpt:
        ckpt.set_model({"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)})
        with pytest.raises(CheckpointNotFoundError):
            ckpt.restart(fresh)
    assert not marker.exists()

    # The payload is real: an unsafe load would have run it.
    torch.load(directory / "ckpts" / "epochs" / "002" / "model.pt", weights_only=False)
    assert marker.read_text() == "pwned"


def _live_values(objects: dict[str, Any]) -> dict[str, Any]:
    """Copies of every live value a restore could touch: model, optimizer, global RNGs."""
    return {
        "model": {k: v.clone() for k, v in objects["model"].state_dict().items()},
        "optimizer": copy.deepcopy(objects["optimizer"].state_dict()),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def _assert_unchanged(objects: dict[str, Any], before: dict[str, Any]) -> None:
    after = _live_values(objects)
    assert_same_state(after["model"], before["model"])
    assert_same_state(after["optimizer"], before["optimizer"])
    assert torch.equal(after["torch_rng"], before["torch_rng"])
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"])
    assert after["python_rng"] == before["python_rng"]


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in ("ckpt.log", "ckpt.lock")}


def _saved_run(directory: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer)
    with new_ckpt(directory) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
        train_steps(model, optimizer)
        ckpt.ckpt_epoch(1, 0.5)


def _mismatching(kind: str) -> dict[str, Any]:
    if kind == "shape":
        model = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Dropout(0.2), nn.Linear(9, 1))
        optimizer: Any = torch.optim.Adam(model.parameters())
    elif kind == "optimizer type":
        model = make_net(1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:  # parameter groups
        model = make_net(1)
        params = list(model.parameters())
        optimizer = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}])
    train_steps(model, optimizer, 1)  # non-trivial live optimizer state
    return {"model": model, "optimizer": optimizer}


@pytest.mark.parametrize("mode", ["auto", "required"])
@pytest.mark.parametrize("kind", ["shape", "optimizer type", "parameter groups"])
def test_a_checkpoint_that_does_not_fit_raises_mismatch_and_changes_nothing(
        tmp_path: Path, kind: str, mode: str) -> None:
    """Incompatible is not damaged: a clear error, no fallback, no fresh start over the run."""
    _saved_run(tmp_path)
    on_disk = _tree_bytes(tmp_path)
    objects = _mismatching(kind)
    before = _live_values(objects)
    with new_ckpt(tmp_path, ckpt_restart_mode=mode) as ckpt:
        ckpt.set_model(objects)
        with pytest.raises(candle.CheckpointMismatchError) as err:
            ckpt.restart(objects["model"])
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    if kind == "shape":
        assert "(9, 4)" in message and "(8, 4)" in message  # both shapes named
    elif kind == "optimizer type":
        assert "Adam" in message and "SGD" in message
    else:
        assert "parameter group" in message
    _assert_unchanged(objects, before)
    assert _tree_bytes(tmp_path) == on_disk


def test_a_damaged_rng_state_falls_back_and_changes_nothing_until_a_valid_one_loads(
        tmp_path: Path) -> None:
    """Damage inside model.pt (valid zip, bad RNG record) is caught before anything changes."""
    _saved_run(tmp_path)
    path = tmp_path / "ckpts" / "epochs" / "002" / "model.pt"
    payload = torch.load(path, weights_only=True)
    payload["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)  # not a generator state
    torch.save(payload, path)
    info_path = path.parent / "ckpt-info.json"
    info = json.loads(info_path.read_text())
    info["files"]["model.pt"]["size"] = path.stat().st_size
    info_path.write_text(json.dumps(info))
    objects = {"model": make_net(1), "optimizer": None}
    objects["optimizer"] = torch.optim.Adam(objects["model"].parameters())
    with new_ckpt(tmp_path, ckpt_restart_mode="required") as ckpt:
        ckpt.set_model(objects)
        J = ckpt.restart(objects["model"])
    assert J is not None and J["epoch"] == 1  # fell back past the damaged epoch 2
    assert "rng['torch']" in J["skipped"][0]["reason"]

    lone = {"model": make_net(2), "optimizer": None}
    lone["optimizer"] = torch.optim.Adam(lone["model"].parameters())
    shutil.rmtree(tmp_path / "ckpts" / "epochs" / "001")
    before = _live_values(lone)
    with new_ckpt(tmp_path, ckpt_restart_mode="required") as ckpt:
        ckpt.set_model(lone)
        with pytest.raises(CheckpointNotFoundError):
            ckpt.restart(lone["model"])
    _assert_unchanged(lone, before)


def test_a_restart_holds_no_rollback_copy_of_the_model(tmp_path: Path) -> None:
    """Peak RSS of a restart grows by about the checkpoint read, not by another model copy."""
    script = textwrap.dedent("""
        import json, resource, sys
        import torch
        from torch import nn
        import candle_ckpt as candle

        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(12)])  # ~200 MB
        opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no state: file ~ model size
        params = {"epochs": 2, "ckpt_directory": sys.argv[1]}
        if sys.argv[2] == "save":
            with candle.CandleCkptPyTorch(params, logger=None) as ckpt:
                ckpt.set_model({"model": model, "optimizer": opt})
                ckpt.ckpt_epoch(0, 1.0)
        else:
            ckpt = candle.CandleCkptPyTorch(params, logger=None)
            ckpt.set_model({"model": model, "optimizer": opt})
            before = rss()
            J = ckpt.restart(model)
            assert J is not None
            print(json.dumps({"growth": rss() - before}))
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path), "save"], check=True)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path), "load"], check=True,
                         capture_output=True, text=True).stdout
    growth = json.loads(out.strip().splitlines()[-1])["growth"]
    size = (tmp_path / "ckpts" / "epochs" / "001" / "model.pt").stat().st_size
    assert size > 190e6
    # The old restore kept a full copy of the live model for rollback (+1 model size).
    assert growth < 1.5 * size, (growth, size)


# ------------------------------------------------------------------------------ original CANDLE
def _copy_fixture(destination: Path) -> Path:
    shutil.copytree(FIXTURES / "torch", destination)
    for root, dirs, files in os.walk(destination):
        for name in dirs + files:
            path = Path(root) / name
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    destination.chmod(destination.stat().st_mode | stat.S_IWUSR)
    for name in ("last", "best"):  # the original wrote absolute links
        os.symlink(destination / "epochs" / "006", destination / name)
    return destination


def _legacy_objects() -> dict[str, Any]:
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    return {"model": model, "optimizer": torch.optim.Adam(model.parameters(), lr=1e-3)}


def _assert_fixture_epoch(objects: dict[str, Any], epoch_dir: Path) -> None:
    expected = np.load(FIXTURES / "expected-weights.npz")
    epoch = int(epoch_dir.name)
    state = objects["model"].state_dict()
    for key, value in state.items():
        assert np.array_equal(value.numpy(), expected[f"torch_{epoch:03d}_{key}"]), key
    original = torch.load(epoch_dir / "model.h5", weights_only=True)["optimizer_state_dict"]
    assert_same_state(objects["optimizer"].state_dict(), original)


@pytest.mark.parametrize("moved", [False, True], ids=["absolute-links", "dangling-after-move"])
def test_restarts_from_original_candle_torch_checkpoint(tmp_path: Path, moved: bool) -> None:
    directory = _copy_fixture(tmp_path / "orig")
    if moved:
        directory = Path(shutil.move(directory, tmp_path / "moved"))
        assert not (directory / "last").exists()  # the absolute link dangles now
    objects = _legacy_objects()
    ckpt = candle.CandleCkptPyTorch(
        {"epochs": 6, "ckpt_directory": str(directory), "ckpt_checksum": True,
         "ckpt_save_best_metric": "loss", "ckpt_restart_mode": "required"}, logger=None)
    ckpt.set_model(objects)
    J = ckpt.restart(objects["model"])
    ckpt.close()
    assert J is not None and J["epoch"] == 6 and J["skipped"] == []
    assert J["restarted_from"] == str(directory / "epochs" / "006")
    assert ckpt.best_metric_last == pytest.approx(0.21194984018802643)
    _assert_fixture_epoch(objects, directory / "epochs" / "006")


def test_original_candle_crc32_is_verified_and_a_damaged_file_skipped(tmp_path: Path) -> None:
    directory = _copy_fixture(tmp_path / "orig")
    model_file = directory / "epochs" / "006" / "model.h5"
    data = bytearray(model_file.read_bytes())
    data[-100] ^= 0xFF  # same size: only the CRC32 can tell
    model_file.write_bytes(bytes(data))

    objects = _legacy_objects()
    ckpt = candle.CandleCkptPyTorch(
        {"epochs": 6, "ckpt_directory": str(directory), "ckpt_checksum": True,
         "ckpt_save_best_metric": "loss"}, logger=None)
    ckpt.set_model(objects)
    J = ckpt.restart(objects["model"])
    ckpt.close()
    assert J is not None and J["epoch"] == 5
    assert [s["epoch"] for s in J["skipped"]] == [6]
    assert "checksum" in J["skipped"][0]["reason"]
    _assert_fixture_epoch(objects, directory / "epochs" / "005")


# ------------------------------------------------------------------------------ exact resume
def _train(ckpt_dir: Path, out: Path, epochs: int, exit_after: int = 0,
           async_: bool = False, *flags: str) -> str:
    cmd = [sys.executable, str(HERE / "torch_trainer.py"), "--ckpt-dir", str(ckpt_dir),
           "--epochs", str(epochs), "--out", str(out), "--exit-after", str(exit_after),
           *flags]
    if async_:
        cmd.append("--async")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    expected_rc = 17 if exit_after else 0
    assert done.returncode == expected_rc, done.stderr
    return done.stdout


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_kill_and_restart_is_bit_identical_to_an_uninterrupted_run(
    tmp_path: Path, async_: bool
) -> None:
    epochs, kill_after = 5, 2
    straight = tmp_path / "straight.pt"
    resumed = tmp_path / "resumed.pt"
    assert "initial_epoch=0" in _train(tmp_path / "a", straight, epochs)
    _train(tmp_path / "b", resumed, epochs, exit_after=kill_after, async_=async_)
    assert not resumed.exists()  # the process died without finishing
    assert f"initial_epoch={kill_after}" in _train(tmp_path / "b", resumed, epochs,
                                                   async_=async_)

    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["optimizer"], b["optimizer"])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_validation_after_ckpt_epoch_resumes_exactly_only_with_on_epoch_begin(
    tmp_path: Path, async_: bool
) -> None:
    """A validation DataLoader(shuffle=True) drawn after ckpt_epoch: a real client's order.

    Without on_epoch_begin the checkpoint's torch RNG is one draw behind the next epoch's
    start, and the resumed run drifts; with it, the resume is bit-identical.
    """
    epochs, kill_after = 4, 2

    def straight_and_resumed(case: str, *flags: str) -> tuple[dict[str, Any], dict[str, Any]]:
        straight, resumed = tmp_path / f"{case}-straight.pt", tmp_path / f"{case}-resumed.pt"
        _train(tmp_path / f"{case}-a", straight, epochs, 0, async_, *flags)
        _train(tmp_path / f"{case}-b", resumed, epochs, kill_after, async_, *flags)
        assert not resumed.exists()
        out = _train(tmp_path / f"{case}-b", resumed, epochs, 0, async_, *flags)
        assert f"initial_epoch={kill_after}" in out
        return (torch.load(straight, weights_only=True),
                torch.load(resumed, weights_only=True))

    a, b = straight_and_resumed("plain", "--validate")
    assert not torch.equal(a["torch_rng"], b["torch_rng"])  # the draw the checkpoint missed
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    a, b = straight_and_resumed("epoch-begin", "--validate", "--epoch-begin")
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["optimizer"], b["optimizer"])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])


def test_after_on_epoch_begin_each_checkpoint_holds_the_state_the_next_epoch_starts_from(
    tmp_path: Path,
) -> None:
    """ckpt_epoch records; the next on_epoch_begin (or on_train_end) takes the checkpoint."""
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ckpt = new_ckpt(tmp_path, epochs=2, ckpt_save_best_metric="loss")
    ckpt.set_model({"model": model, "optimizer": optimizer})
    epochs = tmp_path / "ckpts" / "epochs"
    assert ckpt.on_epoch_begin(0) is False  # nothing pending yet
    assert ckpt.ckpt_epoch(0, train_steps(model, optimizer)) is False
    assert not (epochs / "001").exists()
    torch.rand(1)  # what a validation pass would draw after ckpt_epoch
    at_begin = torch.get_rng_state()
    assert ckpt.on_epoch_begin(1) is True
    saved = torch.load(epochs / "001" / "model.pt", weights_only=True)
    assert torch.equal(saved["rng"]["torch"], at_begin)
    ckpt.ckpt_epoch(1, train_steps(model, optimizer))
    assert not (epochs / "002").exists()
    ckpt.on_train_end()
    assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/002"


def test_model_pt_skips_the_zip_crc_loads_with_torch_load_and_restores_the_setting(
        tmp_path: Path) -> None:
    """torch's zip CRC32 is off for our write only: our manifest checks the bytes."""
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer)
    assert torch.serialization.get_crc32_options() is True
    with new_ckpt(tmp_path, ckpt_checksum=True) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        ckpt.ckpt_epoch(0, 1.0)
    assert torch.serialization.get_crc32_options() is True  # the user's setting is back
    path = tmp_path / "ckpts" / "epochs" / "001" / "model.pt"
    loaded = torch.load(path, weights_only=True)
    assert_same_state(loaded["model_state_dict"], model.state_dict())
    # A flipped byte inside a tensor: torch.load would not notice; our checksum does.
    data = bytearray(path.read_bytes())
    needle = model.state_dict()["0.weight"].numpy().tobytes()[:16]
    data[data.find(needle) + 3] ^= 0xFF
    path.write_bytes(data)
    with new_ckpt(tmp_path, ckpt_checksum=True, ckpt_restart_mode="required") as ckpt:
        fresh = make_net(1)
        ckpt.set_model({"model": fresh, "optimizer": torch.optim.Adam(fresh.parameters())})
        with pytest.raises(CheckpointNotFoundError, match="checksum"):
            ckpt.restart()


def test_the_model_file_is_read_without_following_a_link(tmp_path: Path) -> None:
    """Loading opens the regular file itself (a link swapped in after checks is refused)."""
    from candle_ckpt.backends.torch.files import load_regular as _load_regular

    real = tmp_path / "elsewhere.pt"
    torch.save({"x": torch.ones(2)}, real)
    assert torch.equal(_load_regular(real)["x"], torch.ones(2))
    link = tmp_path / "model.pt"
    link.symlink_to(real)
    with pytest.raises(candle.UnsafeFileError):
        _load_regular(link)


def test_async_capture_buffers_are_allocated_before_the_first_save(tmp_path: Path) -> None:
    """The first background save's capture reuses buffers made at set_model / restart."""
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer)
    with new_ckpt(tmp_path, ckpt_async=True) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        buffers = ckpt.backend.buffers
        prefilled = buffers.previous(live=False)["model"]["0.weight"]
        ckpt.ckpt_epoch(0, 1.0)
        assert buffers.previous(live=False)["model"]["0.weight"] is prefilled  # reused, not new
    fresh = make_net(1)
    fresh_opt = torch.optim.Adam(fresh.parameters())
    with new_ckpt(tmp_path, ckpt_async=True) as ckpt:
        ckpt.set_model({"model": fresh, "optimizer": fresh_opt})
        buffers = ckpt.backend.buffers
        assert buffers.previous(live=False)["optimizer"]["state"] == {}  # no Adam state yet
        assert ckpt.restart(fresh) is not None
        assert len(buffers.previous(live=False)["optimizer"]["state"]) == len(
            list(fresh.parameters()))


class _WithView(nn.Module):
    """A module whose buffer is a view into a larger storage (copied on every capture)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.register_buffer("window", torch.arange(16.0)[4:12])


def test_sync_captures_reuse_their_host_copies_and_share_only_live_tensors(
        tmp_path: Path) -> None:
    model = _WithView()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with new_ckpt(tmp_path) as ckpt:
        ckpt.set_model({"model": model, "optimizer": optimizer})
        first = ckpt.backend.capture(live=True).payload["model_state_dict"]
        live = model.state_dict()
        # compact CPU tensors are written as they are; the view is copied
        assert first["lin.weight"].data_ptr() == live["lin.weight"].data_ptr()
        assert first["window"].data_ptr() != live["window"].data_ptr()
        assert first["window"].untyped_storage().nbytes() == 8 * 4  # only the view's bytes
        kept = ckpt.backend.buffers.previous(live=True)["model"]
        assert kept["lin.weight"] is None  # a live tensor never becomes a buffer
        model.window.add_(100.0)
        second = ckpt.backend.capture(live=True).payload["model_state_dict"]
        assert second["window"].data_ptr() == first["window"].data_ptr()  # reused
        assert torch.equal(second["window"], model.window)
        ckpt.ckpt_epoch(0, 1.0)
    saved = torch.load(tmp_path / "ckpts" / "last" / "model.pt", weights_only=True)
    assert torch.equal(saved["model_state_dict"]["window"], torch.arange(16.0)[4:12] + 100.0)


def test_ckpt_keep_bytes_keeps_the_newest_that_fit_and_restart_is_exact(tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = new_ckpt(tmp_path / "probe")
    probe.set_model({"model": model, "optimizer": optimizer})
    train_steps(model, optimizer)
    probe.ckpt_epoch(0, 1.0)
    probe.close()
    one = sum(f.stat().st_size for f in (tmp_path / "probe/ckpts/last").iterdir())

    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ckpt = new_ckpt(tmp_path / "run", ckpt_keep_mode="all", ckpt_keep_bytes=int(2.5 * one))
    ckpt.set_model({"model": model, "optimizer": optimizer})
    for epoch in range(6):
        train_steps(model, optimizer)
        ckpt.ckpt_epoch(epoch, 10.0 - epoch)  # improving: the newest is the best
    ckpt.close()
    names = sorted(p.name for p in (tmp_path / "run/ckpts/epochs").iterdir())
    assert names == ["005", "006"]

    model2 = make_net(3)
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    again = new_ckpt(tmp_path / "run", ckpt_keep_mode="all", ckpt_keep_bytes=int(2.5 * one))
    again.set_model({"model": model2, "optimizer": optimizer2})
    assert again.restart()["epoch"] == 6
    assert_same_state(model2.state_dict(), model.state_dict())
    assert_same_state(optimizer2.state_dict(), optimizer.state_dict())
    again.close()


def test_a_model_file_that_does_not_unpickle_is_skipped_saying_why_in_one_line(
        tmp_path: Path) -> None:
    model = make_net(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ckpt = new_ckpt(tmp_path)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    for epoch in range(2):
        train_steps(model, optimizer)
        ckpt.ckpt_epoch(epoch, 1.0 - epoch / 10)
    ckpt.close()
    damaged = tmp_path / "ckpts" / "epochs" / "002" / "model.pt"
    data = bytearray(damaged.read_bytes())
    data[100:200] = bytes(100)  # inside the pickle of data.pkl: same size, no checksums
    damaged.write_bytes(bytes(data))

    again = new_ckpt(tmp_path)
    again.set_model({"model": make_net(1), "optimizer": optimizer})
    J = again.restart()
    again.close()
    assert J is not None and J["epoch"] == 1
    (skipped,) = J["skipped"]
    reason = skipped["reason"]
    assert "model.pt: torch.load(weights_only=True) cannot read it (damaged" in reason
    assert reason.endswith("): UnpicklingError: Unsupported operand 0") and "\n" not in reason
    assert "weights_only=False" not in reason and "weights_only` set to `False" not in reason
