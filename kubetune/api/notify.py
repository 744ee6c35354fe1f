"""`spec.notify` (webhooks told about a run's transitions) and `status.notifications` (what was sent).

The webhook's URL is a secret (a Slack incoming-webhook URL is its own credential), so the spec only names a key in a
Secret; the operator reads it when it sends, `kubetune run` from the environment or a folder (README: Notifications).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.base import ApiModel

# The same patterns as types.SecretKeyRef (which this module cannot import: types imports it).
_SECRET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECRET_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"

NotifyEvent = Literal["RunStarted", "StageSucceeded", "StageFailed", "GateFailed", "RunSucceeded", "RunFailed"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = (
    "RunStarted", "StageSucceeded", "StageFailed", "GateFailed", "RunSucceeded", "RunFailed",
)
# What a team wants by default: the run's start and end, and every failure; stage successes are opt-in (noisy).
DEFAULT_EVENTS: tuple[NotifyEvent, ...] = ("RunStarted", "StageFailed", "GateFailed", "RunSucceeded", "RunFailed")
MAX_WEBHOOKS = 8

NotificationState = Literal["Pending", "Sending", "Delivered", "Failed", "Unconfirmed"]


class WebhookUrlSecretRef(ApiModel):
    """The key of a Secret in the run's namespace that holds the webhook URL."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_SECRET_NAME)]
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=_SECRET_KEY)]
    """Key within the Secret whose value is the URL (http or https)."""


class WebhookSpec(ApiModel):
    """One receiver of the run's notifications."""

    url_secret: WebhookUrlSecretRef
    """Where the webhook URL is: never in the manifest, status, Events or logs."""
    format: Literal["json", "slack"] = "json"
    """`json`: kubetune's notification document (schema `kubetune.dev/notification`, version 1); `slack`: a
    Slack-compatible incoming-webhook body (`text` and `blocks`), also read by Mattermost and Rocket.Chat."""
    events: Annotated[list[NotifyEvent], Field(min_length=1, max_length=len(NOTIFY_EVENTS))] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS)
    )
    """Transitions to send: RunStarted, StageSucceeded, StageFailed, GateFailed (the evaluate gate, with the prompt,
    answer and expectation), RunSucceeded, RunFailed. Default: all but StageSucceeded."""
    timeout_seconds: Annotated[int, Field(ge=1, le=60)] = 10
    """Seconds one request may take before it counts as failed (and is retried)."""


class NotifySpec(ApiModel):
    """Webhooks told about the run's transitions, each at most once."""

    webhooks: Annotated[list[WebhookSpec], Field(max_length=MAX_WEBHOOKS)] = Field(default_factory=list)
    """Receivers; none by default."""


class NotificationStatus(ApiModel):
    """One transition's notification to one webhook, as the operator recorded it."""

    event: NotifyEvent
    """The transition."""
    stage: str | None = None
    """The stage it is about (none for the run as a whole)."""
    webhook: Annotated[int, Field(ge=0, lt=MAX_WEBHOOKS)]
    """Index of the webhook in spec.notify.webhooks."""
    generation: Annotated[int, Field(ge=0)] = 0
    """The spec generation of the transition."""
    time: str
    """When the transition happened (RFC 3339)."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """What happened (the Event's message)."""
    state: NotificationState = "Pending"
    """Pending (recorded with the transition, not sent yet), Sending (claimed by the operator), Delivered, Failed
    (every attempt failed, or the receiver refused it) or Unconfirmed (the operator stopped while sending it: never
    sent again, so it may or may not have arrived)."""
    attempts: Annotated[int, Field(ge=0)] = 0
    """HTTP requests made."""
    error: Annotated[str | None, Field(default=None, max_length=1024)]
    """Why it failed (the URL is never shown)."""
