"""`kubetune run --store URI` on hostile store URIs: percent-encoded '..' (`file:///data/%2e%2e/x`), `file:` without
`//`, hosts, odd buckets, control characters (urlsplit drops a tab silently), unknown schemes, '[' in a host. A URI is either used as written — a local store lands in
the folder it names, never above it — or refused with one `kubetune: store:` line and exit 2, leaving nothing but
`kubetune run`'s own state. The runs are suspended: they resolve their sources and open their store, then stop."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.validate import validate_spec
from tests.property.cli_inputs import kubetune, manifest, snapshot, the_error_line, write_sources
from tests.property.test_dataset_hostile import scratch

BOTOCORE_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")  # the names botocore sends; the server judges the rest
SEGMENTS = ["a", "b c", "..", "%2e%2e", "%2E%2e", ".%2e", ".", "", "%2f", "x%25y", "%252e%252e"]
odd_buckets = st.one_of(st.sampled_from(["Bad_Bucket", "a..b", "xn--", "ab", "-ab", "ab-", "a" * 64, "192.168.1.1."]),
                        st.text(st.characters(codec="ascii", exclude_characters="/?#@:"), min_size=1, max_size=12))


@pytest.fixture(autouse=True, scope="module")
def no_cloud_credentials() -> Iterator[None]:
    """S3 stores find no credentials and ask no instance-metadata endpoint: an S3 URI fails fast, naming the store."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent/kubetune-aws-config")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kubetune-aws-credentials")
        validate_spec({})  # cel-python raises the recursion limit on first use: before hypothesis notes the limit
        yield


@st.composite
def store_uris(draw: st.DrawFn, base: str) -> str:
    """A store URI under `base` (an absolute folder three levels below the example's folder)."""
    tail = "/".join(draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3)))
    scheme = draw(st.sampled_from(["file", "plain", "s3", "other"]))
    if scheme == "file":
        return draw(st.sampled_from(["file://", "file://localhost", "file:", "file://host"])) + f"{base}/{tail}"
    if scheme == "plain":  # run.yaml is a file: a store there or below it cannot be
        return draw(st.sampled_from([f"{base}/", "sub/", "./", "", "run.yaml/", f"{base}/run.yaml/"])) + tail
    if scheme == "s3":
        return f"s3://{draw(odd_buckets)}/{tail}"
    return draw(st.sampled_from(["ftp://", "bundled://", "hf://", "pvc://", "S3://", "://"])) + tail


def where_a_local_store_lands(uri: str, cwd: Path) -> Path:
    return Path(os.path.normpath(cwd / (unquote(urlsplit(uri).path) if uri.startswith("file:") else uri)))


@given(st.data())
def test_any_store_uri_is_used_as_written_or_refused_in_one_line(data: st.DataObject) -> None:
    with scratch() as root:
        work = root / "a" / "b" / "c"  # three '..' at most: a store that escapes still lands inside the example
        work.mkdir(parents=True)
        uri = data.draw(store_uris(str(work)))
        with contextlib.chdir(work):
            write_sources(work)
            (work / "run.yaml").write_text(manifest("tree", suspend=True), encoding="utf-8")
            before = snapshot(root)
            code, err = kubetune("run", "run.yaml", "--store", uri)
        new = snapshot(root) - before
        if code == 0:
            assert not uri.startswith("file:") or ".." not in unquote(urlsplit(uri).path).split("/"), uri
            lands = where_a_local_store_lands(uri, work)
            assert all((root / name).is_relative_to(work / ".kubetune") or (root / name) in (lands, *lands.parents)
                       for name in new), (uri, sorted(new))
            return
        if uri.startswith("file:") and not uri.startswith("file://"):
            assert code == 2 and err[-1].startswith("kubetune run: error: argument --store: "), err
            assert new == set()
            return
        line = the_error_line(code, err)
        assert line.startswith("kubetune: store: "), (uri, line)
        bucket = uri[len("s3://"):].split("/")[0] if uri.lower().startswith("s3://") else "a-bucket"
        if not BOTOCORE_BUCKET.fullmatch(bucket):  # refused for what it is: never another bucket's error
            assert any(why in line for why in ("bucket", "control character", "Invalid IPv6 URL")), line
        assert all(name.startswith("a/b/c/.kubetune") for name in new), (uri, sorted(new))


def test_a_file_uri_whose_decoded_path_leaves_its_folder_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with contextlib.chdir(work):
        write_sources(work)
        (work / "run.yaml").write_text(manifest("tree", suspend=True), encoding="utf-8")
        line = the_error_line(*kubetune("run", "run.yaml", "--store", f"file://{work}/%2e%2e/escaped"))
    assert "without '..'" in line and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("folder", ["/proc/self", "file:///proc/self/fd", "/sys/kernel"])
def test_a_store_folder_nothing_can_be_written_under_is_refused_before_any_stage(tmp_path: Path, folder: str) -> None:
    """A pseudo-filesystem folder (or a read-only mount) exists, so opening it succeeds: the run probes a write there
    first, instead of letting each stage fail at its first write and be retried."""
    work = tmp_path / "work"
    work.mkdir()
    with contextlib.chdir(work):
        write_sources(work)
        (work / "run.yaml").write_text(manifest("tree"), encoding="utf-8")
        line = the_error_line(*kubetune("run", "run.yaml", "--store", folder))
    assert "cannot be written" in line and "name a folder you can write" in line
    assert not (work / ".kubetune").exists()  # refused before the run's own state folder
