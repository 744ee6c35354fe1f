"""The Job builder: one stage of a run → its ConfigMap (the resolved run.json) and batch/v1 Job. Pure.

Same inputs, same manifests: the names come from the planner (`CreateJob.name`), so creating them again after an
operator restart hits "already exists" instead of starting a second Job for the stage.

Multi-node training (`resources.train.nodes` M > 1) follows the Indexed Job + headless Service pattern (as JobSet
and the PyTorchJob operator do): M pods with completion indexes 0..M-1, each reachable as `<job>-<index>.<service>`,
each running `NPROC_PER_NODE` ranks (its GPUs) that meet at the rendezvous on pod 0 (`MASTER_ADDR:MASTER_PORT`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api import types as t
from kubetune.api.tracking import MLFLOW_CREDENTIAL_KEYS
from kubetune.api.validate import FineTuneRun
from kubetune.operator import labels
from kubetune.operator.runstore import credentials_secret, resolve_store
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob, job_name
from kubetune.runconfig import RunConfig
from kubetune.sources import PVC_ROOT_ENV, PVC_SCHEME, SOURCES, Sources, pvc_claim
from kubetune.stages import KEY_PREFIX_LENGTH, StageRef

CONFIG_DIR = "/etc/kubetune"
RUN_JSON = "run.json"
# The API server refuses a ConfigMap whose keys and values come to more than 1 MiB.
CONFIG_MAP_MAX_BYTES = 1024 * 1024
SCRATCH = "/scratch"
TERMINATION_LOG = "/dev/termination-log"  # the container's terminationMessagePath, also told to the job by env
EXIT_CONFIG_ERROR = 2  # jobs/runtime.py: bad configuration or input, retrying cannot help
JOB_UID = 65532  # "nonroot" in distroless-style images
DEFAULT_SHM = "8Gi"
SOURCES_RESOURCES = {"cpu": "250m", "memory": "512Mi"}  # the sources Job lists objects and hashes files
# The emptyDir sizeLimit of /scratch when the run does not set resources.<stage>.scratchSize: room for the stage's
# inputs, outputs and caches with a 135M-8B model (train: base model + checkpoints; convert: f16 GGUF + quants).
DEFAULT_SCRATCH = {"sources": "1Gi", "dataset": "10Gi", "train": "100Gi", "merge": "100Gi", "convert": "150Gi",
                   "evaluate": "50Gi", "publish": "50Gi"}
# Registry login env of the publish job (jobs/publish_oci.py) → key in spec.publish.oci.credentialsSecret.
REGISTRY_CREDENTIAL_KEYS = {"KUBETUNE_REGISTRY_DOCKERCONFIG": ".dockerconfigjson",
                            "KUBETUNE_REGISTRY_USERNAME": "username", "KUBETUNE_REGISTRY_PASSWORD": "password"}
HUB_SOURCES_SCRATCH = "100Gi"  # as train's: the model files of an hf:// model up to 8B
# A pvc:// base model's or dataset's claim is mounted at <PVC_ROOT>/<claim> in the Jobs that read it (the sources
# Job digests it).
PVC_ROOT = "/mnt/kubetune-pvc"
MODEL_READERS = (SOURCES, "dataset", "train", "merge")
DATASET_READERS = (SOURCES, "dataset")
CLAIM_NAME_MAX = 253
IMAGE_ENV = "KUBETUNE_IMAGE"  # the job image, which each output's lineage.json names (jobs/lineage.py)
GRACE_SECONDS = {"train": 300}  # long enough to save a checkpoint after SIGTERM
DEFAULT_GRACE_SECONDS = 60
GPU_RESOURCE = "nvidia.com/gpu"
RENDEZVOUS_PORT = 29500  # torchrun's default master port
# Set on every pod of an Indexed Job by the Job controller: the pod's index, used as its node rank.
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

Manifest = dict[str, Any]


class JobSpecError(ValueError):
    """The run asks for something no Job can express (the run fails with this message)."""


def config_map_name(job_name: str) -> str:
    return f"{job_name}-run"


def effective_resources(resources: t.ResourcesSpec, stage: str) -> t.StageResources:
    """`resources.defaults` overridden field by field by the stage's own block (the sources Job: by small requests,
    no GPU and one node, since it only lists and hashes)."""
    merged = resources.defaults.model_dump(exclude_none=True)
    if stage == SOURCES:
        merged = {k: v for k, v in merged.items() if k not in ("gpus", "nodes", "shm_size")} | SOURCES_RESOURCES
        return t.StageResources.model_validate(merged)
    block: t.StageResources | None = getattr(resources, stage)
    if block is not None:
        merged.update(block.model_dump(exclude_none=True))
    return t.StageResources.model_validate(merged)


def mounted_claims(spec: t.FineTuneRunSpec, stage: str) -> list[str]:
    """The PersistentVolumeClaims to mount into `stage`: a pvc:// base model's, a pvc:// dataset's (one claim
    holding both is mounted once)."""
    claims: list[str] = []
    for field, uri, readers in (("spec.baseModel.uri", spec.base_model.uri, MODEL_READERS),
                                ("spec.dataset.uri", spec.dataset.uri, DATASET_READERS)):
        if not uri.startswith(PVC_SCHEME) or stage not in readers:
            continue
        claim, _ = pvc_claim(uri)
        if len(claim) > CLAIM_NAME_MAX:
            raise JobSpecError(f"{field}: the claim name {claim[:40]}… is longer than {CLAIM_NAME_MAX} characters, "
                               "which no PersistentVolumeClaim has")
        if claim not in claims:
            claims.append(claim)
    return claims


def _default_scratch(spec: t.FineTuneRunSpec, stage: str) -> str:
    """An hf:// model is downloaded by the sources Job (once, into the run's store: model_snapshot.py)."""
    if stage == SOURCES and spec.base_model.uri.startswith("hf://"):
        return HUB_SOURCES_SCRATCH
    return DEFAULT_SCRATCH[stage]


