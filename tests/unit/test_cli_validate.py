"""`kubetune validate FILE…`: every error with its field path, exit 1 on any error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          check=False)


LOCAL_ONLY = {"local-messages.yaml"}  # reads its data file by a path relative to itself: `kubetune run` only


def test_every_example_validates_as_kubetune_run_reads_it_and_all_but_the_local_only_ones_as_a_server_would() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    result = kubetune("validate", "--local", *examples)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == len(examples)
    for_servers = [path for path in examples if Path(path).name not in LOCAL_ONLY]
    result = kubetune("validate", *for_servers)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == len(for_servers)


def test_a_local_only_example_is_refused_as_a_server_would_refuse_its_relative_path() -> None:
    result = kubetune("validate", *(str(ROOT / "examples" / name) for name in sorted(LOCAL_ONLY)))
    assert result.returncode == 1
    assert "local-messages.yaml: spec.dataset.uri: must match" in result.stderr


def test_errors_are_printed_with_file_and_field_path_and_exit_1(tmp_path: Path) -> None:
    header = "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneRun\nmetadata: {name: demo}\n"
    bad_type = tmp_path / "bad-type.yaml"
    bad_type.write_text(header + "spec:\n  training:\n    lora: {r: 0}\n    batchSize: many\n")
    bad_rule = tmp_path / "bad-rule.yaml"
    bad_rule.write_text(header + "spec:\n  training:\n    method: lora\n    quantization: {type: nf4}\n")
    result = kubetune("validate", str(bad_type), str(bad_rule), str(ROOT / "examples" / "local-minimal.yaml"))
    assert result.returncode == 1
    assert f"{bad_type}: spec.training.lora.r: must be >= 1" in result.stderr
    assert f"{bad_type}: spec.training.batchSize: must be an integer" in result.stderr
    assert f"{bad_rule}: spec.training.quantization: quantization applies only to method qlora" in result.stderr
    assert "local-minimal.yaml: FineTuneRun default/minimal is valid" in result.stdout


def test_yaml_numbers_are_read_as_kubectl_reads_them(tmp_path: Path) -> None:
    run = tmp_path / "lr.yaml"
    run.write_text("apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneRun\nmetadata: {name: lr}\n"
                   "spec: {training: {learningRate: 1e-4, epochs: 2}}\n")
    assert kubetune("validate", str(run)).returncode == 0


def test_unreadable_and_non_yaml_files_are_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    result = kubetune("validate", str(broken), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr and "missing.yaml: cannot read" in result.stderr
