"""The kubetune operator: kopf drives each FineTuneRun through its stage Jobs (`python -m kubetune.operator`)."""