def gpu_count(spec: t.FineTuneRunSpec, stage: str, settings: OperatorSettings) -> int:
    """Train gets the operator's default (one GPU) unless the spec says otherwise or trains on CPU; the other
    stages get GPUs only when asked."""
    asked = effective_resources(spec.resources, stage).gpus
    if asked is not None:
        return asked
    if stage == "train" and spec.training.device != "cpu":
        return settings.train_gpus
    return 0


def node_count(resources: t.StageResources) -> int:
    return resources.nodes or 1


def rendezvous_service_name(run: FineTuneRun, action: CreateJob) -> str:
    """One Service per stage and input key, shared by its attempts (only one of them runs at a time); each attempt's
    pods have their own hostnames, so an old attempt's terminating pods are never mistaken for the new ones."""
    return job_name(run.name, action.stage, action.ref.key, 1)


def build(
    run: FineTuneRun, action: CreateJob, settings: OperatorSettings, upstream: Mapping[str, StageRef],
    sources: Sources | None = None,
) -> list[Manifest]:
    """The objects to create, in order, for `action.stage` (a stage, or the `sources` step that resolves what they
    read): its ConfigMap, the rendezvous Service when training spans several nodes, and the Job (last). `upstream`
    holds the refs of the stages before it, `sources` what their keys were computed from."""
    stage = action.stage
    if stage not in (SOURCES, *t.STAGES):
        raise JobSpecError(f"unknown stage {stage!r}")
    resources = effective_resources(run.spec.resources, stage)
    earlier = t.STAGES[: t.STAGES.index(stage)] if stage in t.STAGES else ()
    stages = {s: upstream[s] for s in earlier if s in upstream}
    stages[stage] = action.ref
    config = RunConfig(name=run.name, namespace=run.namespace, uid=run.uid, spec=run.spec,
                       store=resolve_store(run.spec.storage, settings), stages=stages, sources=sources)
    # Compact: the ConfigMap holds as much of a spec as the API server stores (indented with \u escapes, a spec of
    # 300 KB of non-ASCII text came to more than the 1 MiB a ConfigMap holds).
    run_json = config.dumps(compact=True)
    size = len(RUN_JSON) + len(run_json.encode())
    if size > CONFIG_MAP_MAX_BYTES:
        raise JobSpecError(
            f"the run's config for stage {stage} is {size:,} bytes, over the {CONFIG_MAP_MAX_BYTES:,} a ConfigMap "
            "holds: shorten spec.evaluate.prompts, spec.training.evalPrompts or spec.evaluate.referenceText")
    meta_labels = _labels(run, action)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(run, config_map_name(action.name), meta_labels, action),
        "data": {RUN_JSON: run_json},
    }
    job = _job(run, action, settings, resources, meta_labels)
    if node_count(resources) == 1:
        return [config_map, job]
    return [config_map, _rendezvous_service(run, action, meta_labels), job]


