"""FineTuneRun spec: the single source of truth for the CRD, `kubetune validate` and the jobs (its status: run_status.py).

Field docstrings become the CRD's descriptions (`kubectl explain finetunerun.spec.training`), so they are written
for users. Bounds and enums live in the annotations; cross-field rules are CEL (`cel_rules`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kubetune.api.base import ApiModel, CelRule, KeyRule, cel_string
from kubetune.api.chat_template import ChatTemplateSpec
from kubetune.api.dataset_formats import DatasetFields, DatasetFormat
from kubetune.api.eval_loss import EVAL_LOSS_GATE_RULES
from kubetune.api.notify import NotifySpec
from kubetune.api.publish import PublishSpec
from kubetune.api.tracking import TrackingSpec
from kubetune.datasets_new.placeholders import DEFAULT_PLACEHOLDERS

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
KIND = "FineTuneRun"
PLURAL = "finetuneruns"
SINGULAR = "finetunerun"
SHORT_NAMES = ("ftr",)
CATEGORIES = ("kubetune",)
API_VERSION = f"{GROUP}/{VERSION}"

STAGES = ("dataset", "train", "merge", "convert", "evaluate", "publish")
Stage = Literal["dataset", "train", "merge", "convert", "evaluate", "publish"]

# A run's name becomes part of Job, ConfigMap and label values (`<run>-<stage>-<key8>` ≤ 63) and of store keys.
RUN_NAME_MAX = 40
RUN_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Rules on the object's root: a real API server reports them at no field path and refuses `fieldPath: .metadata.name`.
RUN_NAME_RULES = (
    CelRule(
        f"self.metadata.name.size() <= {RUN_NAME_MAX}",
        f"metadata.name must be at most {RUN_NAME_MAX} characters (it prefixes Job names)",
    ),
    CelRule(
        f"self.metadata.name.matches({cel_string(RUN_NAME_PATTERN)})",
        "metadata.name must be a DNS-1035 label (lowercase letters, digits, '-'; starts with a letter)",
    ),
)

# Patterns are read by three regex engines (Go RE2 on the server, Rust's in pydantic, Python's under CEL in
# `kubetune validate`), so they use only what all three read alike: explicit ASCII classes, never `\s` or `\d`
# (Unicode-aware in Rust and Python, ASCII in RE2).
# A URI character: no control character, space, DEL, query (`?`), fragment (`#`) or backslash.
_URI_CHAR = r"[^\x00-\x20\x7f?#\\]"
_S3 = r"s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/" + _URI_CHAR + "*)?"
_LOCAL = r"file:///" + _URI_CHAR + "*|/" + _URI_CHAR + "*"
# pvc://<claim>/<path>: a PersistentVolumeClaim of the run's namespace (a DNS-1123 subdomain) and a folder in it.
_PVC = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/" + _URI_CHAR + "*)?"
# A git revision: names separated by single '.' or '/', so never `..`, a leading '.' or '/', or `//`.
GIT_REVISION = r"[-A-Za-z0-9_]+([./][-A-Za-z0-9_]+)*"
BASE_MODEL_URI = (
    r"^(bundled://[a-z0-9][-a-z0-9.]*"
    rf"|{_S3}"
    rf"|hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@{GIT_REVISION})?"
    rf"|{_PVC}"
    rf"|{_LOCAL})$"
)
# An added special token: no control character, no space at either end (as RE2, Rust's regex and re all read it).
SPECIAL_TOKEN = r"^[^\x00-\x20\x7f]([^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$"
# A Hub dataset, optionally at a revision (no '/': the path in the repo follows it) and a file or folder in it.
HF_DATASET_URI = (r"hf://datasets/[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*"
                  r"(@[-A-Za-z0-9_]+([.][-A-Za-z0-9_]+)*)?"
                  rf"(/{_URI_CHAR}*)?")
DATASET_URI = rf"^(bundled|{_S3}|{HF_DATASET_URI}|{_PVC}|{_LOCAL})$"
STORAGE_URI = rf"^({_S3}|{_LOCAL})$"
# No `user:password@` credentials (they belong in credentialsSecret), no query or fragment.
HTTP_URL = (
    r"^https?://([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
    r"(/[^\x00-\x20\x7f?#@\\]*)?$"
)
# A relative path inside a tree: no leading '/', no control character, space or backslash.
STRUCTURE_FILE = r"^[^/\x00-\x20\x7f\\][^\x00-\x20\x7f\\]*\.json$"


def no_traversal(field: str) -> tuple[CelRule, CelRule]:
    """No `..` path segment, and no percent-encoded '.', '/', '\\', '%' or NUL that a job's URL decoding would turn
    into one: such a URI would escape its bucket prefix or folder."""
    return (
        CelRule(
            f"!has(self.{field}) || !self.{field}.matches('(^|/)\\\\.\\\\.(/|$)')",
            "must not contain '..' path segments",
            f".{field}",
        ),
        CelRule(
            f"!has(self.{field}) || !self.{field}.matches('%(2[eEfF]|5[cC]|25|00)')",
            "must not contain percent-encoded '.', '/', backslash, '%' or NUL (%2e, %2f, %5c, %25, %00)",
            f".{field}",
        ),
    )


# Kubernetes label keys: an optional DNS-subdomain prefix (≤ 253) and '/', then a name (≤ 63).
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEYS = KeyRule(
    f"k.matches({cel_string(LABEL_KEY)}) && !k.matches('^[^/]{{254}}')",
    "keys must be label keys: an optional DNS subdomain prefix of at most 253 characters and '/', then a name of "
    "at most 63 characters (letters, digits, '-', '_', '.'; starting and ending with a letter or digit)",
)
QUANTITY = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)([eE][0-9]+|[munkMGTPE]|[KMGTPE]i)?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
PLACEHOLDER_NAME = r"^[A-Z][A-Z0-9_]*$"
PLACEHOLDER_KEYS = KeyRule(f"k.matches({cel_string(PLACEHOLDER_NAME)})", f"keys must match {PLACEHOLDER_NAME}")
CATEGORY_NAME = r"^[a-z0-9_]+$"
CHECKPOINT_NAME = r"^checkpoint-[0-9]{8}$"
IMAGE = r"^[!-~]+$"  # printable ASCII, no space
# A Secret's (or ConfigMap's) data key as the API server allows it (IsConfigMapKey): not '.' or '..', and not
# starting with '..' either (a pod's secretKeyRef naming such a key is refused, so its Job could never be created).
SECRET_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"

Dtype16 = Literal["bfloat16", "float16", "float32"]
GgufType = Literal[
    "f32", "f16", "bf16", "q8_0",
    "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k",
]


class SecretKeyRef(ApiModel):
    """A key in a Secret in the run's namespace. The operator never reads it; it reaches jobs as an env var."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY)]
    """Key within the Secret (letters, digits, '-', '_', '.'; not '.' or '..' nor starting with '..')."""


