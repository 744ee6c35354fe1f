"""The read-only web view of runs: pages rendered on the server from a run's status, its store and its events.

`kubetune ui` serves it for the runs under .kubetune/; the operator serves it for the FineTuneRuns of its cluster
(`KUBETUNE_WEB_PORT`). Both feed the same pages through a `RunSource` (model.py).
"""
