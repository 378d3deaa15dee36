"""The Keras 3 backend with real Keras (no mocks): API, files, restart, exact resume."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import candle_ckpt as candle  # noqa: E402
from candle_ckpt.storage import lock  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "original-candle"
if not FIXTURE.is_dir():
    FIXTURE = Path("/work/shared/fixtures/original-candle")
SCRIPT = HERE / "keras_resume_script.py"


# ------------------------------------------------------------------------ helpers
def small_model(dropout: bool = True, seed: int = 7) -> Any:
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(0.5))
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def data(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True).astype("float32")


def params(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"epochs": 3, "ckpt_directory": str(tmp_path / "save"), **extra}


def values(variables: Any) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and np.array_equal(x, y), f"variable {i} differs"


def seed_states(model: Any) -> list[np.ndarray]:
    return values([v for v in model.variables if "seed_generator" in v.path])


def info_of(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "ckpt-info.json").read_text())


# ------------------------------------------------------------------------ API as written
def test_spec_usage_runs_as_written_and_restarts(tmp_path: Path) -> None:
    gParameters = params(tmp_path, ckpt_checksum=True)
    x, y = data()
    model = small_model()

    # The spec's "Usage", verbatim apart from the data arguments.
    initial_epoch = 0
    J = candle.restart(gParameters, model)
    if J is not None:
        initial_epoch = J["epoch"]
    ckpt = candle.CandleCheckpointCallback(gParameters)
    model.fit(x, y, validation_split=0.25, verbose=0, epochs=gParameters["epochs"],
              initial_epoch=initial_epoch, callbacks=[ckpt])
    ckpt.report_final()

    assert J is None
    last = tmp_path / "save" / "ckpts" / "last"
    assert os.readlink(last) == "epochs/003"
    again = small_model(seed=99)
    J = candle.restart(gParameters, again)
    assert J is not None and J["epoch"] == 3
    assert_same(values(again.variables), values(model.variables))
    assert_same(values(again.optimizer.variables), values(model.optimizer.variables))
    assert not lock._held, "module-level restart() must release the directory lock"


def test_newer_pattern_restores_weights_optimizer_and_seed_generators(tmp_path: Path) -> None:
    g = params(tmp_path, epochs=2)
    x, y = data()
    model = small_model()
    ckpt = candle.CandleCkptKeras(g)
    ckpt.set_model(model)
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0
    model.fit(x, y, validation_data=(x, y), epochs=2, initial_epoch=initial_epoch,
              verbose=0, callbacks=[ckpt])
    assert not any(np.array_equal(s, [0, 0]) for s in seed_states(model))

    fresh = small_model(seed=1)
    assert not np.array_equal(seed_states(fresh)[0], seed_states(model)[0])
    ckpt2 = candle.CandleCkptKeras(g)
    ckpt2.set_model(fresh)
    J = ckpt2.restart(fresh)
    ckpt2.close()
    assert J is not None and J["epoch"] == 2
    assert_same(values(fresh.variables), values(model.variables))  # incl. seed states
    assert_same(values(fresh.optimizer.variables), values(model.optimizer.variables))


# Every way CANDLE code calls restart on the callback: the spec's order, the module-level
# function's order (candle_lib's documented example), and gParameters where the model goes
# (Uno, after set_model). ``g`` is the gParameters, ``m`` the model.
RESTART_SHAPES = {
    "restart()": lambda ckpt, g, m: ckpt.restart(),
    "restart(model)": lambda ckpt, g, m: ckpt.restart(m),
    "restart(model, verbose)": lambda ckpt, g, m: ckpt.restart(m, False),
    "restart(gParameters, model)": lambda ckpt, g, m: ckpt.restart(g, m),
    "restart(Namespace, model)": lambda ckpt, g, m: ckpt.restart(argparse.Namespace(**g), m),
    "restart(gParameters)": lambda ckpt, g, m: ckpt.restart(g),
    "restart(not_a_model)": lambda ckpt, g, m: ckpt.restart("model.h5"),
}
NEEDS_A_MODEL = {"restart()", "restart(gParameters)", "restart(not_a_model)"}


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any]:
    """A run with one checkpoint (epoch 1), and its model."""
    g = params(tmp_path_factory.mktemp("run"), epochs=1)
    x, y = data()
    model = small_model()
    model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0,
              callbacks=[candle.CandleCkptKeras(g, logger=None)])
    return g, model


@pytest.mark.parametrize("shape", list(RESTART_SHAPES))
def test_restart_after_set_model_accepts_every_candle_call_shape(
        one_epoch_run: tuple[dict[str, Any], Any], shape: str) -> None:
    g, trained = one_epoch_run
    fresh = small_model(seed=99)
    ckpt = candle.CandleCkptKeras(g, verbose=False)
    ckpt.set_model(fresh)
    try:
        J = RESTART_SHAPES[shape](ckpt, g, fresh)
    finally:
        ckpt.close()
    assert J is not None and J["epoch"] == 1
    assert_same(values(fresh.variables), values(trained.variables))
    assert_same(values(fresh.optimizer.variables), values(trained.optimizer.variables))
    if shape == "restart(not_a_model)":  # as the original, but said: it is not loaded into
        log = (Path(g["ckpt_directory"]) / "ckpt.log").read_text()
        assert "the str given is not a model; ignored" in log


@pytest.mark.parametrize("shape", list(RESTART_SHAPES))
def test_restart_without_set_model_loads_the_model_passed_or_raises_saying_what_to_do(
        one_epoch_run: tuple[dict[str, Any], Any], shape: str) -> None:
    g, trained = one_epoch_run
    fresh = small_model(seed=99)
    before = values(fresh.variables)
    ckpt = candle.CandleCkptKeras(g, verbose=False)
    try:
        if shape in NEEDS_A_MODEL:
            with pytest.raises(candle.CkptParamError) as err:
                RESTART_SHAPES[shape](ckpt, g, fresh)
        else:
            J = RESTART_SHAPES[shape](ckpt, g, fresh)
    finally:
        ckpt.close()
    if shape in NEEDS_A_MODEL:
        message = str(err.value)
        assert "set_model(" in message and "restart(gParameters, model)" in message
        if shape == "restart(not_a_model)":
            assert "argument is a str, not a model" in message
        assert_same(values(fresh.variables), before)
    else:
        assert J is not None and J["epoch"] == 1
        assert_same(values(fresh.variables), values(trained.variables))


def test_candle_lib_example_restart_with_gparameters_then_fit_continues(tmp_path: Path) -> None:
    """candle_lib's documented Keras usage: no set_model, restart(gParameters, model)."""
    gParameters = params(tmp_path, epochs=2)
    x, y = data()
    small_model().fit(x, y, validation_data=(x, y), epochs=1, verbose=0,
                      callbacks=[candle.CandleCkptKeras(dict(gParameters, epochs=1))])
    model = small_model(seed=99)
    ckpt = candle.CandleCkptKeras(gParameters, verbose=False)
    J = ckpt.restart(gParameters, model)
    assert J is not None and J["epoch"] == 1
    model.fit(x, y, validation_data=(x, y), epochs=gParameters["epochs"],
              initial_epoch=J["epoch"], verbose=0, callbacks=[ckpt])
    assert os.readlink(tmp_path / "save" / "ckpts" / "last") == "epochs/002"


