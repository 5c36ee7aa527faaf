"""`edgefleet batch`: formats, equality with the runtime, resuming, bundles, errors, progress."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.batch import BatchJob, run_batch
from agent.batch_errors import BatchError
from agent.batch_journal import Journal
from agent.batch_model import SelectionOptions
from agent.batch_progress import Progress, StreamProgress
from shared.cli import main

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
PIN = ["--pin", "onnxruntime/CPU"]
Shape = list[str | int]


def run(*argv: str | Path) -> tuple[int, str, str]:
    """Run the command line in-process; return the exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def score(models: Path, data: Path, output: Path, *extra: str | Path) -> tuple[int, str, str]:
    """`edgefleet batch` on the sample MLP, pinned to onnxruntime/CPU."""
    model = f"mlp={models / 'mlp.onnx'}"
    return run("batch", "--model", model, *PIN, "-i", data, "-o", output, "-q", *extra)


def mlp_rows(count: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 64)).astype(np.float32)


def onnxruntime_outputs(model: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model run directly in onnxruntime, all rows in one call."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def write_onnx(path: Path, nodes: list[tuple[str, list[str], str]], inputs: dict[str, Shape],
               outputs: dict[str, Shape]) -> Path:  # fmt: skip
    """A small float ONNX graph of elementwise nodes (op, inputs, output)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ins, [out]) for op, ins, out in nodes],
        path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with inputs a, b [N, 3] and outputs sum = a + b, product = a * b."""
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    nodes = [("Add", ["a", "b"], "sum"), ("Mul", ["a", "b"], "product")]
    shape: Shape = ["N", 3]
    return write_onnx(path, nodes, {"a": shape, "b": shape}, {"sum": shape, "product": shape})


# Formats and equality with the runtime -----------------------------------------------------


def test_npy_matches_the_numpy_reference(sample_models: Path, tmp_path: Path) -> None:
    with np.load(sample_models / "mlp.inputs.npz") as inputs:
        np.save(tmp_path / "rows.npy", inputs["input"])
    code, out, err = score(sample_models, tmp_path / "rows.npy", tmp_path / "scores.npy")
    assert code == 0, err
    with np.load(sample_models / "mlp.expected.npz") as expected:
        reference = expected["probabilities"]
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), reference, atol=1e-4)
    assert "onnxruntime/CPU/mlp.onnx (pinned)" in out
    assert not (tmp_path / "scores.npy.partial").exists()


def test_many_chunks_equal_one_runtime_call(sample_models: Path, tmp_path: Path) -> None:
    rows = mlp_rows(2_500)
    np.save(tmp_path / "rows.npy", rows)
    args = ["--batch-size", "64", "--chunk-rows", "1000"]  # 3 chunks, the last one short
    code, out, err = score(sample_models, tmp_path / "rows.npy", tmp_path / "s.npy", *args)
    assert code == 0, err
    direct = onnxruntime_outputs(sample_models / "mlp.onnx", {"input": rows})["probabilities"]
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), direct, rtol=0, atol=1e-6)
    assert "2,500 (0 resumed)" in out
    assert "3 of up to 1,024 rows" in out  # rounded to whole batches of 64


def test_csv_in_and_out(sample_models: Path, tmp_path: Path) -> None:
    rows = mlp_rows(300)
    header = ",".join(f"x{i}" for i in range(64))
    np.savetxt(tmp_path / "rows.csv", rows, fmt="%.9g", delimiter=",", header=header, comments="")
    code, _, err = score(
        sample_models, tmp_path / "rows.csv", tmp_path / "s.csv", "--batch-size", "32"
    )
    assert code == 0, err
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == ",".join(f"probabilities_{i}" for i in range(10))
    written = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1, dtype=np.float32)
    direct = onnxruntime_outputs(sample_models / "mlp.onnx", {"input": rows})["probabilities"]
    np.testing.assert_allclose(written, direct, rtol=0, atol=1e-6)


