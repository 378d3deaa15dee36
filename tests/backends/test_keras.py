"""The Keras 3 backend with real Keras (no mocks): API, files, restart, exact resume."""

from __future__ import annotations

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
from candle_ckpt import commit  # noqa: E402

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
    assert not commit._held, "module-level restart() must release the directory lock"


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
    # Only improvements are saved before the interval (100) or the final epoch (10).
    saved = sorted(p.name for p in (base / "epochs").iterdir())
    assert saved == (["001", "002"] if best_epoch == 2 else ["001"])


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
def run_script(backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, text=True,
                          capture_output=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "shuffle", "api"), [
    ("tensorflow", False, "new"),
    ("tensorflow", True, "old"),
    ("torch", False, "old"),
    ("torch", True, "new"),
])
def test_kill_and_restart_is_bit_identical_to_training_straight(
        tmp_path: Path, backend: str, shuffle: bool, api: str) -> None:
    """N epochs straight == K epochs, os._exit after K's checkpoint, restart, N-K more."""
    pytest.importorskip("tensorflow" if backend == "tensorflow" else "torch")
    flags = ["--epochs", "5", "--api", api] + (["--shuffle"] if shuffle else [])
    ckpt_dir = str(tmp_path / "ckpt")
    straight = run_script(backend, "straight", str(tmp_path / "unused"),
                          str(tmp_path / "straight.npz"), *flags)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_script(backend, "killed", ckpt_dir, str(tmp_path / "never.npz"),
                        "--kill-after", "2", *flags)
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert os.readlink(tmp_path / "ckpt" / "ckpts" / "last") == "epochs/002"
    resumed = run_script(backend, "resume", ckpt_dir, str(tmp_path / "resumed.npz"), *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "restarted from" in resumed.stdout

    a = np.load(tmp_path / "straight.npz")
    b = np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files)
    differing = [k for k in a.files if not np.array_equal(a[k], b[k])]
    assert differing == [], f"{backend} shuffle={shuffle}: {differing} differ"
    assert info_of(tmp_path / "ckpt" / "ckpts" / "last")["keras_backend"] == backend


def test_import_candle_ckpt_does_not_import_keras() -> None:
    code = ("import sys, candle_ckpt; assert 'keras' not in sys.modules; "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------ validate, then apply
MISMATCH_SCRIPT = HERE / "keras_mismatch_script.py"


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
@pytest.mark.parametrize(("case", "error", "named"), [
    ("shape", "CheckpointMismatchError", "(4, 8) float32 in the checkpoint, (4, 9)"),
    ("optimizer", "CheckpointMismatchError", "SGD"),
    ("rng", "CheckpointNotFoundError", "rng-state.json: a global RNG state is damaged"),
])
def test_a_restart_that_fails_leaves_every_live_value_bit_identical(
        tmp_path: Path, backend: str, case: str, error: str, named: str) -> None:
    """Mismatch (shape, optimizer type) or damage (RNG file): nothing live changes."""
    pytest.importorskip("tensorflow" if backend == "tensorflow" else "torch")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(MISMATCH_SCRIPT), case, str(tmp_path / "c")],
                          env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["error"] == error, result
    assert named in result["message"], result
    assert result["unchanged"], result