def _rendezvous_service(run: FineTuneRun, action: CreateJob, meta_labels: Mapping[str, str]) -> Manifest:
    """Headless: no virtual IP, only per-pod DNS records, published before the pods are ready so that ranks can
    reach pod 0 while it is still starting."""
    selector = {key: meta_labels[key] for key in (labels.RUN, labels.STAGE, labels.KEY)}
    shared_labels = {key: value for key, value in meta_labels.items() if key != labels.ATTEMPT}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(run, rendezvous_service_name(run, action), shared_labels, action),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }


def _labels(run: FineTuneRun, action: CreateJob) -> dict[str, str]:
    return {
        labels.RUN: run.name,
        labels.STAGE: action.stage,
        labels.KEY: action.ref.key[:KEY_PREFIX_LENGTH],
        labels.ATTEMPT: str(action.attempt),
        "app.kubernetes.io/name": labels.APP_NAME,
        "app.kubernetes.io/instance": run.name,
        "app.kubernetes.io/component": action.stage,
        "app.kubernetes.io/managed-by": labels.MANAGED_BY,
        "app.kubernetes.io/part-of": labels.APP_NAME,
    }


def _metadata(run: FineTuneRun, name: str, meta_labels: Mapping[str, str], action: CreateJob) -> Manifest:
    return {
        "name": name,
        "namespace": run.namespace,
        "labels": dict(meta_labels),
        "annotations": {labels.INPUT_KEY: action.ref.key, labels.PREFIX: action.ref.prefix},
        "ownerReferences": [{
            "apiVersion": t.API_VERSION,
            "kind": t.KIND,
            "name": run.name,
            "uid": run.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }],
    }