def test_module_level_restart_accepts_verbose_and_a_namespace_and_refuses_no_model(
        one_epoch_run: tuple[dict[str, Any], Any]) -> None:
    g, trained = one_epoch_run
    for call in (lambda m: candle.restart(g, m, False),
                 lambda m: candle.restart(argparse.Namespace(**g), m)):
        fresh = small_model(seed=99)
        J = call(fresh)
        assert J is not None and J["epoch"] == 1
        assert_same(values(fresh.variables), values(trained.variables))
    with pytest.raises(candle.CkptParamError, match="no model; pass it"):
        candle.restart(g)
    with pytest.raises(candle.CkptParamError, match="argument is a str, not a model"):
        candle.restart(g, "model.h5")
    assert not lock._held, "a refused module-level restart() must release the lock too"


def test_checkpoint_files_and_info_are_keras_native(tmp_path: Path) -> None:
    g = params(tmp_path, epochs=2, ckpt_checksum=True, ckpt_metadata="job 42")
    x, y = data()
    model = small_model()
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
              callbacks=[candle.CandleCkptKeras(g)])
    directory = tmp_path / "save" / "ckpts" / "epochs" / "002"
    info = info_of(directory)
    assert info["model_file"] == "model.weights.h5"
    assert set(info["files"]) == {"model.weights.h5", "rng-state.json"}
    for name, entry in info["files"].items():
        assert entry["size"] == (directory / name).stat().st_size
        assert entry["checksum"] == candle.checksum_file(None, directory / name)
    assert info["checksum"] == info["files"]["model.weights.h5"]["checksum"]
    assert info["epoch"] == 2 and info["backend"] == "keras" and info["metadata"] == "job 42"
    assert info["weights_only"] is False and info["optimizer_state"] is True
    assert info["keras_version"] == keras.__version__
    assert info["keras_backend"] == keras.backend.backend()
    # Plain Keras reads the weights file, optimizer included, once the optimizer is built.
    plain = small_model(seed=3)
    plain.optimizer.build(plain.trainable_variables)
    plain.load_weights(directory / "model.weights.h5")
    assert_same(values(plain.trainable_variables), values(model.trainable_variables))
    assert_same(values(plain.optimizer.variables), values(model.optimizer.variables))
    rng = json.loads((directory / "rng-state.json").read_text())
    assert len(rng["seed_generators"]) == 1
    assert rng["seed_generators"][0]["value"] == seed_states(model)[0].tolist()


