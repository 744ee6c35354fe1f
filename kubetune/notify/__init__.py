"""Notifications of a run's transitions to webhooks (`spec.notify`): what is said (message), how it is sent
(deliver), what is sent once (outbox: the operator's `status.notifications`) and the `kubetune run` sender (local)."""
