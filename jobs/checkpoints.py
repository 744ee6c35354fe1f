"""Checkpoints and the adapter folder: what they hold, how they reach the store, how a new pod finds them.

A checkpoint is an adapter folder (loadable by peft and by the merge stage) plus the training state. It is built
locally, uploaded, and becomes visible only when its own `manifest.json` is written last; older ones are pruned
only after a newer one is complete.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from kubetune.store import Manifest, ManifestError, Store, StoreError, fetch, join_key, publish, read_manifest

log = logging.getLogger("kubetune.jobs.train")

CHECKPOINTS = "checkpoints"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d{8})")
BASE_MODEL_FILE = "base_model.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Tokenizer files some consumers (llama.cpp converters, slow tokenizers) read besides what save_pretrained writes.
TOKENIZER_EXTRAS = ("vocab.json", "merges.txt", "tokenizer.model", "special_tokens_map.json", "added_tokens.json")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


@dataclass(frozen=True)
class BaseModelRef:
    uri: str
    digest: str

    def to_json(self) -> dict[str, str]:
        return {"uri": self.uri, "digest": self.digest}


def write_adapter_folder(
    dest: Path, model: PeftModel, tokenizer: PreTrainedTokenizerBase, base_model_dir: Path, base: BaseModelRef
) -> None:
    """Adapter weights and config, every tokenizer file, the chat template and the base model reference."""
    dest.mkdir(parents=True, exist_ok=True)
    # Only the LoRA weights and the new token rows: the merge resizes the base and the rows replace its new ones.
    model.save_pretrained(str(dest), save_embedding_layers=False)
    tokenizer.save_pretrained(str(dest))
    for name in TOKENIZER_EXTRAS:
        if (base_model_dir / name).is_file() and not (dest / name).exists():
            shutil.copyfile(base_model_dir / name, dest / name)
    template = tokenizer.chat_template
    assert isinstance(template, str)
    (dest / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    # Also in tokenizer_config.json (transformers 5 writes only the .jinja file): tools that read only the config
    # (older transformers, other converters) get the run's template, not none or the base model's.
    config_file = dest / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (dest / BASE_MODEL_FILE).write_text(json.dumps(base.to_json(), indent=1) + "\n", encoding="utf-8")


def load_adapter_weights(model: PeftModel, folder: Path) -> None:
    result = set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))
    unexpected: list[str] = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ValueError(f"checkpoint {folder.name} does not fit this model: unexpected {unexpected[:5]}")


class CheckpointStore:
    """The checkpoints of one train stage prefix: `<prefix>/checkpoints/checkpoint-%08d/`."""

    def __init__(self, store: Store, stage_prefix: str, *, stage: str, input_key: str, keep: int) -> None:
        self.store = store
        self.root = join_key(stage_prefix, CHECKPOINTS)
        self.stage = stage
        self.input_key = input_key
        self.keep = keep

    def prefix(self, name: str) -> str:
        return join_key(self.root, name)

    def names(self) -> list[str]:
        """Every checkpoint folder in the store, complete or not, oldest first."""
        skip = len(self.root) + 1
        found = {info.key[skip:].split("/", 1)[0] for info in self.store.list(self.root)}
        return sorted(name for name in found if CHECKPOINT_NAME.fullmatch(name))

    def publish(self, local_dir: Path, name: str, metadata: dict[str, object]) -> Manifest:
        manifest = publish(self.store, self.prefix(name), local_dir, stage=self.stage, input_key=self.input_key,
                           metadata=metadata)
        self.prune(keep_latest=name)
        return manifest

    def prune(self, keep_latest: str) -> None:
        """Delete all but the newest `keep` checkpoints up to `keep_latest` (incomplete leftovers included)."""
        names = [name for name in self.names() if name <= keep_latest]
        for name in names[: max(0, len(names) - self.keep)]:
            self.store.delete_prefix(self.prefix(name))

    def restore_latest(self, workdir: Path) -> tuple[str, Path] | None:
        """Download the newest checkpoint whose manifest is valid and whose files verify; older ones are the
        fallback when the newest is partial or corrupt. None when there is none."""
        for name in reversed(self.names()):
            dest = workdir / name
            shutil.rmtree(dest, ignore_errors=True)
            try:
                manifest = read_manifest(self.store, self.prefix(name))
                if manifest is None:
                    log.warning("checkpoint %s is incomplete (no manifest): trying an older one", name)
                    continue
                fetch(self.store, self.prefix(name), dest, manifest)
            except (ManifestError, StoreError, OSError) as error:
                log.warning("checkpoint %s is unusable (%s): trying an older one", name, error)
                shutil.rmtree(dest, ignore_errors=True)
                continue
            return name, dest
        return None