class BaseModelSpec(ApiModel):
    """The model to fine-tune."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        *no_traversal("uri"),
        # `has(self.uri)` guards: the server checks the `default: {}` of the parent as written, without this
        # object's own defaults (uri's default is not hf://, so "absent" must fail as the default would).
        CelRule(
            "!has(self.tokenSecret) || has(self.uri) && self.uri.startsWith('hf://')",
            "tokenSecret applies only to hf:// models",
            ".tokenSecret",
        ),
        CelRule(
            "!has(self.revision) || has(self.uri) && self.uri.startsWith('hf://')",
            "revision applies only to hf:// models (write it as hf://org/name@revision or here)",
            ".revision",
        ),
    )

    uri: Annotated[str, Field(max_length=1024, pattern=BASE_MODEL_URI)] = "bundled://smollm2-135m-instruct"
    """Where the Hugging Face model folder comes from: `bundled://smollm2-135m-instruct` (shipped with kubetune),
    `s3://bucket/path`, an absolute local path or `file:///path`, `pvc://claim/path` (a PersistentVolumeClaim of the
    run's namespace, mounted read-only; cluster runs only), or `hf://org/name@revision` (needs Hub access)."""
    revision: Annotated[str | None, Field(default=None, max_length=255, pattern=f"^{GIT_REVISION}$")]
    """Hub revision (branch, tag or commit) for hf:// models; overrides an `@revision` in the URI."""
    sha256: Annotated[str | None, Field(default=None, pattern=r"^[a-f0-9]{64}$")]
    """Expected digest of the model folder (sha256 of its sorted `path size sha256` listing); checked when fetched."""
    token_secret: SecretKeyRef | None = None
    """Secret key holding a Hugging Face token for gated hf:// models (passed to jobs as HF_TOKEN)."""


class DatasetSpec(ApiModel):
    """The hierarchical dataset (datasets_new layout) and how to turn it into training records."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        *no_traversal("uri"),
        *no_traversal("structure"),
        CelRule("!has(self.format) || self.format == 'tree' || !has(self.uri) || self.uri != 'bundled'",
                "the bundled dataset is a topics tree: a format other than tree needs a file or folder uri", ".uri"),
        CelRule("!has(self.uri) || !self.uri.startsWith('hf://') || has(self.format) && self.format != 'tree'",
                "a Hub dataset is read as data files: set format to messages, sharegpt or alpaca", ".format"),
    )

    uri: Annotated[str, Field(max_length=1024, pattern=DATASET_URI)] = "bundled"
    """The topics tree: `bundled` (the starter dataset shipped with kubetune), `s3://bucket/path`, a local path or
    `pvc://claim/path` (mounted read-only; cluster runs only); for another `format`, a file or a folder of
    .jsonl/.json/.parquet files: local, `s3://` or
    `hf://datasets/org/name[@revision][/path]`."""
    format: DatasetFormat = "tree"
    """How the data is laid out: `tree` (datasets_new), `messages`, `sharegpt` or `alpaca` (README: dataset formats)."""
    fields: DatasetFields = Field(default_factory=DatasetFields)
    """Record keys for files that name a format's parts their own way (not for `tree`)."""
    structure: Annotated[str, Field(min_length=1, max_length=255, pattern=STRUCTURE_FILE)] = "structure.enriched.json"
    """Structure file, relative to the tree root."""
    placeholders: Annotated[
        dict[str, Annotated[str, Field(min_length=1)]], Field(max_length=64), PLACEHOLDER_KEYS
    ] = Field(default_factory=lambda: dict(DEFAULT_PLACEHOLDERS))
    """Values for identity placeholders such as `${NAME}` and `${SPEC}` in the samples. Unset: `NAME` Nova, `SPEC`
    an assistant for fine-tuning language models on Kubernetes (a map given replaces the default whole)."""
    categories: Annotated[list[Annotated[str, Field(pattern=CATEGORY_NAME)]], Field(max_length=256)] = Field(
        default_factory=list
    )
    """Only these categories (empty: all)."""
    max_seq_length: Annotated[int, Field(ge=32, le=131072)] = 1024
    """Longest training sequence in tokens; longer samples are truncated."""
    eval_split: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    """Fraction of samples held out for evaluation (stable: decided by each sample's id)."""
    token_stats: bool = True
    """Compute token-length statistics with the base model's tokenizer."""


class LoraSpec(ApiModel):
    """LoRA adapter shape."""

    r: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank of the adapter matrices."""
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Dropout on the adapter's input."""
    target_modules: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[-A-Za-z0-9_.*]+$")]],
        Field(min_length=1, max_length=64),
    ] = Field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters: names like `q_proj`, or `all-linear` for every linear layer but the output head."""


class QuantizationSpec(ApiModel):
    """4-bit quantization of the frozen base (QLoRA, bitsandbytes)."""

    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit per parameter)."""
    compute_dtype: Dtype16 = "bfloat16"
    """Dtype the 4-bit weights are dequantized to for matrix multiplies."""