def test_rng_file_and_info_name_every_stream_in_use(tmp_path: Path) -> None:
    """Every RNG stream the run drew from is in rng-state.json and rng_streams."""
    x, y = data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.5), keras.layers.GaussianNoise(0.1),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    keras.random.normal((2,))  # an unseeded op: draws from Keras' global seed generator
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[candle.CandleCkptKeras(params(tmp_path, epochs=1,
                                                       ckpt_save_best_metric="loss"))])
    directory = tmp_path / "save" / "ckpts" / "epochs" / "001"
    streams = info_of(directory)["rng_streams"]
    rng = json.loads((directory / "rng-state.json").read_text())
    generators = [v.path for v in model.variables if "seed_generator" in v.path]
    assert len(generators) == 2  # Dropout and GaussianNoise
    expected = [f"seed_generator:{p}" for p in generators] + [
        "keras_global_seed_generator", "python_random", "numpy_random"]
    if "torch" in sys.modules:  # torch's global RNG may be drawn from once it is loaded
        expected.append("torch_random")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        expected.append("torch_cuda_random")
    assert sorted(streams) == sorted(expected)
    assert [r["path"] for r in rng["seed_generators"]] == generators
    for name in streams:
        if not name.startswith("seed_generator:"):
            assert rng[name] is not None, name


def test_capture_copies_so_training_on_does_not_change_the_snapshot(tmp_path: Path) -> None:
    x, y = data()
    model = small_model()
    model.fit(x, y, epochs=1, verbose=0)
    ckpt = candle.CandleCkptKeras(params(tmp_path, ckpt_save_best=False))
    ckpt.set_model(model)
    before = values(model.trainable_variables)
    snapshot = ckpt.capture_state()
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(before[0], values(model.trainable_variables)[0])
    assert np.array_equal(snapshot.weights["layers/dense"][1]["0"], before[0])
    ckpt.close()


def test_capture_reuses_the_previous_arrays_and_holds_the_new_values(tmp_path: Path) -> None:
    x, y = data()
    model = small_model()
    model.fit(x, y, epochs=1, verbose=0)
    ckpt = candle.CandleCkptKeras(params(tmp_path, ckpt_save_best=False))
    ckpt.set_model(model)
    first = ckpt.capture_state().weights
    kernel = first["layers/dense"][1]["0"]
    model.fit(x, y, epochs=1, verbose=0)
    second = ckpt.capture_state().weights
    assert second["layers/dense"][1]["0"] is kernel  # copied into, not reallocated
    assert np.array_equal(kernel, values(model.trainable_variables)[0])
    saved = [a for _, arrays in second.values() for a in arrays.values()]
    assert len(saved) == len(model.variables) - len(seed_states(model)) + len(
        model.optimizer.variables)
    model.fit(x, y, epochs=1, verbose=0)  # training on leaves the snapshot alone
    assert not np.array_equal(kernel, values(model.trainable_variables)[0])
    ckpt.close()


