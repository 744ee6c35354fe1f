"""An instant stage program for operator crash and load tests: `python -S instant_stage.py <stage> --run run.json`.

It honours the job contract (docs/contracts.md) on a `file://` store with the standard library only, so a Job costs a
bare interpreter start (about 30 ms) instead of the 0.5 s it takes to import the job runtime and boto3: hundreds of
runs fit in the CI budget. What it does, in the contract's order:

- reads run.json; every upstream stage must have a published manifest for its input key whose files verify by
  sha256, else it exits 2 (configuration/input error, never retried);
- writes progress.json (Running), its output file, then `manifest.json` LAST, in the canonical form
  (`kubetune.store.manifest.Manifest.to_bytes`: sorted keys, compact, ASCII), each write atomic (temp + rename,
  temp names carrying the store's reserved `.kubetune-tmp-` marker), then progress.json (Succeeded);
- SIGTERM stops it with exit 143 (Python's default action gives the same code through the executor);
- as the `sources` Job it publishes a sources.json whose digests hash the spec's URIs: the load tests' sources never
  change behind a URI, and reading the real ones would cost the import this program avoids.

The operator reads these manifests with the real `read_manifest`, which refuses anything non-canonical, and the tests
verify every published output with the real store code: a drift from the contract fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

STAGES = ("dataset", "train", "merge", "convert", "evaluate")
SOURCES = "sources"
TEMP_MARKER = ".kubetune-tmp-"
EXIT_CONFIG = 2


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_MARKER}{secrets.token_hex(6)}-{path.name}")
    temp.write_bytes(data)
    os.replace(temp, path)


def canonical(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def verify_upstream(root: Path, stage: str, ref: dict[str, str]) -> None:
    manifest_path = root / ref["prefix"] / "manifest.json"
    if not manifest_path.is_file():
        raise LookupError(f"the {stage} stage has no complete output at {manifest_path.parent}")
    manifest = json.loads(manifest_path.read_bytes())
    if manifest["inputKey"] != ref["key"]:
        raise LookupError(f"the {stage} output at {manifest_path.parent} is for another input key")
    for entry in manifest["files"]:
        data = (root / ref["prefix"] / entry["path"]).read_bytes()
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise LookupError(f"{stage}/{entry['path']} does not match its manifest")


def uri_sources(spec: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    def source(uri: str) -> dict[str, str]:
        return {"uri": uri, "digest": hashlib.sha256(uri.encode()).hexdigest()}

    return {"dataset": source(spec["dataset"]["uri"]), "template": source("instant-template"),
            "baseModel": source(spec["baseModel"]["uri"])}


def main(argv: list[str]) -> int:
    stage, run_path = argv[0], Path(argv[argv.index("--run") + 1])
    run = json.loads(run_path.read_text())
    uri = urlsplit(run["store"]["uri"])
    if uri.scheme != "file":
        print(f"instant stage: needs a file:// store, got {run['store']['uri']}", file=sys.stderr)
        return EXIT_CONFIG
    root = Path(unquote(uri.path))
    own = run["stages"][stage]
    prefix = root / own["prefix"]

    def progress(phase: str, **fields: object) -> None:
        atomic_write(prefix / "progress.json",
                     json.dumps({"stage": stage, "phase": phase, "updatedAt": utc_now(), **fields}).encode())

    progress("Running")
    try:
        for upstream in STAGES[: STAGES.index(stage)] if stage in STAGES else ():
            verify_upstream(root, upstream, run["stages"][upstream])
    except (LookupError, KeyError, OSError, ValueError) as error:
        reason = " ".join(str(error).split())
        progress("Failed", message=reason, exitCode=EXIT_CONFIG)
        print(f"kubetune-job: failed: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    if stage == SOURCES:
        name, payload = "sources.json", canonical(uri_sources(run["spec"]))
    else:
        name, payload = f"{stage}.json", canonical({"stage": stage, "run": run["metadata"]["name"],
                                                    "inputKey": own["key"]})
    atomic_write(prefix / name, payload)
    manifest = {
        "schema": 1, "stage": stage, "inputKey": own["key"], "createdAt": utc_now(), "metadata": {"instant": True},
        "files": [{"path": name, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}],
    }
    atomic_write(prefix / "manifest.json", canonical(manifest))
    progress("Succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