class CheckpointSpec(ApiModel):
    """How often training state is saved to the store."""

    every_steps: Annotated[int, Field(ge=1, le=1_000_000)] = 50
    """Save a checkpoint every this many optimizer steps (and on SIGTERM)."""
    keep: Annotated[int, Field(ge=1, le=100)] = 3
    """How many of the newest checkpoints to keep."""


class TrainingSpec(ApiModel):
    """QLoRA / LoRA training."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        # An absent field reads as its default (method qlora, fp8 false, extraEpochs 0): the server checks the
        # parent's `default: {}` against these rules as written, before this object's own defaults fill it.
        CelRule(
            "!has(self.quantization) || !has(self.method) || self.method == 'qlora'",
            "quantization applies only to method qlora",
            ".quantization",
        ),
        CelRule(
            "!has(self.fp8) || !self.fp8 || !has(self.method) || self.method == 'qlora'",
            "fp8 applies only to method qlora",
            ".fp8",
        ),
        CelRule(
            "!has(self.activationOffload) || !self.activationOffload || !has(self.gradientCheckpointing)"
            " || self.gradientCheckpointing",
            "activationOffload needs gradientCheckpointing",
            ".activationOffload",
        ),
        CelRule(
            "!has(self.maxSteps) || !has(self.extraEpochs) || self.extraEpochs == 0.0",
            "extraEpochs continues an epoch-based run; it cannot be combined with maxSteps",
            ".extraEpochs",
        ),
    )

    method: Literal["qlora", "lora"] = "qlora"
    """qlora: 4-bit base + LoRA (bitsandbytes; on a CPU the base is rounded to 4-bit once and multiplied in fp32,
    the same model far faster than 4-bit CPU kernels); lora: 16/32-bit base + LoRA."""
    epochs: Annotated[float, Field(gt=0.0, le=1000.0)] = 1.0
    """Passes over the training data."""
    extra_epochs: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    """Epochs added to a finished run: training continues from its last checkpoint."""
    max_steps: Annotated[int | None, Field(default=None, ge=1, le=10_000_000)]
    """Stop after this many optimizer steps (overrides epochs)."""
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-4
    """Peak learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = 0.03
    """Fraction of steps spent warming the learning rate up."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 4
    """Sequences per device per micro-batch."""
    gradient_accumulation: Annotated[int, Field(ge=1, le=1024)] = 1
    """Micro-batches per optimizer step."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    """Seed for data order, adapter init and dropout."""
    packing: bool = False
    """Pack several samples into each sequence (attention stays within each sample)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    recompute_layers: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """With gradientCheckpointing, the share of decoder layers that recompute (spread evenly): 1 uses the least
    memory; less is faster and keeps the other layers' activations in GPU memory."""
    activation_offload: bool = False
    """Memory-lean training on CUDA: every decoder layer recomputes in backward (recomputeLayers is then 1) and
    each layer's checkpointed input waits in pinned CPU memory between forward and backward, copied out and back on
    a side stream that overlaps the compute (the next layer's input is fetched while the current one recomputes).
    A frozen input embedding table that is not tied to the output head (no added tokens) also waits in pinned CPU
    memory: its rows are looked up there and copied to the GPU per micro-batch; and AdamW's moments stay in CPU
    memory, the update runs there. GPU memory then holds the weights, the LoRA parameters and gradients, one layer's
    activations and one loss chunk, whatever the depth; training is somewhat slower and the gradients are exactly
    those without offload. Needs gradientCheckpointing; host memory grows by the embedding table, the moments and
    layers x tokens x hidden size x 2 bytes per micro-batch (pinned memory counts against the pod's memory limit).
    Ignored on CPUs (nothing to save there)."""
    compile: bool = True
    """On CUDA, compile the decoder layers with torch.compile (fused element-wise kernels; the first step compiles)."""
    fp8: bool = False
    """qlora on GPUs with FP8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell): the frozen 4-bit base
    weights' matmuls (forward and input gradients) run in FP8 e4m3 with per-token and per-channel scales, about 1.2x
    faster training; LoRA, attention, the head and every eval pass stay in bf16. Elsewhere the train stage fails."""
    int8: bool = False
    """Training on a CPU: the frozen base weights' matmuls (forward and input gradients) run as int8 x int8 products
    with per-token and per-channel scales (oneDNN on AVX-512 VNNI, AVX-VNNI or AMX: several times the fp32 rate),
    about 1.3x faster steps; LoRA, attention, the head, the loss and every eval pass stay fp32. GPUs ignore it
    (fp8 is theirs)."""
    logging_steps: Annotated[int, Field(ge=1, le=100_000)] = 1
    """Write progress and metrics every this many steps."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """Adapter shape."""
    quantization: QuantizationSpec | None = None
    """4-bit settings (qlora only; defaults apply when omitted)."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpoint interval and retention."""
    added_special_tokens: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64, pattern=SPECIAL_TOKEN)]], Field(max_length=256)
    ] = Field(default_factory=list)
    """Special tokens added to the tokenizer (embeddings are resized and trained), e.g. `<think>`, `</output>`. No
    control characters, and no space at either end: the tokenizer splits every occurrence out of all text, so `" "`
    or a newline would silently change every sample."""
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=16)] = Field(
        default_factory=lambda: ["</output>"]
    )
    """Generation stops at any of these (training-time eval and the evaluate gate), and at the chat template's
    end-of-turn marker."""
    chat_template: ChatTemplateSpec = Field(default_factory=ChatTemplateSpec)
    """The chat template for training, the merged model, the GGUF and the gate."""
    eval_prompts: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(max_length=64)] = Field(
        default_factory=list
    )
    """Prompts answered at every checkpoint, to watch the model learn."""
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 128
    """Longest answer generated for eval prompts."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks CUDA when present."""