def test_save_weights_only_leaves_out_the_optimizer_and_says_so(tmp_path: Path) -> None:
    g = params(tmp_path, epochs=2, ckpt_save_weights_only=True)
    x, y = data()
    model = small_model()
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
              callbacks=[candle.CandleCkptKeras(g)])
    directory = tmp_path / "save" / "ckpts" / "epochs" / "002"
    info = info_of(directory)
    assert info["weights_only"] is True and info["optimizer_state"] is False
    with h5py.File(directory / "model.weights.h5", "r") as f:
        assert "optimizer" not in f and "layers" in f
    fresh = small_model(seed=5)
    J = candle.restart(g, fresh)
    assert J is not None and J["epoch"] == 2
    assert_same(values(fresh.variables), values(model.variables))
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 0


def test_missing_metric_raises_naming_it_and_the_metrics_present(tmp_path: Path) -> None:
    x, y = data()
    model = small_model()
    ckpt = candle.CandleCkptKeras(params(tmp_path))  # val_loss, but no validation data
    with pytest.raises(candle.MetricNotFoundError) as caught:
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ckpt])
    message = str(caught.value)
    assert "'val_loss'" in message and "'loss'" in message
    assert isinstance(caught.value, KeyError)
    assert not (tmp_path / "save" / "ckpts" / "epochs" / "001").exists()


@pytest.mark.parametrize(("mode", "best_epoch"), [("max", 2), ("min", 1), ("auto", 2)])
def test_any_logs_key_can_be_the_best_metric_in_either_direction(
        tmp_path: Path, mode: str, best_epoch: int) -> None:
    g = params(tmp_path, ckpt_save_best_metric="my_accuracy", ckpt_save_best_mode=mode,
               ckpt_save_interval=100, epochs=10)
    model = small_model()
    ckpt = candle.CandleCkptKeras(g)
    ckpt.set_model(model)
    for epoch, score in enumerate([0.2, 0.7, 0.5]):
        ckpt.on_epoch_end(epoch, {"loss": 1.0, "my_accuracy": score})
    ckpt.close()
    base = tmp_path / "save" / "ckpts"
    assert os.readlink(base / "best") == f"epochs/{best_epoch:03d}"
    info = info_of(base / "best")
    assert info["save_best_metric"] == "my_accuracy"
    assert info["best_mode"] == ("max" if mode == "auto" else mode)
    # Only improvements are saved when no epoch falls on the interval.
    saved = sorted(p.name for p in (base / "epochs").iterdir())
    assert saved == (["001", "002"] if best_epoch == 2 else ["001"])


def test_a_second_run_redoing_the_best_epoch_worse_never_leaves_best_claiming_it(
        tmp_path: Path) -> None:
    model = small_model()
    for losses in ([0.5, 0.1, 0.3], [0.6, 0.4]):
        ckpt = candle.CandleCkptKeras(params(tmp_path, epochs=3), logger=None)
        ckpt.set_model(model)
        for epoch, loss in enumerate(losses):
            ckpt.on_epoch_end(epoch, {"loss": loss, "val_loss": loss})
        ckpt.close()
    base = tmp_path / "save" / "ckpts"
    assert os.readlink(base / "best") == "epochs/003"
    assert info_of(base / "best")["metric_value"] == 0.3
    assert min(info_of(p)["metric_value"] for p in (base / "epochs").iterdir()) == 0.3
    last = info_of(base / "last")
    assert (last["epoch"], last["epoch_best"], last["best_metric_last"]) == (2, 3, 0.3)


