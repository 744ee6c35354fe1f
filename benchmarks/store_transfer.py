"""Benchmark: store folder transfers (not a test; prints figures as ratios to baselines measured in the same run).

    .venv/bin/python benchmarks/store_transfer.py [--big-mib 64] [--small 200] [--small-kib 16] [--repeat 3]

The folder is one large file (a model) plus many small ones (tokenizer, configs, dataset shards).
1. S3 (SeaweedFS ``weed mini`` on 127.0.0.1): ``S3Store.put_dir`` / ``get_dir`` (all files on one transfer manager,
   concurrently) against the plain approach: boto3 ``upload_file`` / ``download_file`` one file after another,
   with the same part size and concurrency. Then ``publish`` / ``fetch`` (sha256 of every file, manifest last)
   against ``put_dir`` / ``get_dir``, to show what verification costs.
2. Local store: ``LocalStore.put_dir`` (temp file, fsync, rename per file) against ``shutil.copytree``.
Each figure is the best of --repeat runs. SeaweedFS on loopback, sharing the CPU with the client, is not a real
endpoint's throughput; the ratios are the point.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures (the SeaweedFS helper)

from kubetune.store import LocalStore, S3Settings, S3Store, fetch, publish
from tests.fixtures.s3server import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, REGION
from tests.fixtures.seaweedfs import running_seaweedfs

MiB = 1024 * 1024
PART = 8 * MiB


def best_of(repeat: int, run: Callable[[int], object]) -> float:
    times = []
    for attempt in range(repeat):
        start = time.perf_counter()
        run(attempt)
        times.append(time.perf_counter() - start)
    return min(times)


def make_folder(root: Path, big_mib: int, small: int, small_kib: int) -> int:
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.bin").write_bytes(os.urandom(big_mib * MiB))
    for index in range(small):
        shard = root / "shards" / f"{index % 10:02d}"
        shard.mkdir(parents=True, exist_ok=True)
        (shard / f"part-{index:05d}.json").write_bytes(os.urandom(small_kib * 1024))
    return big_mib * MiB + small * small_kib * 1024


def report(name: str, seconds: float, baseline: float, total_bytes: int) -> None:
    print(f"  {name:<44} {seconds:7.3f} s  {total_bytes / MiB / seconds:8.1f} MiB/s  x{baseline / seconds:5.2f}")


def bench_s3(work: Path, source: Path, total: int, repeat: int) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=FAKE_SECRET_KEY)
    files = sorted(path for path in source.rglob("*") if path.is_file())
    with running_seaweedfs(work / "seaweedfs") as server:
        client = server.client()
        client.create_bucket(Bucket="bench")
        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=8)
        settings = S3Settings(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=8)
        store = S3Store("bench", "store", endpoint=server.endpoint, region=REGION, path_style=True, settings=settings)
        raw = boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION)

        def plain_upload(attempt: int) -> None:
            for path in files:
                key = f"plain/{attempt}/{path.relative_to(source).as_posix()}"
                raw.upload_file(str(path), "bench", key, Config=config)

        def plain_download(attempt: int) -> None:
            for path in files:
                relative = path.relative_to(source).as_posix()
                target = work / f"plain-down-{attempt}" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                raw.download_file("bench", f"plain/0/{relative}", str(target), Config=config)

        upload_baseline = best_of(repeat, plain_upload)
        download_baseline = best_of(repeat, plain_download)
        put_dir = best_of(repeat, lambda attempt: store.put_dir(f"dir/{attempt}", source))
        get_dir = best_of(repeat, lambda attempt: store.get_dir("dir/0", work / f"dir-down-{attempt}"))
        published = best_of(
            repeat,
            lambda attempt: publish(store, f"pub/{attempt}", source, stage="bench", input_key="0" * 64),
        )
        fetched = best_of(repeat, lambda attempt: fetch(store, "pub/0", work / f"fetch-down-{attempt}"))

    print(f"S3 via SeaweedFS, {len(files)} files, {total / MiB:.1f} MiB, best of {repeat}:")
    report("upload: boto3 upload_file, file by file", upload_baseline, upload_baseline, total)
    report("upload: S3Store.put_dir", put_dir, upload_baseline, total)
    report("upload: publish (sha256 + manifest last)", published, put_dir, total)
    print("    (publish's ratio is against put_dir)")
    report("download: boto3 download_file, file by file", download_baseline, download_baseline, total)
    report("download: S3Store.get_dir", get_dir, download_baseline, total)
    report("download: fetch (sha256 verified)", fetched, get_dir, total)
    print("    (fetch's ratio is against get_dir)")


def bench_local(work: Path, source: Path, total: int, repeat: int) -> None:
    store = LocalStore(work / "local-store")
    copytree = best_of(repeat, lambda attempt: shutil.copytree(source, work / f"copytree-{attempt}"))
    put_dir = best_of(repeat, lambda attempt: store.put_dir(f"dir/{attempt}", source))
    print(f"Local store, best of {repeat}:")
    report("shutil.copytree", copytree, copytree, total)
    report("LocalStore.put_dir (atomic, fsync per file)", put_dir, copytree, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--small-kib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetune-store-bench-") as temp:
        work = Path(temp)
        source = work / "source"
        total = make_folder(source, args.big_mib, args.small, args.small_kib)
        bench_s3(work, source, total, args.repeat)
        bench_local(work, source, total, args.repeat)


if __name__ == "__main__":
    main()