class MergeSpec(ApiModel):
    """Merging the adapter into the 16-bit base."""

    dtype: Dtype16 = "bfloat16"
    """Dtype of the merged weights."""
    checkpoint: Annotated[str | None, Field(default=None, pattern=CHECKPOINT_NAME)]
    """Merge this checkpoint (e.g. `checkpoint-00000050`) instead of the final adapter."""


class ExportSpec(ApiModel):
    """GGUF files to produce."""

    types: Annotated[list[GgufType], Field(min_length=1, max_length=13)] = Field(
        default_factory=lambda: list[GgufType](["q8_0"])
    )
    """GGUF types: f32, f16, bf16, q8_0 written directly; k-quants (q4_k_m, …) quantized from f16 by llama.cpp."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("!has(self.types) || self.types.all(t, self.types.exists_one(u, u == t))", "must not repeat a type",
                ".types"),
    )


class EvalPrompt(ApiModel):
    """A prompt the fine-tuned GGUF must answer acceptably."""

    prompt: Annotated[str, Field(min_length=1, max_length=4096)]
    """The user message."""
    expect_contains: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=32)] = Field(
        default_factory=list
    )
    """The answer must contain each of these (case-insensitive; placeholders like `${NAME}` are substituted)."""
    expect_not_contains: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=32)] = Field(
        default_factory=list
    )
    """The answer must contain none of these (case-insensitive)."""


class EvaluateSpec(ApiModel):
    """The smoke gate: every GGUF answers curated prompts in llama.cpp with the training chat template."""

    enabled: bool = True
    """Run the gate; a failed gate fails the run."""
    prompts: Annotated[list[EvalPrompt], Field(max_length=256)] = Field(default_factory=list)
    """Prompts with expectations."""
    min_pass_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Fraction of prompts that must pass, per GGUF."""
    max_tokens: Annotated[int, Field(ge=1, le=8192)] = 96
    """Longest answer generated."""
    min_top1_agreement: Annotated[float | None, Field(default=None, ge=0.0, le=1.0)]
    """Minimum top-1 next-token agreement between each GGUF and the merged model on a fixed text."""
    reference_text: Annotated[str | None, Field(default=None, min_length=1, max_length=65536)]
    """Fixed text for the agreement checks (a built-in paragraph when omitted)."""
    max_eval_loss: Annotated[float | None, Field(default=None, gt=0.0, le=100.0)]
    """Highest eval loss (mean per assistant token on the eval split) the fine-tuned model may end with."""
    max_eval_loss_ratio: Annotated[float | None, Field(default=None, gt=0.0, le=100.0)]
    """Highest final eval loss as a multiple of the base model's; with an eval split it defaults to 1.0 (the
    fine-tuned model must not be worse than the base on held-out data)."""


