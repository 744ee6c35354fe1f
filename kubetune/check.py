"""`kubetune check TARGET --run RUN.yaml`: the evaluate gate by hand, against an adapter checkpoint, a merged model
folder or a GGUF file (the original scripts' test-training, test-merging and test-gguf modes).

An adapter is merged into the run's base model, a merged folder is converted to the run's GGUF types, and every GGUF
is gated with the run's prompts, expectations and stop sequences — the same code the evaluate stage runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.validate import FineTuneRun


@dataclass(frozen=True)
class CheckResult:
    reports: list[dict[str, Any]]
    failures: list[str]


def target_kind(target: Path) -> str:
    if target.is_file() and target.suffix == ".gguf":
        return "gguf"
    if (target / "adapter_config.json").is_file():
        return "adapter"
    if (target / "config.json").is_file():
        return "merged"
    raise ValueError(f"{target} is neither a .gguf file, an adapter folder (adapter_config.json) "
                     "nor a model folder (config.json)")


def check(target: Path, run: FineTuneRun, workdir: Path | None = None) -> CheckResult:
    if workdir is not None:
        return _check_in(target, run, workdir)
    # Without --workdir the merged model and GGUFs are only a means to the reports: nothing outlives the check.
    with tempfile.TemporaryDirectory(prefix="kubetune-check-") as scratch:
        return _check_in(target, run, Path(scratch))


def _check_in(target: Path, run: FineTuneRun, scratch: Path) -> CheckResult:
    from kubetune.ask import gguf_template
    from kubetune.jobs.basemodel import default_cache_dir, resolve_base_model
    from kubetune.jobs.evaluate import chat_template, gate_failure, gguf_reports
    from kubetune.jobs.lora_merge import merge_adapter
    from kubetune.llama.convert import convert
    from kubetune.llama.errors import ConversionError
    from kubetune.store import open_store

    spec = run.spec
    kind = target_kind(target)
    merged: Path | None = None
    if kind == "adapter":
        base = resolve_base_model(spec.base_model, store_factory=open_store, cache_dir=default_cache_dir())
        merged = merge_adapter(base, target, scratch / "merged", dtype=spec.merge.dtype).output_dir
    elif kind == "merged":
        merged = target
    if merged is not None:
        try:
            ggufs = [f.path for f in convert(merged, scratch / "gguf", list(spec.export.types))]
        except ConversionError as error:
            raise ConversionError(_naming(merged, str(error))) from None
        template = chat_template(merged)
    else:
        ggufs, template = [target], gguf_template(target)  # the template it carries from training
    reports = gguf_reports(ggufs, merged, spec, template)  # the merged model's reference once for all GGUFs
    failures = [f for r in reports
                if (f := gate_failure(r, spec.evaluate.min_pass_rate, spec.evaluate.min_top1_agreement))]
    return CheckResult(reports, failures)


def _naming(model_dir: Path, message: str) -> str:
    """The converter's message with the model folder it is about: "unsupported architecture None" or "config.json
    lacks 'num_attention_heads'" alone do not say which of the folders on the command line is meant."""
    return message if str(model_dir) in message else f"{model_dir}: {message}"