def test_older_callback_signatures_take_logs_and_one_based_epoch(tmp_path: Path) -> None:
    ckpt = candle.CandleCheckpointCallback(params(tmp_path, ckpt_save_interval=100, epochs=9))
    ckpt.set_model(small_model())
    assert ckpt.save_check({"val_loss": 0.5}, 1) is True
    assert ckpt.epoch_best == 1 and ckpt.best_metric_last == 0.5
    assert ckpt.save_check_best({"val_loss": 0.7}, 2) is False
    assert ckpt.save_check({"val_loss": 0.7}, 2) is False
    with pytest.raises(candle.MetricNotFoundError, match="'loss'"):
        ckpt.save_check({"loss": 0.1}, 3)
    ckpt.close()


def test_unbuilt_model_is_refused_rather_than_silently_started_fresh(tmp_path: Path) -> None:
    g = params(tmp_path)
    model = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(candle.CkptParamError, match="not built"):
        candle.restart(g, model)


def test_restart_json_reads_ckpt_info(tmp_path: Path) -> None:
    x, y = data()
    g = params(tmp_path, epochs=1)
    small_model().fit(x, y, validation_data=(x, y), epochs=1, verbose=0,
                      callbacks=[candle.CandleCkptKeras(g)])
    J = candle.restart_json(g, None, tmp_path / "save" / "ckpts" / "epochs" / "001")
    assert J["epoch"] == 1 and J["model_file"] == "model.weights.h5"


def test_multigpu_checkpoint_saves_the_template_model_on_keras3(tmp_path: Path) -> None:
    keras.utils.set_random_seed(3)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="template")
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(1)])
    outer.compile(optimizer="adam", loss="mse")
    path = tmp_path / "template.weights.h5"
    cb = candle.MultiGPUCheckpoint(str(path), monitor="loss", save_weights_only=True)
    x, y = data()
    outer.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    assert cb.model is inner
    copy = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    copy.load_weights(path)
    assert_same(values(copy.variables), values(inner.variables))
    with pytest.raises(candle.CkptParamError, match="options"):
        candle.MultiGPUCheckpoint(str(path), options=object())


# ------------------------------------------------------------------------ original CANDLE
def fixture_copy(tmp_path: Path, target: str | None = None) -> Path:
    """The original-CANDLE Keras fixture, writable, with ABSOLUTE last/best links."""
    root = tmp_path / "orig"
    shutil.copytree(FIXTURE / "keras", root, copy_function=shutil.copyfile)
    for d, _, _ in os.walk(root):
        os.chmod(d, 0o755)
    link = target or str(root / "epochs" / "006")
    os.symlink(link, root / "last")
    os.symlink(link, root / "best")
    return root


def fixture_model() -> Any:
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def expected_weights(epoch: int) -> list[np.ndarray]:
    npz = np.load(FIXTURE / "expected-weights.npz")
    keys = sorted((k for k in npz.files if k.startswith(f"keras_{epoch:03d}_")),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    assert keys, f"no keras_{epoch:03d}_* weights in the fixture"
    return [npz[k] for k in keys]


def saved_optimizer_iterations(path: Path) -> int:
    with h5py.File(path, "r") as f:
        group = f["optimizer_weights"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        return int(np.array(group[names[0]]))


@pytest.mark.parametrize("moved", [False, True], ids=["absolute-link", "dangling-after-move"])
def test_restart_from_original_candle_keras_fixture(tmp_path: Path, moved: bool) -> None:
    target = "/nonexistent/old/place/epochs/006" if moved else None
    root = fixture_copy(tmp_path, target)
    model = fixture_model()
    g = {"epochs": 8, "ckpt_directory": str(root), "ckpt_checksum": True}
    J = candle.restart(g, model)
    assert J is not None and J["epoch"] == 6 and J["skipped"] == []
    assert_same(values(model.get_weights()), expected_weights(6))
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert iterations == saved_optimizer_iterations(root / "epochs" / "006" / "model.h5") > 0
    log = (root / "ckpt.log").read_text()
    assert "restored weights and optimizer state" in log
    if moved:
        assert "re-anchored" in log


def test_fixture_crc32_mismatch_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    root = fixture_copy(tmp_path)
    broken = root / "epochs" / "006" / "model.h5"
    data_ = bytearray(broken.read_bytes())
    data_[-100] ^= 0xFF  # same size: only the CRC32 can tell
    broken.write_bytes(bytes(data_))
    model = fixture_model()
    g = {"epochs": 8, "ckpt_directory": str(root), "ckpt_checksum": True}
    J = candle.restart(g, model)
    assert J is not None and J["epoch"] == 5
    assert [s["epoch"] for s in J["skipped"]] == [6]
    assert "checksum" in J["skipped"][0]["reason"]
    assert_same(values(model.get_weights()), expected_weights(5))


def test_fixture_can_be_trained_on_with_the_new_callback(tmp_path: Path) -> None:
    root = fixture_copy(tmp_path)
    model = fixture_model()
    g = {"epochs": 7, "ckpt_directory": str(root)}
    ckpt = candle.CandleCkptKeras(g)
    J = ckpt.restart(model)
    assert J is not None
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32)).astype("float32")
    model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=7, initial_epoch=J["epoch"],
              verbose=0, callbacks=[ckpt])
    assert os.readlink(root / "ckpts" / "last") == "epochs/007"
    assert (root / "epochs" / "006" / "model.h5").is_file()  # an earlier run's: kept


