"""One base-model download per run: an hf:// model's files (those a stage loads, no others) are downloaded once, kept
in the run's store by content digest and read from there by every stage and later run; a pvc:// model is a
read-only claim. Keys follow the files, not where they came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import types as t
from kubetune.api.validate import validate_spec
from kubetune.jobs import sources as sources_job
from kubetune.jobs.runtime import ConfigError, JobContext
from kubetune.model_snapshot import (
    SnapshotError,
    fetch_snapshot,
    files_digest,
    hf_ref_key,
    hub_download,
    publish_snapshot,
    snapshot_prefix,
    stored_hf_digest,
)
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.sources import (
    PVC_ROOT_ENV,
    ResolvedSource,
    SourceError,
    Sources,
    base_model_source,
    dataset_source,
    resolve_sources,
)
from kubetune.stages import StageRef, stage_key
from kubetune.store import LocalStore, Store, open_store, read_manifest
from tests.fixtures.sources import COMMIT_A, ModelInfo, digest_of, repo_files
from tests.unit.test_sources import tree

HF_A = f"hf://org/tiny@{COMMIT_A}"
MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"]


def no_store(uri: str) -> Store:
    raise AssertionError(f"no store expected, asked for {uri}")


def hub_model(snapshots: Store | None, hub_cache: Path, uri: str = HF_A) -> ResolvedSource:
    return base_model_source(t.BaseModelSpec(uri=uri), no_store, None, hub_cache, snapshots)


def stage_context(tmp_path: Path, store_root: Path, sources: Sources, stage: str = "train") -> JobContext:
    spec = validate_spec({"baseModel": {"uri": HF_A}})
    ref = StageRef(key=digest_of(stage), prefix=f"default/demo/{stage}/0123456789abcdef")
    config = RunConfig("demo", "default", spec, StoreConfig(str(store_root)), {stage: ref}, sources=sources)
    return JobContext(config, stage, workdir=tmp_path / f"work-{stage}")


def resolved_sources(model: ResolvedSource) -> Sources:
    return Sources(dataset=ResolvedSource("bundled", digest_of("tree")),
                   template=ResolvedSource("chatml", digest_of("template")), base_model=model)


# --- what is downloaded ---------------------------------------------------------------------------------------------


def test_only_the_files_a_stage_loads_are_downloaded_from_the_hub(hub: type[ModelInfo], tmp_path: Path) -> None:
    hub_model(None, tmp_path / "hf")
    assert sorted(hub.downloaded) == MODEL_FILES
    never = (".bin", ".gguf", ".onnx", "README.md")
    assert not [path for path in hub.asked if path.split("?")[0].endswith(never)]


def test_a_hub_repository_without_safetensors_weights_is_refused_with_a_hint(hub: type[ModelInfo],
                                                                            tmp_path: Path) -> None:
    del hub.files[COMMIT_A]["model.safetensors"]
    with pytest.raises(SourceError, match=r"^spec\.baseModel\.uri: cannot take .* it has no \*\.safetensors weights "
                                          r".*convert it to safetensors") as error:
        hub_model(None, tmp_path / "hf")
    assert "\n" not in str(error.value) and "pytorch_model.bin" not in hub.downloaded


def test_a_second_copy_of_the_weights_in_another_layout_is_not_downloaded(hub: type[ModelInfo],
                                                                          tmp_path: Path) -> None:
    files = hub.files[COMMIT_A]
    files["consolidated.safetensors"] = b"the same weights, laid out for another runtime"
    files["model.safetensors.index.json"] = b'{"weight_map": {}}'
    hub_model(None, tmp_path / "hf")
    assert sorted(hub.downloaded) == sorted([*MODEL_FILES, "model.safetensors.index.json"])


# --- keys follow the files ------------------------------------------------------------------------------------------


def test_the_same_files_from_the_hub_a_folder_or_a_claim_give_one_digest_and_the_same_stage_keys(
        hub: type[ModelInfo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_hub = hub_model(None, tmp_path / "hf")
    folder = tmp_path / "claims" / "models" / "llm" / "tiny"
    folder.mkdir(parents=True)
    for name in MODEL_FILES:
        (folder / name).write_bytes(repo_files(b"weights A")[name])
    monkeypatch.setenv(PVC_ROOT_ENV, str(tmp_path / "claims"))
    from_claim = base_model_source(t.BaseModelSpec(uri="pvc://models/llm/tiny"), no_store, None, tmp_path / "hf")
    from_folder = base_model_source(t.BaseModelSpec(uri=str(folder)), no_store, None, tmp_path / "hf")
    assert from_hub.digest == from_claim.digest == from_folder.digest

    def keys(uri: str, model: ResolvedSource) -> list[str]:
        spec = validate_spec({"baseModel": {"uri": uri}})
        upstream = {"train": {"dataset": digest_of("data")}, "merge": {"train": digest_of("adapter")}}
        return [stage_key(spec, stage, upstream[stage], resolved_sources(model)) for stage in ("train", "merge")]

    assert keys(HF_A, from_hub) == keys("pvc://models/llm/tiny", from_claim)
    (folder / "model.safetensors").write_bytes(b"weights B")
    changed = base_model_source(t.BaseModelSpec(uri="pvc://models/llm/tiny"), no_store, None, tmp_path / "hf")
    assert set(keys("pvc://models/llm/tiny", changed)).isdisjoint(keys(HF_A, from_hub))


# --- stored once, reused ----------------------------------------------------------------------------------------------


def test_a_later_resolution_finds_the_snapshot_in_the_store_and_asks_the_hub_nothing(hub: type[ModelInfo],
                                                                                    tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    first = hub_model(store, tmp_path / "hf-first")
    manifest = read_manifest(store, snapshot_prefix(first.digest))
    assert manifest is not None and sorted(f.path for f in manifest.files) == MODEL_FILES
    assert store.get_bytes(hf_ref_key("org/tiny", COMMIT_A)).decode().strip() == first.digest
    hub.asked.clear()
    again = hub_model(store, tmp_path / "hf-elsewhere")  # another machine: no local Hub cache
    assert again.digest == first.digest and hub.asked == []


def test_every_stage_reads_the_model_from_the_snapshot_not_the_hub(hub: type[ModelInfo], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store_root = tmp_path / "store"
    spec = validate_spec({"baseModel": {"uri": HF_A}})
    sources = resolve_sources(spec, store_factory=no_store, cache=sources_job.DigestCache(),
                              hub_cache=tmp_path / "hf", snapshots=open_store(str(store_root)))
    hub.asked.clear()
    for stage in ("dataset", "train", "merge"):  # each in its own pod: its own empty cache
        monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / f"cache-{stage}"))
        folder = sources_job.base_model_folder(stage_context(tmp_path, store_root, sources, stage))
        assert sorted(p.name for p in folder.iterdir()) == MODEL_FILES
        assert (folder / "model.safetensors").read_bytes() == b"weights A"
    assert hub.asked == []


def test_a_snapshot_whose_files_changed_in_the_store_is_refused_naming_the_field(hub: type[ModelInfo],
                                                                                tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    model = hub_model(store, tmp_path / "hf")
    store.put_bytes(f"{snapshot_prefix(model.digest)}/model.safetensors", b"weights X")
    with pytest.raises(SnapshotError, match="cannot be read"):
        fetch_snapshot(store, model.digest, tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / "sha256" / model.digest).exists()  # nothing partial left


def test_a_snapshot_filed_under_another_digest_is_refused(hub: type[ModelInfo], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(str(tmp_path / "store"))
    model = hub_model(store, tmp_path / "hf")
    wrong = digest_of("another model")
    store.put_bytes(f"{snapshot_prefix(wrong)}/manifest.json",
                    store.get_bytes(f"{snapshot_prefix(model.digest)}/manifest.json"))
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    ctx = stage_context(tmp_path, tmp_path / "store", resolved_sources(ResolvedSource(HF_A, wrong, COMMIT_A)))
    with pytest.raises(ConfigError, match=rf"^spec\.baseModel\.uri: the model snapshot at .* lists files of digest "
                                          rf"{model.digest}, not {wrong}"):
        sources_job.base_model_folder(ctx)


# --- pvc:// ---------------------------------------------------------------------------------------------------------


def test_kubetune_run_refuses_a_pvc_model_in_one_line_saying_what_to_write_instead(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"^spec\.baseModel\.uri: pvc://models/tiny is read from a "
                                          r"PersistentVolumeClaim.*give the folder's local path") as error:
        base_model_source(t.BaseModelSpec(uri="pvc://models/tiny"), no_store, None, tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("uri", ["pvc://models/llm/tiny", "pvc://team.models/tiny", "pvc://m"])
def test_a_pvc_uri_names_a_claim_and_a_folder_in_it(uri: str) -> None:
    assert validate_spec({"baseModel": {"uri": uri}}).base_model.uri == uri


@pytest.mark.parametrize("uri", ["pvc://Models/tiny", "pvc://-models/tiny", "pvc://models_x/tiny", "pvc:///tiny",
                                 "pvc://models/../tiny", "pvc://models/%2e%2e/tiny",
                                 "pvc://models/a b"])
def test_a_pvc_uri_with_an_invalid_claim_name_or_path_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="baseModel.uri"):
        validate_spec({"baseModel": {"uri": uri}})


def test_kubetune_run_stages_read_the_model_from_the_hub_cache_it_was_resolved_into(
        hub: type[ModelInfo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    model = hub_model(None, tmp_path / "cache" / "hf")  # as kubetune run resolves: no snapshot store
    hub.asked.clear()
    ctx = stage_context(tmp_path, tmp_path / "store", resolved_sources(model))
    folder = sources_job.base_model_folder(ctx)
    assert folder.is_relative_to(tmp_path / "cache" / "hf") and (folder / "model.safetensors").read_bytes() == b"weights A"
    assert hub.asked == [] and ctx.store.list("_models") == []  # no download, no second copy


class DeletelessStore(LocalStore):
    """A store on which a delete is a failed test: what a reader may be reading at that moment."""

    def delete(self, key: str) -> None:
        raise AssertionError(f"a snapshot writer deleted {key}")


def test_writers_never_delete_so_a_concurrent_reader_never_misses_a_complete_snapshot(hub: type[ModelInfo],
                                                                                     tmp_path: Path) -> None:
    store = DeletelessStore(tmp_path / "store")
    folder = hub_download("org/tiny", COMMIT_A, tmp_path / "hf")
    digest = files_digest(folder)
    for _ in range(2):  # the second writer finds the first's snapshot complete
        publish_snapshot(store, folder, digest, repo_id="org/tiny", commit=COMMIT_A)
    assert stored_hf_digest(store, "org/tiny", COMMIT_A) == digest


def test_a_ref_whose_snapshot_never_completed_is_ignored_and_the_model_stored_again(hub: type[ModelInfo],
                                                                                   tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    model = hub_model(store, tmp_path / "hf")
    store.delete(f"{snapshot_prefix(model.digest)}/manifest.json")  # its writer died before the manifest
    assert stored_hf_digest(store, "org/tiny", COMMIT_A) is None
    assert hub_model(store, tmp_path / "hf").digest == model.digest
    assert read_manifest(store, snapshot_prefix(model.digest)) is not None


def test_a_pvc_dataset_tree_has_the_digest_of_the_same_tree_in_a_folder_and_kubetune_run_refuses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path / "claims" / "datasets" / "identity")
    spec = t.DatasetSpec(uri="pvc://datasets/identity")
    with pytest.raises(SourceError, match=r"^spec\.dataset\.uri: pvc://datasets/identity is read from a "
                                          r"PersistentVolumeClaim.*local path"):
        dataset_source(spec, no_store)
    monkeypatch.setenv(PVC_ROOT_ENV, str(tmp_path / "claims"))
    assert dataset_source(spec, no_store).digest == dataset_source(t.DatasetSpec(uri=str(root)), no_store).digest