class StorageSpec(ApiModel):
    """Where checkpoints and artifacts live."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        *no_traversal("uri"),
        CelRule("!has(self.endpoint) || has(self.uri) && self.uri.startsWith('s3://')", "endpoint applies only to s3:// storage",
                ".endpoint"),
        CelRule(
            "!has(self.credentialsSecret) || has(self.uri) && self.uri.startsWith('s3://')",
            "credentialsSecret applies only to s3:// storage",
            ".credentialsSecret",
        ),
    )

    uri: Annotated[str | None, Field(default=None, max_length=1024, pattern=STORAGE_URI)]
    """`s3://bucket/prefix` or a local folder. Omitted: the operator's default (Helm value) or, locally, .kubetune/store."""
    endpoint: Annotated[str | None, Field(default=None, max_length=1024, pattern=HTTP_URL)]
    """S3 endpoint URL for MinIO, Ceph, R2 and other S3-compatible stores."""
    region: Annotated[str | None, Field(default=None, max_length=64, pattern=r"^[a-z0-9-]+$")]
    """S3 region."""
    path_style: bool = False
    """Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted stores."""
    credentials_secret: Annotated[str | None, Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)]
    """Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optionally AWS_SESSION_TOKEN)."""
    keep_on_delete: bool = True
    """Keep the run's artifacts in the store when the FineTuneRun is deleted."""