# ------------------------------------------------------------------------ exact resume
KERAS_BACKENDS = ["tensorflow", "torch", "jax"]
# The framework each Keras backend needs (CI installs all three: the [keras], [torch] and
# [jax] extras); importorskip only lets a partial local install run the rest.
FRAMEWORK = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}


def run_script(backend: str, *args: str, gpu: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, text=True,
                          capture_output=True, timeout=300)


_straight_runs: dict[tuple[str, bool], Path] = {}


def straight_run(backend: str, shuffle: bool, where: Path, gpu: bool = False) -> Path:
    """The uninterrupted run's variables: the same for every API, order and save mode."""
    key = (backend + ("-gpu" if gpu else ""), shuffle)
    if key not in _straight_runs:
        out = where / f"straight-{key[0]}-{shuffle}.npz"
        proc = run_script(backend, "straight", str(where / "unused"), str(out),
                          "--epochs", "5", *(["--shuffle"] if shuffle else []), gpu=gpu)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _straight_runs[key] = out
    return _straight_runs[key]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "shuffle", "api", "order", "save"), [
    ("tensorflow", False, "new", "compiled", "sync"),
    ("tensorflow", True, "old", "compiled", "sync"),
    ("torch", False, "old", "compiled", "sync"),
    ("torch", True, "new", "compiled", "sync"),
    ("jax", False, "new", "compiled", "sync"),
    ("jax", True, "old", "compiled", "sync"),
    # NT3's order: restart into the built, uncompiled model, then compile.
    ("tensorflow", True, "new", "nt3", "sync"),
    ("tensorflow", False, "old", "nt3", "async"),
    ("torch", True, "new", "nt3", "async"),
    ("torch", True, "old", "nt3", "sync"),
    ("jax", True, "new", "nt3", "sync"),
    ("jax", False, "old", "nt3", "async"),
])
def test_kill_and_restart_is_bit_identical_to_training_straight(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, backend: str,
        shuffle: bool, api: str, order: str, save: str) -> None:
    """N epochs straight == K epochs, os._exit after K's checkpoint, restart, N-K more.

    Every model and optimizer variable (Adam's moments and ``iterations``) is compared;
    with ``order="nt3"`` restart runs before ``compile``, so the optimizer state comes
    from the checkpoint only if the callback applies it when fit begins.
    """
    pytest.importorskip(FRAMEWORK[backend])
    flags = ["--epochs", "5", "--api", api] + (["--shuffle"] if shuffle else []) + (
        ["--compile-after-restart"] if order == "nt3" else []) + (
        ["--async"] if save == "async" else [])
    straight = straight_run(backend, shuffle, tmp_path_factory.mktemp("straight"))
    ckpt_dir = tmp_path / "ckpt"
    killed = run_script(backend, "killed", str(ckpt_dir), str(tmp_path / "never.npz"),
                        "--kill-after", "2", *flags)
    assert killed.returncode == 17, killed.stderr[-3000:]
    last = os.readlink(ckpt_dir / "ckpts" / "last")
    # An async save of epoch 2 may still be in flight when the process dies: then the
    # run resumes from epoch 1, which must be just as exact.
    assert last == "epochs/002" or (save == "async" and last == "epochs/001"), last
    resumed = run_script(backend, "resume", str(ckpt_dir), str(tmp_path / "resumed.npz"),
                         *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (ckpt_dir / "ckpt.log").read_text()
    assert f"restarted from {ckpt_dir / 'ckpts' / last}" in log
    if order == "nt3":
        assert "optimizer state is applied when training begins" in log
        assert "as training begins" in log.split("restarted from")[-1]

    a = np.load(straight)
    b = np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files)
    assert any(k.startswith("optimizer_") for k in a.files)
    differing = [k for k in a.files if not np.array_equal(a[k], b[k])]
    assert differing == [], f"{backend} {api} {order} {save} shuffle={shuffle}: {differing}"
    info = info_of(ckpt_dir / "ckpts" / "last")
    assert info["keras_backend"] == backend
    # The streams this run drew from: two Dropout seed generators, Python's and numpy's
    # global RNGs, and torch's where Keras runs on it (its DataLoader shuffles with it).
    streams = info["rng_streams"]
    assert sum(s.startswith("seed_generator:") for s in streams) == 2, streams
    assert {"python_random", "numpy_random"} <= set(streams), streams
    assert ("torch_random" in streams) == (backend == "torch"), streams