def _job(
    run: FineTuneRun, action: CreateJob, settings: OperatorSettings, resources: t.StageResources,
    meta_labels: Mapping[str, str],
) -> Manifest:
    stage = action.stage
    metadata = _metadata(run, action.name, meta_labels, action)
    queue = resources.queue_name or settings.queue_name
    if queue:
        metadata["labels"][labels.KUEUE_QUEUE] = queue
    nodes = node_count(resources)
    backoff_limit = resources.backoff_limit if resources.backoff_limit is not None else settings.backoff_limit
    spec: Manifest = {
        # Kueue admits a queued Job by unsuspending it; without a queue the Job starts at once.
        "suspend": bool(queue),
        # A rank that dies takes its peers down with it: one incident fails up to every pod of a multi-node Job.
        "backoffLimit": backoff_limit * nodes,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": stage, "operator": "In", "values": [EXIT_CONFIG_ERROR]}},
            # Preemption, eviction, node drain: not the job's fault, retried without counting.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "template": {
            "metadata": {"labels": dict(meta_labels), "annotations": {labels.INPUT_KEY: action.ref.key}},
            "spec": _pod_spec(run, action, settings, resources),
        },
    }
    if resources.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = resources.active_deadline_seconds
    if nodes > 1:
        spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes})
        spec["template"]["spec"]["subdomain"] = rendezvous_service_name(run, action)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def _pod_spec(run: FineTuneRun, action: CreateJob, settings: OperatorSettings, resources: t.StageResources) -> Manifest:
    stage = action.stage
    volumes: list[Manifest] = [
        {"name": "run-config", "configMap": {"name": config_map_name(action.name),
                                             "items": [{"key": RUN_JSON, "path": RUN_JSON}]}},
        # A limit the kubelet enforces (it evicts the pod): a runaway stage cannot fill its node's disk.
        {"name": "scratch", "emptyDir": {"sizeLimit": resources.scratch_size or _default_scratch(run.spec, stage)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[Manifest] = [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    shm = resources.shm_size or (DEFAULT_SHM if stage == "train" else None)
    if shm:
        # PyTorch data loaders and NCCL share tensors through /dev/shm; the container default is 64Mi.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    claims = mounted_claims(run.spec, stage)
    for index, claim in enumerate(claims):
        # The whole claim, read-only twice over (a subPath the kubelet would create in a read-only claim cannot be).
        volumes.append({"name": f"claim-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"claim-{index}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    container: Manifest = {
        "name": stage,
        "image": resources.image or settings.job_image,
        "imagePullPolicy": settings.job_image_pull_policy,
        "command": [*settings.job_command, stage, "--run", f"{CONFIG_DIR}/{RUN_JSON}"],
        "env": _env(run, settings) + _rank_env(run, action, settings, resources) + _tracking_env(run, stage)
        + ([{"name": PVC_ROOT_ENV, "value": PVC_ROOT}] if claims else [])
        + [{"name": IMAGE_ENV, "value": resources.image or settings.job_image}],
        "resources": _container_resources(run.spec, stage, settings, resources),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: Manifest = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.job_service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS.get(stage, DEFAULT_GRACE_SECONDS),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": JOB_UID,
            "runAsGroup": JOB_UID,
            "fsGroup": JOB_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    node_selector = {**settings.node_selector, **(resources.node_selector or {})}
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = resources.tolerations if resources.tolerations is not None else list(settings.tolerations)
    if tolerations:
        pod["tolerations"] = [tol.to_manifest() for tol in tolerations]
    priority = resources.priority_class_name or settings.priority_class_name
    if priority:
        pod["priorityClassName"] = priority
    return pod


def _env(run: FineTuneRun, settings: OperatorSettings) -> list[Manifest]:
    env: list[Manifest] = [
        {"name": "KUBETUNE_WORKDIR", "value": f"{SCRATCH}/work"},
        {"name": "HOME", "value": SCRATCH},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH}/.cache"},
        {"name": "HF_HOME", "value": f"{SCRATCH}/.cache/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # Only here does a job write a termination message: run locally it must not touch the host's file.
        {"name": "KUBETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
    ]
    if not run.spec.base_model.uri.startswith("hf://") and not run.spec.dataset.uri.startswith("hf://"):
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})  # nothing may come from a hub at run time
    secret = credentials_secret(run.spec.storage, settings)
    if secret:
        for name, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                               ("AWS_SESSION_TOKEN", True)):
            ref: Manifest = {"name": secret, "key": name}
            if optional:
                ref["optional"] = True
            env.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
    token = run.spec.base_model.token_secret
    if token is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    oci = run.spec.publish.oci
    if oci is not None and oci.credentials_secret:
        # Either Secret type: a docker config or username/password keys; the publish job reads whichever is set.
        for name, key in REGISTRY_CREDENTIAL_KEYS.items():
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": oci.credentials_secret, "key": key,
                                                                     "optional": True}}})
    return env


def _rank_env(
    run: FineTuneRun, action: CreateJob, settings: OperatorSettings, resources: t.StageResources
) -> list[Manifest]:
    """How many training ranks this pod runs (one per GPU) and, across nodes, where they meet: the torchrun-style
    variables the train job reads (jobs/launch.py)."""
    if action.stage != "train":
        return []
    env: list[Manifest] = [
        {"name": "NPROC_PER_NODE", "value": str(max(1, gpu_count(run.spec, action.stage, settings)))},
    ]
    nodes = node_count(resources)
    if nodes > 1:
        env += [
            {"name": "NNODES", "value": str(nodes)},
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            {"name": "MASTER_ADDR", "value": f"{action.name}-0.{rendezvous_service_name(run, action)}"},
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        ]
    return env


def _tracking_env(run: FineTuneRun, stage: str) -> list[Manifest]:
    """The MLflow credentials of spec.tracking.mlflow, for the train stage only (the one that logs to it); each key
    is optional: a token, or a username and password."""
    mlflow = run.spec.tracking.mlflow
    if stage != "train" or mlflow is None or mlflow.credentials_secret is None:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": mlflow.credentials_secret.name, "key": key,
                                                             "optional": True}}}
            for name, key in MLFLOW_CREDENTIAL_KEYS.items()]


def _container_resources(
    spec: t.FineTuneRunSpec, stage: str, settings: OperatorSettings, resources: t.StageResources
) -> Manifest:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = resources.cpu
    if resources.memory:
        # Limit = request: a training job that outgrows its memory should fail loudly, not squeeze its node.
        requests["memory"] = limits["memory"] = resources.memory
    gpus = gpu_count(spec, stage, settings)
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out