class Toleration(ApiModel):
    """A Kubernetes toleration."""

    # The API server's own rules for a pod's tolerations (core validation), so that a run the CRD accepts never
    # fails later, when its Job is created. Absent operator means its default, Equal.
    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "has(self.key) && self.key != '' || has(self.operator) && self.operator == 'Exists'",
            "operator must be Exists when key is empty (it then tolerates every taint)",
            ".operator",
        ),
        CelRule(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists",
            ".value",
        ),
        CelRule(
            "!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute'",
            "effect must be 'NoExecute' when tolerationSeconds is set",
            ".effect",
        ),
        CelRule(
            "!has(self.key) || !self.key.matches('^[^/]{254}')",
            "the key's prefix must be at most 253 characters",
            ".key",
        ),
    )

    key: Annotated[str | None, Field(default=None, max_length=317, pattern=f"^$|{LABEL_KEY}")]
    """Taint key, a label key (empty with operator Exists: every taint)."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """How key and value are compared."""
    value: Annotated[str | None, Field(default=None, max_length=63, pattern=LABEL_VALUE)]
    """Taint value, a label value (empty with operator Exists)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate (empty: all)."""
    toleration_seconds: Annotated[int | None, Field(default=None, ge=0)]
    """How long a NoExecute taint is tolerated."""


class StageResources(ApiModel):
    """Scheduling and resources for one stage's Job."""

    gpus: Annotated[int | None, Field(default=None, ge=0, le=64)]
    """`nvidia.com/gpu` per pod."""
    nodes: Annotated[int | None, Field(default=None, ge=1, le=256)]
    """Pods for multi-node training (train only)."""
    cpu: Annotated[str | None, Field(default=None, max_length=32, pattern=QUANTITY)]
    """CPU request, e.g. `4` or `500m`."""
    memory: Annotated[str | None, Field(default=None, max_length=32, pattern=QUANTITY)]
    """Memory request and limit, e.g. `32Gi`."""
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]], Field(max_length=32), LABEL_KEYS
    ] | None = None
    """Node labels the pod must match."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Taints the pod tolerates."""
    priority_class_name: Annotated[str | None, Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)]
    """PriorityClass of the pod."""
    queue_name: Annotated[str | None, Field(default=None, max_length=63, pattern=DNS_LABEL)]
    """Kueue LocalQueue: the Job is created suspended and admitted by Kueue."""
    image: Annotated[str | None, Field(default=None, max_length=512, pattern=IMAGE)]
    """Container image (default: the operator's job image)."""
    active_deadline_seconds: Annotated[int | None, Field(default=None, ge=60)]
    """Fail the Job after this long."""
    backoff_limit: Annotated[int | None, Field(default=None, ge=0, le=100)]
    """Pod retries for failures that may succeed on retry (preemption does not count)."""
    shm_size: Annotated[str | None, Field(default=None, max_length=32, pattern=QUANTITY)]
    """Size of the memory-backed /dev/shm (train defaults to 8Gi)."""
    scratch_size: Annotated[str | None, Field(default=None, max_length=32, pattern=QUANTITY)]
    """Size limit of the pod's /scratch volume (work files, model caches), e.g. `200Gi`; the pod is evicted when it
    writes more. Default per stage: dataset 10Gi, train 100Gi, merge 100Gi, convert 150Gi, evaluate and publish
    50Gi."""