@pytest.mark.slow
@pytest.mark.parametrize("save", ["sync", "async"])
def test_kill_and_restart_on_a_gpu_is_bit_identical_to_training_straight(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, save: str) -> None:
    """Keras on torch with CUDA; Dropout draws from the CUDA generators."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False here); the "
                    "CPU runs above cover every other stream")
    flags = ["--epochs", "5", "--shuffle"] + (["--async"] if save == "async" else [])
    straight = straight_run("torch", True, tmp_path_factory.mktemp("straight"), gpu=True)
    ckpt_dir = tmp_path / "ckpt"
    killed = run_script("torch", "killed", str(ckpt_dir), str(tmp_path / "never.npz"),
                        "--kill-after", "2", *flags, gpu=True)
    assert killed.returncode == 17, killed.stderr[-3000:]
    resumed = run_script("torch", "resume", str(ckpt_dir), str(tmp_path / "resumed.npz"),
                         *flags, gpu=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = info_of(ckpt_dir / "ckpts" / "last")
    assert "torch_cuda_random" in info["rng_streams"], "the run did not use CUDA"
    a, b = np.load(straight), np.load(tmp_path / "resumed.npz")
    differing = [k for k in a.files if not np.array_equal(a[k], b[k])]
    assert differing == [], f"GPU {save}: {differing} differ"


IN_PROCESS_CHILD = "CANDLE_CKPT_KERAS_IN_PROCESS_CHILD"


@pytest.mark.slow
@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_the_in_process_keras_tests_pass_on_every_keras_backend(
        tmp_path: Path, backend: str) -> None:
    """This module's and the safety module's in-process tests, run on another backend.

    They run in this process on ``keras.backend.backend()``; for the others, a child
    pytest with KERAS_BACKEND set runs them (API, files, capture, legacy ``model.h5``
    restart and CRC fallback, Lambda safety). The subprocess tests are left out: they
    are parametrized over every backend themselves.
    """
    if os.environ.get(IN_PROCESS_CHILD):
        pytest.skip("inside the child run")
    if backend == keras.backend.backend():
        pytest.skip(f"{backend} is this process's backend: the tests ran here")
    pytest.importorskip(FRAMEWORK[backend])
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", **{IN_PROCESS_CHILD: "1"})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         "-W", "ignore::DeprecationWarning", "--basetemp", str(tmp_path / "t"),
         "-k", "not a_restart_that_fails and not before_compile and not import_candle",
         str(HERE / "test_keras.py"), str(HERE / "test_keras_safety.py")],
        env=env, text=True, capture_output=True, timeout=600, cwd=HERE.parents[1])
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


def test_import_candle_ckpt_does_not_import_keras() -> None:
    code = ("import sys, candle_ckpt; assert 'keras' not in sys.modules; "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------ validate, then apply
MISMATCH_SCRIPT = HERE / "keras_mismatch_script.py"


def run_mismatch(backend: str, case: str, directory: Path) -> dict[str, Any]:
    pytest.importorskip(FRAMEWORK[backend])
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(MISMATCH_SCRIPT), case, str(directory)],
                          env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    return result


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
@pytest.mark.parametrize(("case", "error", "named"), [
    ("shape", "CheckpointMismatchError", "(4, 8) float32 in the checkpoint, (4, 9)"),
    ("optimizer", "CheckpointMismatchError", "SGD"),
    ("rng", "CheckpointNotFoundError", "rng-state.json: a global RNG state is damaged"),
])
def test_a_restart_that_fails_leaves_every_live_value_bit_identical(
        tmp_path: Path, backend: str, case: str, error: str, named: str) -> None:
    """Mismatch (shape, optimizer type) or damage (RNG file): nothing live changes."""
    result = run_mismatch(backend, case, tmp_path / "c")
    assert result["error"] == error, result
    assert named in result["message"], result
    assert result["unchanged"], result


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
@pytest.mark.parametrize(("case", "named"), [
    ("late-optimizer", "it holds Adam state, the model's optimizer is SGD"),
    ("late-count", "10 optimizer variables in the checkpoint, 14 in Adam"),
])
def test_restart_before_compile_then_an_optimizer_that_does_not_fit_stops_fit(
        tmp_path: Path, backend: str, case: str, named: str) -> None:
    """NT3's order with a mismatching optimizer: on_train_begin raises, nothing is applied.

    The checkpoint's state stays pending (a second fit raises again) rather than being
    dropped, so no later fit silently starts the optimizer fresh.
    """
    result = run_mismatch(backend, case, tmp_path / "c")
    assert result["error"] == "CheckpointMismatchError", result
    assert "model.weights.h5 does not fit the optimizer: " + named in result["message"], result
    assert result["again"] == "CheckpointMismatchError", result
    assert result["optimizer_fresh"], result


def test_ckpt_keep_bytes_keeps_the_newest_that_fit_and_restart_is_exact(tmp_path: Path) -> None:
    x, y = data()
    probe = small_model()
    probe.fit(x, y, epochs=1, verbose=0,
              callbacks=[candle.CandleCheckpointCallback(params(tmp_path / "probe", epochs=1,
                                                             ckpt_save_best_metric="loss"))])
    last = tmp_path / "probe" / "save" / "ckpts" / "last"
    one = sum(f.stat().st_size for f in last.iterdir())

    g = params(tmp_path, epochs=5, ckpt_keep_mode="all", ckpt_save_best_metric="loss",
               ckpt_keep_bytes=int(2.5 * one))
    model = small_model()
    cb = candle.CandleCheckpointCallback(g)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[cb])
    epochs = tmp_path / "save" / "ckpts" / "epochs"
    kept = sorted(p.name for p in epochs.iterdir() if not p.name.startswith("."))
    best = os.readlink(tmp_path / "save" / "ckpts" / "best").removeprefix("epochs/")
    # best (whichever epoch the backend's numbers made it) and the newest that fit
    others = [name for name in kept if name != best]
    assert best in kept and "005" in others and 1 <= len(others) <= 2
    assert others == [f"{e:03d}" for e in range(6 - len(others), 6)]
    used = sum(f.stat().st_size for name in kept for f in (epochs / name).iterdir())
    assert used <= 2.5 * one or len(others) == 1

    again = small_model(seed=99)
    J = candle.restart(g, again)
    assert J is not None and J["epoch"] == 5
    assert_same(values(again.variables), values(model.variables))
    assert_same(values(again.optimizer.variables), values(model.optimizer.variables))
