"""`edgefleet keys ...` and `edgefleet bundle ...` on the sample MLP, through `shared.cli.main`."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shared.cli import main

PRIVATE_KEYS = ("root.key", "release.key", "assignment.key")


@dataclass(frozen=True)
class Built:
    """A key directory and a bundle built from the sample MLP's three formats."""

    keys: Path
    bundle: Path
    models: Path


def run(*argv: str) -> tuple[int, str, str]:
    """Run the command line in-process; return the exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def build_args(models: Path, keys: Path, out: Path, *files: str) -> list[str]:
    args = ["bundle", "build", "--name", "mlp", "--version", "3", "--keys", str(keys)]
    for name in files:
        args += ["--model", str(models / name)]
    return [*args, "-o", str(out)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sample_models: Path) -> Built:
    """Keys made by `keys init` and a bundle of mlp.onnx, mlp.tflite and mlp.xml."""
    root = tmp_path_factory.mktemp("bundle-cli")
    keys, bundle = root / "keys", root / "mlp-3.bundle"
    assert run("keys", "init", str(keys))[0] == 0
    files = ("mlp.onnx", "mlp.tflite", "mlp.xml")
    code, out, err = run(*build_args(sample_models, keys, bundle, *files))
    assert code == 0, err
    assert f"wrote {bundle}" in out
    return Built(keys, bundle, sample_models)


def member(bundle: Path, name: str) -> bytes:
    """The content of one archive member."""
    with tarfile.open(bundle) as archive:
        handle = archive.extractfile(name)
        assert handle is not None
        return handle.read()


def copy_keys(built: Built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built.keys, tmp_path / "keys"))


def keylist_version(keys: Path) -> int:
    return int(json.loads((keys / "keylist.json").read_bytes())["signed"]["version"])


def test_keys_init_writes_private_keys_with_mode_0600(tmp_path: Path) -> None:
    code, out, _ = run("keys", "init", str(tmp_path / "keys"))
    assert code == 0
    assert "key list version 1" in out
    for name in PRIVATE_KEYS:
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "root.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    assert keylist_version(tmp_path / "keys") == 1


def test_keys_init_keeps_existing_keys_unless_forced(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run("keys", "init", str(keys))[0] == 0
    before = (keys / "root.pub").read_bytes()
    code, _, err = run("keys", "init", str(keys))
    assert code == 1
    assert "already holds root.key" in err
    assert (keys / "root.pub").read_bytes() == before
    assert run("keys", "init", str(keys), "--force")[0] == 0
    assert (keys / "root.pub").read_bytes() != before


def test_passphrase_protected_keys(
    tmp_path: Path, sample_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, out = tmp_path / "keys", tmp_path / "mlp.bundle"
    code, _, err = run("keys", "init", str(keys), "--passphrase-env", "EDGEFLEET_TEST_PASS")
    assert (code, err) == (
        1,
        "error: the passphrase variable EDGEFLEET_TEST_PASS is not set or empty\n",
    )
    monkeypatch.setenv("EDGEFLEET_TEST_PASS", "s3cret")
    assert run("keys", "init", str(keys), "--passphrase-env", "EDGEFLEET_TEST_PASS")[0] == 0
    assert (keys / "release.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    code, _, err = run(*build_args(sample_models, keys, out, "mlp.onnx"))
    assert code == 1
    assert "release.key: the key is encrypted; a passphrase is needed" in err
    args = [
        *build_args(sample_models, keys, out, "mlp.onnx"),
        "--passphrase-env",
        "EDGEFLEET_TEST_PASS",
    ]
    assert run(*args)[0] == 0
    monkeypatch.setenv("EDGEFLEET_TEST_PASS", "wrong")
    code, _, err = run(
        "keys", "rotate", str(keys), "--release", "--passphrase-env", "EDGEFLEET_TEST_PASS"
    )
    assert code == 1
    assert "root.key: wrong passphrase" in err


def test_build_records_every_variant_and_the_openvino_weights(built: Built) -> None:
    with tarfile.open(built.bundle) as archive:
        names = archive.getnames()
    manifest = json.loads(member(built.bundle, "manifest.json"))
    inputs = np.load(io.BytesIO(member(built.bundle, "files/golden/inputs.npz")))
    for name in ("mlp.onnx", "mlp.tflite", "mlp.xml", "mlp.bin", "golden/expected.npz"):
        assert f"files/{name}" in names
    assert [(v["runtime"], v["file"]) for v in manifest["variants"]] == [
        ("onnxruntime", "mlp.onnx"), ("tflite", "mlp.tflite"), ("openvino", "mlp.xml")]  # fmt: skip
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert manifest["outputs"][0]["name"] == "probabilities"
    assert inputs["input"].shape == (4, 64)  # generated: batch 4
    assert set(manifest["compatibility"]["min_runtime_versions"]) == {
        "onnxruntime",
        "openvino",
        "tflite",
    }


def test_verify_prints_a_summary_and_exits_0(built: Built) -> None:
    code, out, _ = run("bundle", "verify", str(built.bundle), "--keys", str(built.keys))
    assert code == 0
    assert "model     mlp version 3" in out
    assert hashlib.sha256(built.bundle.read_bytes()).hexdigest() in out
    release = json.loads((built.keys / "keylist.json").read_bytes())["signed"]["release_keys"][0]
    assert f"release key {release['keyid']}" in out
    assert "mlp.bin" in out


def test_verify_needs_only_the_public_files(built: Built, tmp_path: Path) -> None:
    public = tmp_path / "public"
    public.mkdir()
    for name in ("root.pub", "keylist.json"):
        shutil.copy(built.keys / name, public / name)
    assert run("bundle", "verify", str(built.bundle), "--keys", str(public))[0] == 0


def test_verify_names_a_tampered_file_and_exits_1(built: Built, tmp_path: Path) -> None:
    data = bytearray(built.bundle.read_bytes())
    with tarfile.open(built.bundle) as archive:
        data[archive.getmember("files/mlp.onnx").offset_data + 1000] ^= 0xFF
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    code, out, err = run("bundle", "verify", str(tampered), "--keys", str(built.keys))
    assert code == 1
    assert out == ""
    assert err.startswith("error: files/mlp.onnx: sha256 ")


def test_verify_of_a_missing_file_exits_1(built: Built, tmp_path: Path) -> None:
    code, _, err = run("bundle", "verify", str(tmp_path / "nope.bundle"), "--keys", str(built.keys))
    assert code == 1
    assert "nope.bundle: No such file or directory" in err


def test_inspect_shows_tables_and_json(built: Built) -> None:
    code, out, _ = run("bundle", "inspect", str(built.bundle))
    assert code == 0
    assert "NOT verified" in out
    assert "openvino     fp32       mlp.xml" in out
    assert "output  probabilities  FP32      [-1, 10]" in out
    code, out, _ = run("bundle", "inspect", str(built.bundle), "--json")
    assert code == 0
    manifest = json.loads(out)
    assert (manifest["name"], manifest["version"], manifest["policy"]) == ("mlp", 3, "latency")


def test_inspect_of_something_else_exits_1(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"hello" * 200)
    code, _, err = run("bundle", "inspect", str(junk))
    assert code == 1
    assert err.startswith("error: the member header at offset 0 is corrupt")


def test_rotating_the_release_key_revokes_its_bundles(built: Built, tmp_path: Path) -> None:
    keys = copy_keys(built, tmp_path)
    code, out, _ = run("keys", "rotate", str(keys), "--release")
    assert code == 0
    assert "key list version 2 written (was 1)" in out
    assert stat.S_IMODE((keys / "release.key.1").stat().st_mode) == 0o600
    assert (keys / "keylist.1.json").read_bytes() == (built.keys / "keylist.json").read_bytes()
    code, _, err = run("bundle", "verify", str(built.bundle), "--keys", str(keys))
    assert code == 1
    assert "is not a release key in key list version 2" in err


def test_a_build_with_a_rotated_out_release_key_is_refused(built: Built, tmp_path: Path) -> None:
    keys = copy_keys(built, tmp_path)
    assert run("keys", "rotate", str(keys), "--release")[0] == 0
    shutil.copy(keys / "release.key.1", keys / "release.key")
    code, _, err = run(*build_args(built.models, keys, tmp_path / "x.bundle", "mlp.onnx"))
    assert code == 1
    assert "is not a release key in key list version 2" in err
    assert not (tmp_path / "x.bundle").exists()


def test_rotating_the_root_and_assignment_keys_keeps_bundles_valid(
    built: Built, tmp_path: Path
) -> None:
    keys = copy_keys(built, tmp_path)
    old_root = (keys / "root.pub").read_bytes()
    assert run("keys", "rotate", str(keys), "--root")[0] == 0
    assert run("keys", "rotate", str(keys), "--assignment")[0] == 0
    assert keylist_version(keys) == 3
    assert (keys / "root.pub").read_bytes() != old_root
    assert (keys / "root.key.1").exists()
    assert (keys / "assignment.key.2").exists()
    signers = json.loads((keys / "keylist.2.json").read_bytes())["signatures"]
    assert len(signers) == 2  # the root rotation is signed by the old and the new root
    assert run("bundle", "verify", str(built.bundle), "--keys", str(keys))[0] == 0


def test_a_variant_that_disagrees_fails_the_build_by_name(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "mlp.bundle"
    code, _, err = run(*build_args(built.models, built.keys, out, "mlp.onnx", "mlp.int8.onnx"))
    assert code == 1
    assert "variant mlp.int8.onnx (onnxruntime/CPU) differs from the first variant" in err
    assert "tolerance 0.0001" in err
    assert not out.exists()
    args = [
        *build_args(built.models, built.keys, out, "mlp.onnx", "mlp.int8.onnx"),
        "--tolerance",
        "0.5",
    ]
    assert run(*args)[0] == 0


def test_golden_inputs_labels_and_hints_go_into_the_manifest(built: Built, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(10)))
    out = tmp_path / "mlp.bundle"
    args = build_args(built.models, built.keys, out, "mlp.onnx")
    args += ["--golden-inputs", str(built.models / "mlp.inputs.npz"), "--labels", str(labels)]
    args += ["--policy", "throughput", "--max-batch-size", "16"]
    assert run(*args)[0] == 0
    manifest = json.loads(run("bundle", "inspect", str(out), "--json")[1])
    assert manifest["labels"] == {"probabilities": [f"class-{i}" for i in range(10)]}
    assert manifest["policy"] == "throughput"
    assert manifest["batching"]["max_batch_size"] == 16
    golden = np.load(io.BytesIO(member(out, "files/golden/inputs.npz")))
    with np.load(built.models / "mlp.inputs.npz") as given:
        np.testing.assert_array_equal(golden["input"], given["input"])


def test_labels_must_match_the_output(built: Built, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    args = [
        *build_args(built.models, built.keys, tmp_path / "x.bundle", "mlp.onnx"),
        "--labels",
        f"probabilities={labels}",
    ]
    code, _, err = run(*args)
    assert code == 1
    assert "2 labels for output 'probabilities', which has 10 classes" in err


def test_an_unreadable_model_fails_the_build(built: Built, tmp_path: Path) -> None:
    code, _, err = run(*build_args(built.models, built.keys, tmp_path / "x.bundle", "samples.json"))
    assert code == 1
    assert "samples.json: no installed runtime reads this kind of file" in err