class ResourcesSpec(ApiModel):
    """Per-stage scheduling; `defaults` applies to every stage and each stage's block overrides it field by field."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = tuple(
        CelRule(
            f"!has(self.{stage}) || !has(self.{stage}.nodes) || self.{stage}.nodes == 1",
            "nodes > 1 applies only to the train stage",
            f".{stage}.nodes",
        )
        for stage in ("defaults", "dataset", "merge", "convert", "evaluate", "publish")
    )

    defaults: StageResources = Field(default_factory=StageResources)
    """Applied to every stage."""
    dataset: StageResources | None = None
    """The dataset stage."""
    train: StageResources | None = None
    """The train stage (defaults to one GPU on a cluster)."""
    merge: StageResources | None = None
    """The merge stage."""
    convert: StageResources | None = None
    """The convert stage."""
    evaluate: StageResources | None = None
    """The evaluate stage."""
    publish: StageResources | None = None
    """The publish stage."""


class FineTuneRunSpec(ApiModel):
    """A fine-tuning run: base model + dataset → QLoRA adapter → merged model → GGUF files gated in llama.cpp."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = EVAL_LOSS_GATE_RULES

    suspend: bool = False
    """Stop creating Jobs and suspend the running one (training checkpoints first); false resumes."""
    base_model: BaseModelSpec = Field(default_factory=BaseModelSpec)
    """The model to fine-tune."""
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    """The training data."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Training method and hyper-parameters."""
    merge: MergeSpec = Field(default_factory=MergeSpec)
    """Merging the adapter."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """GGUF export."""
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    """The llama.cpp gate."""
    publish: PublishSpec = Field(default_factory=PublishSpec)
    """Publishing the gated GGUFs: OCI artifact, Ollama Modelfile, Hugging Face folder (none by default)."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Object storage for checkpoints and artifacts."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Scheduling and resources per stage."""
    notify: NotifySpec = Field(default_factory=NotifySpec)
    """Webhooks told about the run's transitions (README: Notifications)."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Metrics to MLflow and TensorBoard besides status.progress; never part of a key (README: Lineage and tracking)."""
