"""Admission of batch/v1 Jobs as kube-apiserver does it (pkg/apis/batch/v1/defaults.go, the Job strategy's
generated selector, pkg/apis/batch/validation ValidateJob and ValidateJobUpdate)."""

from __future__ import annotations

import copy
from typing import Any

from tests.kube import podspec
from tests.kube import validation as v

Obj = dict[str, Any]

CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID = "controller-uid"
LEGACY_JOB_NAME = "job-name"


def default_job(job: Obj, creating: bool) -> None:
    """SetDefaults_Job (batch/v1 defaults.go), then, on create, the strategy's generated selector and labels."""
    spec = job.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = spec["parallelism"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 2**31 - 1 if spec.get("backoffLimitPerIndex") is not None else 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    policy = spec.get("podFailurePolicy")
    for rule in (policy.get("rules") or []) if isinstance(policy, dict) else []:
        for pattern in rule.get("onPodConditions") or []:
            pattern.setdefault("status", "True")
    spec.setdefault("podReplacementPolicy", "Failed" if policy else "TerminatingOrFailed")
    template = spec.setdefault("template", {})
    if not isinstance(template, dict):
        return
    template_labels = (template.get("metadata") or {}).get("labels")
    if template_labels and not job["metadata"].get("labels"):
        job["metadata"]["labels"] = dict(template_labels)
    podspec.default_pod_template(template)
    if creating and not spec.get("manualSelector"):
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        for key, value in ((CONTROLLER_UID, uid), (JOB_NAME, name), (LEGACY_CONTROLLER_UID, uid),
                           (LEGACY_JOB_NAME, name)):
            labels.setdefault(key, value)
        # A selector the user wrote gets the uid too; validation then refuses it as not auto-generated.
        selector = spec.setdefault("selector", {})
        if isinstance(selector, dict):
            selector.setdefault("matchLabels", {}).setdefault(CONTROLLER_UID, uid)


def _generated_selector(job: Obj) -> list[str]:
    spec, meta = job["spec"], job["metadata"]
    if spec.get("manualSelector") or not isinstance(spec.get("selector"), dict):
        return []
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    expected = {CONTROLLER_UID: meta["uid"], JOB_NAME: meta["name"], LEGACY_CONTROLLER_UID: meta["uid"],
                LEGACY_JOB_NAME: meta["name"]}
    causes = [v.invalid(f"spec.template.metadata.labels[{key}]", labels.get(key, ""), f"must be '{value}'")
              for key, value in expected.items() if labels.get(key) != value]
    if not v.selector_matches(spec["selector"], expected):
        causes.append(v.invalid("spec.selector", spec["selector"], "`selector` not auto-generated"))
    return causes


def _pod_failure_policy(spec: Obj, path: str) -> list[str]:
    policy = spec["podFailurePolicy"]
    rules = policy.get("rules") or [] if isinstance(policy, dict) else []
    causes = [v.too_many(f"{path}.rules", len(rules), 20)] if len(rules) > 20 else []
    pod = (spec.get("template") or {}).get("spec") or {}
    names = {c.get("name") for c in [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]}
    actions = ("Count", "FailIndex", "FailJob", "Ignore")
    for index, rule in enumerate(rules):
        at = f"{path}.rules[{index}]"
        action = rule.get("action", "")
        if not action:
            causes.append(v.required(f"{at}.action", "valid values: " + str(list(actions)).replace("'", '"')))
        elif action == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
            causes.append(v.invalid(f"{at}.action", action, "requires the backoffLimitPerIndex to be set"))
        elif action not in actions:
            causes.append(v.unsupported(f"{at}.action", action, actions))
        on_exit, on_conditions = rule.get("onExitCodes"), rule.get("onPodConditions") or []
        if on_exit is not None:
            causes += _on_exit_codes(on_exit, f"{at}.onExitCodes", names)
        if len(on_conditions) > 20:
            causes.append(v.too_many(f"{at}.onPodConditions", len(on_conditions), 20))
        for number, pattern in enumerate(on_conditions):
            where = f"{at}.onPodConditions[{number}]"
            causes += v.each(f"{where}.type", pattern.get("type", ""), v.qualified_name(pattern.get("type", "")))
            if pattern.get("status") not in ("False", "True", "Unknown"):
                causes.append(v.unsupported(f"{where}.status", pattern.get("status"), ("False", "True", "Unknown")))
        if on_exit is not None and on_conditions:
            causes.append(f"{at}: Invalid value: specifying both OnExitCodes and OnPodConditions is not supported")
        if on_exit is None and not on_conditions:
            causes.append(f"{at}: Invalid value: specifying one of OnExitCodes and OnPodConditions is required")
    return causes


def _on_exit_codes(requirement: Obj, path: str, container_names: set[Any]) -> list[str]:
    causes: list[str] = []
    operator = requirement.get("operator", "")
    if not operator:
        causes.append(v.required(f"{path}.operator", 'valid values: ["In" "NotIn"]'))
    elif operator not in ("In", "NotIn"):
        causes.append(v.unsupported(f"{path}.operator", operator, ("In", "NotIn")))
    name = requirement.get("containerName")
    if name is not None and name not in container_names:
        causes.append(v.invalid(f"{path}.containerName", name,
                                "must be one of the container or initContainer names in the pod template"))
    values = requirement.get("values") or []
    if not values:
        causes.append(v.invalid(f"{path}.values", values, "at least one value is required"))
    elif len(values) > 255:
        causes.append(v.too_many(f"{path}.values", len(values), 255))
    seen: set[int] = set()
    for index, value in enumerate(values):
        if operator == "In" and value == 0:
            causes.append(v.invalid(f"{path}.values[{index}]", value, "must not be 0 for the In operator"))
        if value in seen:
            causes.append(v.duplicate(f"{path}.values[{index}]", value))
        seen.add(value)
    if values != sorted(values):
        causes.append(v.invalid(f"{path}.values", values, "must be ordered"))
    return causes


def validate_job_spec(spec: Obj) -> list[str]:
    """validateJobSpec + ValidateJobSpec: counts, completion mode, policies, the pod template, the selector."""
    causes: list[str] = []
    for field in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished",
                  "backoffLimitPerIndex", "maxFailedIndexes"):
        causes += v.nonnegative(f"spec.{field}", spec.get(field))
    indexed = spec.get("completionMode") == "Indexed"
    if spec.get("maxFailedIndexes") is not None and spec.get("backoffLimitPerIndex") is None:
        causes.append(v.required("spec.backoffLimitPerIndex", "when maxFailedIndexes is specified"))
    if spec.get("completionMode") not in ("NonIndexed", "Indexed"):
        causes.append(v.unsupported("spec.completionMode", spec.get("completionMode"), ("NonIndexed", "Indexed")))
    elif indexed:
        if spec.get("completions") is None:
            causes.append(v.required("spec.completions", "when completion mode is Indexed"))
        if (spec.get("parallelism") or 0) > 100_000:
            causes.append(v.invalid("spec.parallelism", spec["parallelism"],
                                    "must be less than or equal to 100000 when completion mode is Indexed"))
    else:
        for field in ("backoffLimitPerIndex", "maxFailedIndexes"):
            if spec.get(field) is not None:
                causes.append(v.invalid(f"spec.{field}", spec[field], "requires indexed completion mode"))
    if spec.get("podFailurePolicy") is not None:
        causes += _pod_failure_policy(spec, "spec.podFailurePolicy")
    replacement = spec.get("podReplacementPolicy")
    allowed = ("Failed",) if spec.get("podFailurePolicy") is not None else ("Failed", "TerminatingOrFailed")
    if replacement not in allowed:
        causes.append(v.unsupported("spec.podReplacementPolicy", replacement, allowed))
    causes += podspec.validate_pod_template(spec.get("template"), "spec.template")
    restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if restart in ("Always", "", None):
        causes.append(v.required("spec.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"'))
    elif restart not in ("OnFailure", "Never"):
        causes.append(v.unsupported("spec.template.spec.restartPolicy", restart, ("OnFailure", "Never")))
    elif spec.get("podFailurePolicy") is not None and restart != "Never":
        causes.append(v.invalid("spec.template.spec.restartPolicy", restart,
                                'only "Never" is supported when podFailurePolicy is specified'))
    causes += v.label_selector(spec.get("selector"), "spec.selector")
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if isinstance(spec.get("selector"), dict) and not v.selector_matches(spec["selector"], labels):
        causes.append(v.invalid("spec.template.metadata.labels", labels, "`selector` does not match template "
                                                                         "`labels`"))
    return causes


def validate_job(job: Obj) -> list[str]:
    spec = job["spec"]
    causes = _generated_selector(job) + validate_job_spec(spec)
    if spec.get("completionMode") == "Indexed" and (spec.get("completions") or 0) > 0:
        # The controller names each pod's hostname `<job>-<index>`: it must stay a DNS label.
        hostname = f"{job['metadata']['name']}-{spec['completions'] - 1}"
        if v.dns1123_label(hostname):
            causes.append(v.invalid("metadata.name", job["metadata"]["name"],
                                    f"will not able to create pod with invalid DNS label: {hostname}"))
    return causes


def _scheduling_directives_free(template: Any, other: Any) -> Any:
    """`template` with the fields a suspended, never-started Job may change replaced by `other`'s."""
    if not isinstance(template, dict) or not isinstance(other, dict):
        return template
    result = copy.deepcopy(template)
    meta, other_meta = result.setdefault("metadata", {}), other.get("metadata") or {}
    for key in ("labels", "annotations"):
        meta.pop(key, None)
        if key in other_meta:
            meta[key] = other_meta[key]
    spec, other_spec = result.setdefault("spec", {}), other.get("spec") or {}
    for key in ("nodeSelector", "tolerations", "schedulingGates"):
        spec.pop(key, None)
        if key in other_spec:
            spec[key] = other_spec[key]
    affinity = dict(spec.get("affinity") or {})
    affinity.pop("nodeAffinity", None)
    if (other_spec.get("affinity") or {}).get("nodeAffinity") is not None:
        affinity["nodeAffinity"] = other_spec["affinity"]["nodeAffinity"]
    spec.pop("affinity", None)
    if affinity:
        spec["affinity"] = affinity
    return result


def validate_job_update(job: Obj, old: Obj) -> list[str]:
    """ValidateJobSpecUpdate: the template is immutable, except the scheduling directives, labels and annotations
    of a Job that is suspended and never started (status.startTime unset); selector, completionMode,
    podFailurePolicy, backoffLimitPerIndex, managedBy and successPolicy never change; completions only in
    tandem with parallelism for Indexed Jobs (elastic Indexed Jobs)."""
    spec, old_spec = job["spec"], old.get("spec") or {}
    causes = validate_job_spec(spec)
    if spec.get("completionMode") == "Indexed" and spec.get("completions") != old_spec.get("completions"):
        if spec.get("completions") is not None and spec.get("completions") != spec.get("parallelism"):
            causes.append(v.invalid("spec.completions", spec["completions"],
                                    "can only be modified in tandem with spec.parallelism"))
    else:
        causes += v.immutable("spec.completions", spec.get("completions"), old_spec.get("completions"))
    causes += v.immutable("spec.selector", spec.get("selector"), old_spec.get("selector"))
    old_template = old_spec.get("template")
    if old_spec.get("suspend") and not (old.get("status") or {}).get("startTime"):
        old_template = _scheduling_directives_free(old_template, spec.get("template"))
    causes += v.immutable("spec.template", spec.get("template"), old_template)
    for field in ("completionMode", "podFailurePolicy", "backoffLimitPerIndex", "managedBy", "successPolicy"):
        causes += v.immutable(f"spec.{field}", spec.get(field), old_spec.get(field))
    return causes
