"""Names the operator stamps on what it creates, and reads back when it observes."""

from __future__ import annotations

DOMAIN = "kubetune.dev"
RUN = f"{DOMAIN}/run"
STAGE = f"{DOMAIN}/stage"
KEY = f"{DOMAIN}/key"  # first 16 characters of the input key (label values are at most 63 long)
ATTEMPT = f"{DOMAIN}/attempt"
INPUT_KEY = f"{DOMAIN}/input-key"  # annotation: the full 64-character input key
PREFIX = f"{DOMAIN}/prefix"  # annotation: the stage's store prefix (where its progress.json is)
SUSPENDED = f"{DOMAIN}/suspended"  # annotation: "true" while the operator holds the Job suspended
SUPERSEDED_AT = f"{DOMAIN}/superseded-at"  # annotation: when a reconcile first saw the Job's spec replaced (RFC 3339)
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

APP_NAME = "kubetune"
MANAGED_BY = "kubetune-operator"
FIELD_MANAGER = "kubetune-operator"