def test_multi_input_model_from_named_files(two_by_two: Path, tmp_path: Path) -> None:
    a, b = mlp_rows(50)[:, :3], mlp_rows(50, seed=8)[:, :3]
    np.save(tmp_path / "a.npy", a)
    np.savetxt(tmp_path / "b.csv", b, fmt="%.9g", delimiter=",")  # formats may differ per input
    model = f"two={two_by_two}"
    inputs = ["-i", f"a={tmp_path / 'a.npy'}", "-i", f"b={tmp_path / 'b.csv'}"]
    code, _, err = run("batch", "--model", model, *PIN, *inputs, "-o", tmp_path / "out.npz", "-q")
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as out:
        assert sorted(out.files) == ["product", "sum"]
        np.testing.assert_array_equal(out["sum"], a + b)
        np.testing.assert_array_equal(out["product"], a * b)


def test_multi_input_model_from_one_npz_choosing_an_output(
    two_by_two: Path, tmp_path: Path
) -> None:
    a, b = mlp_rows(20)[:, :3], mlp_rows(20, seed=9)[:, :3]
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    code, _, err = run("batch", "--model", f"two={two_by_two}", *PIN, "-i", tmp_path / "ab.npz",
                       "-o", tmp_path / "p.npy", "--outputs", "product", "-q")  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), a * b)


def test_npz_output_is_the_same_bytes_every_time(two_by_two: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "ab.npz", a=np.ones((5, 3), np.float32), b=np.ones((5, 3), np.float32))
    for name in ("one.npz", "two.npz"):
        code, _, err = run("batch", "--model", f"two={two_by_two}", *PIN,
                           "-i", tmp_path / "ab.npz", "-o", tmp_path / name, "-q")  # fmt: skip
        assert code == 0, err
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.npz") as archive:  # no clock time in the bytes
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_model_with_a_fixed_batch_pads_the_last_batch(tmp_path: Path) -> None:
    model = write_onnx(tmp_path / "fixed.onnx", [("Add", ["x", "x"], "y")],
                       {"x": [8, 4]}, {"y": [8, 4]})  # fmt: skip
    rows = mlp_rows(20)[:, :4]
    np.save(tmp_path / "x.npy", rows)
    code, out, err = run("batch", "--model", f"fixed={model}", *PIN, "-i", tmp_path / "x.npy",
                         "-o", tmp_path / "y.npy", "-q")  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), rows + rows)
    assert "batch size      8" in out


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_parquet_in_and_out(sample_models: Path, tmp_path: Path) -> None:
    pa = importlib.import_module("pyarrow")  # optional: no stubs for mypy
    pq = importlib.import_module("pyarrow.parquet")

    rows = mlp_rows(700)
    column = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 64)
    pq.write_table(pa.table({"input": column}), tmp_path / "rows.parquet", row_group_size=256)
    args = ["--batch-size", "100", "--chunk-rows", "300"]  # chunks straddle the row groups
    code, _, err = score(sample_models, tmp_path / "rows.parquet", tmp_path / "s.parquet", *args)
    assert code == 0, err
    table = pq.read_table(tmp_path / "s.parquet")
    written = np.stack(table.column("probabilities").to_pylist()).astype(np.float32)
    direct = onnxruntime_outputs(sample_models / "mlp.onnx", {"input": rows})["probabilities"]
    np.testing.assert_allclose(written, direct, rtol=0, atol=1e-6)
    # Scalar columns side by side feed a single-input model too.
    columns = {f"x{i}": rows[:, i] for i in range(64)}
    pq.write_table(pa.table(columns), tmp_path / "wide.parquet")
    code, _, err = score(sample_models, tmp_path / "wide.parquet", tmp_path / "w.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), direct, rtol=0, atol=1e-6)


def test_parquet_without_pyarrow_says_how_to_install_it(
    sample_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if pyarrow were not installed: a None entry makes its import fail.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    np.save(tmp_path / "rows.npy", mlp_rows(4))
    code, _, err = score(sample_models, tmp_path / "rows.npy", tmp_path / "s.parquet")
    assert code == 1
    assert "Parquet needs pyarrow" in err
    assert "pip install pyarrow" in err
    assert not (tmp_path / "s.parquet.partial").exists()  # refused before scoring anything
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    code, _, err = score(sample_models, tmp_path / "rows.parquet", tmp_path / "s.npy")
    assert code == 1
    assert "pip install pyarrow" in err


# Resuming ----------------------------------------------------------------------------------


class InterruptAfter(Progress):
    """Progress that raises KeyboardInterrupt (as Ctrl-C would) after some chunks."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks

    def advance(self, rows: int) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def job(models: Path, data: Path, output: Path, pin: str | None = "onnxruntime/CPU") -> BatchJob:
    return BatchJob(
        inputs=((None, data),),
        output=output,
        model=f"mlp={models / 'mlp.onnx'}",
        batch_size=32,
        chunk_rows=256,
        selection=SelectionOptions(pin=pin, budget_s=0.2),
    )


def test_resume_after_an_interruption(sample_models: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", mlp_rows(2_000))
    interrupted = job(sample_models, tmp_path / "rows.npy", tmp_path / "resumed.npy", pin=None)
    with pytest.raises(KeyboardInterrupt):
        run_batch(interrupted, InterruptAfter(3))
    journal = json.loads((tmp_path / "resumed.npy.partial" / "journal.json").read_bytes())
    assert journal["completed"] == [[0, 3]]
    assert not (tmp_path / "resumed.npy").exists()
    measured = journal["key"]["backend"]
    resumed = run_batch(interrupted, Progress())
    # The resumed run skips measuring and runs the backend that scored the saved chunks.
    assert (resumed.backend, resumed.selection) == (measured, "resumed")
    assert (resumed.chunks, resumed.chunks_resumed, resumed.rows_resumed) == (8, 3, 768)
    assert not (tmp_path / "resumed.npy.partial").exists()
    whole = job(sample_models, tmp_path / "rows.npy", tmp_path / "whole.npy", pin=measured)
    assert run_batch(whole, Progress()).chunks_resumed == 0
    assert (tmp_path / "resumed.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_a_changed_input_starts_over(sample_models: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", mlp_rows(1_000))
    interrupted = job(sample_models, tmp_path / "rows.npy", tmp_path / "s.npy")
    with pytest.raises(KeyboardInterrupt):
        run_batch(interrupted, InterruptAfter(2))
    changed = mlp_rows(1_000, seed=99)
    np.save(tmp_path / "rows.npy", changed)
    notes = io.StringIO()
    summary = run_batch(interrupted, StreamProgress(notes, tty=False))
    assert summary.chunks_resumed == 0
    assert "starting over" in notes.getvalue()
    direct = onnxruntime_outputs(sample_models / "mlp.onnx", {"input": changed})["probabilities"]
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), direct, rtol=0, atol=1e-6)


def test_kill_9_mid_run_then_rerun_gives_identical_bytes(
    sample_models: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "rows.npy", mlp_rows(50_000))
    # Batches of one row and small chunks: scoring lasts about half a second, in 100 chunks.
    args = ["--batch-size", "1", "--chunk-rows", "500"]
    code, _, err = score(sample_models, tmp_path / "rows.npy", tmp_path / "whole.npy", *args)
    assert code == 0, err
    output = tmp_path / "killed.npy"
    journal = tmp_path / "killed.npy.partial" / "journal.json"
    command = [sys.executable, "-c", BATCH_ONLY, "batch", "--model",
               f"mlp={sample_models / 'mlp.onnx'}", *PIN, "-i", str(tmp_path / "rows.npy"),
               "-o", str(output), "-q", *args]  # fmt: skip
    log = tmp_path / "killed.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not _completed(journal):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no chunk was saved in time"
            time.sleep(0.002)  # polling the journal another process writes
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists(), "the run finished before it was killed"
    code, out, err = score(sample_models, tmp_path / "rows.npy", output, *args)
    assert code == 0, err
    resumed = int(out.split("chunks resumed")[1].split()[0])
    assert 1 <= resumed < 100
    assert output.read_bytes() == (tmp_path / "whole.npy").read_bytes()


# The `batch` command alone: `python -m shared.cli` would also import every other command group
# (the control plane's database layer among them), a second or more of start-up per process.
BATCH_ONLY = """
import argparse, sys
from agent.batch_cli import register
parser = argparse.ArgumentParser()
register(parser.add_subparsers())
args = parser.parse_args()
sys.exit(args.func(args))
"""


def _completed(journal: Path) -> bool:
    try:
        return bool(json.loads(journal.read_bytes())["completed"])
    except (OSError, ValueError):  # not written yet (the journal is replaced atomically)
        return False


# Bundles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    keys: Path
    bundle: Path


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, sample_models: Path) -> Signed:
    """Keys and a bundle of the sample MLP (ONNX only), as `edgefleet bundle build` makes it."""
    root = tmp_path_factory.mktemp("batch-bundle")
    keys, bundle = root / "keys", root / "mlp-1.bundle"
    assert run("keys", "init", keys)[0] == 0
    code, _, err = run("bundle", "build", "--name", "mlp", "--version", "1", "--keys", keys,
                       "--model", sample_models / "mlp.onnx", "-o", bundle)  # fmt: skip
    assert code == 0, err
    return Signed(keys, bundle)


def test_bundle_verified_with_a_key_directory(
    signed: Signed, sample_models: Path, tmp_path: Path
) -> None:
    rows = mlp_rows(100)
    np.save(tmp_path / "rows.npy", rows)
    code, out, err = run("batch", "--bundle", signed.bundle, "--keys", signed.keys, *PIN,
                         "-i", tmp_path / "rows.npy", "-o", tmp_path / "s.npy", "-q")  # fmt: skip
    assert code == 0, err
    direct = onnxruntime_outputs(sample_models / "mlp.onnx", {"input": rows})["probabilities"]
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), direct, rtol=0, atol=1e-6)
    assert "batch size      32" in out  # the bundle's max batch size


def test_bundle_verified_with_root_key_and_key_list(signed: Signed, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", mlp_rows(10))
    code, _, err = run("batch", "--bundle", signed.bundle, "--root-key", signed.keys / "root.pub",
                       "--keylist", signed.keys / "keylist.json", *PIN,
                       "-i", tmp_path / "rows.npy", "-o", tmp_path / "s.npy", "-q")  # fmt: skip
    assert code == 0, err


def test_tampered_bundle_is_refused(signed: Signed, tmp_path: Path) -> None:
    data = bytearray(signed.bundle.read_bytes())
    data[-20_000] ^= 0x01  # a byte of the model file, well past the manifest
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    np.save(tmp_path / "rows.npy", mlp_rows(10))
    code, _, err = run("batch", "--bundle", tampered, "--keys", signed.keys, *PIN,
                       "-i", tmp_path / "rows.npy", "-o", tmp_path / "s.npy", "-q")  # fmt: skip
    assert code == 1
    assert "error: files/mlp.onnx: sha256" in err
    assert not (tmp_path / "s.npy").exists()


def test_bundle_needs_keys_unless_insecure(signed: Signed, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", mlp_rows(10))
    base: list[str | Path] = [
        "batch",
        "--bundle",
        signed.bundle,
        *PIN,
        "-i",
        tmp_path / "rows.npy",
        "-q",
    ]
    code, _, err = run(*base, "-o", tmp_path / "s.npy")
    assert code == 1
    assert "give --keys DIR, or --root-key FILE and --keylist FILE" in err
    assert "--insecure" in err
    code, _, err = run(*base, "-o", tmp_path / "s.npy", "--insecure")
    assert code == 0, err


# Errors ------------------------------------------------------------------------------------


def test_existing_output_needs_force(sample_models: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", mlp_rows(5))
    (tmp_path / "s.npy").write_bytes(b"keep me")
    code, _, err = score(sample_models, tmp_path / "rows.npy", tmp_path / "s.npy")
    assert (code, err) == (
        1,
        f"error: {tmp_path / 's.npy'} already exists: use --force to replace it\n",
    )
    assert (tmp_path / "s.npy").read_bytes() == b"keep me"
    assert score(sample_models, tmp_path / "rows.npy", tmp_path / "s.npy", "--force")[0] == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 10)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("input.txt", "unknown input extension '.txt'; expected one of .npy, .npz, .csv, .parquet"),
        ("output.json", "unknown output extension '.json'"),
        ("missing", "rows.npy: no such file"),
        ("garbage", "cannot read it as npy"),
        ("shape", "input 'input' from"),
        ("dtype", "complex64 values cannot be converted to float32 without loss"),
        ("csv", "data rows 1-3: could not convert string 'oops' to float64"),
        ("outputs", "--outputs names 'nope'; the model's outputs are probabilities"),
    ],
)
def test_clear_errors(sample_models: Path, tmp_path: Path, setup: str, message: str) -> None:
    data, output = tmp_path / "rows.npy", tmp_path / "s.npy"
    extra: list[str] = []
    np.save(data, mlp_rows(3))
    if setup == "input.txt":
        data = tmp_path / "rows.txt"
        data.write_text("1,2\n")
    elif setup == "output.json":
        output = tmp_path / "s.json"
    elif setup == "missing":
        data.unlink()
    elif setup == "garbage":
        data.write_bytes(b"not an array")
    elif setup == "shape":
        np.save(data, mlp_rows(3)[:, :60])
        message = "rows have shape (60,), the model expects FP32 [-1, 64]"
    elif setup == "dtype":
        np.save(data, mlp_rows(3).astype(np.complex64))
    elif setup == "csv":
        data = tmp_path / "rows.csv"
        data.write_text("1," * 63 + "1\n" + "1," * 63 + "oops\n" + "1," * 63 + "1\n")
    elif setup == "outputs":
        extra = ["--outputs", "nope"]
    code, _, err = score(sample_models, data, output, *extra)
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert not output.exists()
    assert not output.with_name(output.name + ".partial").exists()  # nothing left behind


def test_two_runs_on_one_output_are_refused(sample_models: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", mlp_rows(5))
    with Journal(tmp_path / "s.npy").locked():  # as a run still going would hold it
        code, _, err = score(sample_models, tmp_path / "rows.npy", tmp_path / "s.npy")
    assert code == 1
    assert "another edgefleet batch is writing" in err
    assert score(sample_models, tmp_path / "rows.npy", tmp_path / "s.npy")[0] == 0


def test_several_outputs_do_not_fit_a_npy(two_by_two: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "ab.npz", a=np.ones((2, 3), np.float32), b=np.ones((2, 3), np.float32))
    code, _, err = run("batch", "--model", f"two={two_by_two}", *PIN, "-i", tmp_path / "ab.npz",
                       "-o", tmp_path / "s.npy", "-q")  # fmt: skip
    assert code == 1
    assert "a .npy file holds one output, the model has sum, product" in err


def test_inputs_must_name_every_model_input(two_by_two: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((5, 3), np.float32))
    base: list[str | Path] = [
        "batch",
        "--model",
        f"two={two_by_two}",
        *PIN,
        "-o",
        tmp_path / "s.npz",
        "-q",
    ]
    code, _, err = run(*base, "-i", tmp_path / "a.npy")
    assert "the model has inputs a, b: give --input NAME=FILE for each" in err
    code, _, err = run(*base, "-i", f"a={tmp_path / 'a.npy'}")
    assert "no --input for the model's input(s) b" in err
    code, _, err = run(*base, "-i", f"a={tmp_path / 'a.npy'}", "-i", f"b={tmp_path / 'b.npy'}")
    assert (code, "the inputs have different numbers of rows (a: 4, b: 5)" in err) == (1, True)


def test_help_lists_the_options() -> None:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["batch", "--help"])
    assert exit_info.value.code == 0
    for option in ("--model", "--bundle", "--keys", "--insecure", "--batch-size", "--force"):
        assert option in out.getvalue()


# Progress ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_when_not_a_terminal() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = StreamProgress(stream, tty=False, interval=10.0, clock=clock)
    progress.start(total=1_000, done=200)
    clock.now += 4
    progress.advance(100)  # too soon for a line
    clock.now += 6
    progress.advance(300)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "scoring 1,000 rows (200 done before)"
    assert lines[1] == " 60%  600/1,000 rows  40 rows/s  ETA 0:10"  # 400 rows in 10 s
    assert len(lines) == 3


def test_progress_bar_on_a_terminal() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = StreamProgress(stream, tty=True, clock=clock)
    progress.start(total=100, done=0)
    clock.now += 1
    progress.advance(50)
    assert stream.getvalue().startswith("\r[############............]  50%  50/100 rows")
    assert "50 rows/s  ETA 0:01" in stream.getvalue()


def test_batch_error_is_an_agent_error() -> None:
    from agent.errors import AgentError

    assert issubclass(BatchError, AgentError)
