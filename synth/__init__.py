"""``ztaudit generate``: realistic synthetic Kubernetes audit, Pomerium and Okta logs with labelled incidents.

Modules, in the order data flows:

* :mod:`.clock`: µs instants and the three timestamp formats; stable ids from the seed.
* :mod:`.world`: clusters, nodes, workloads and pods, teams and people.
* :mod:`.events`: line builders (audit Event from precomputed fragments, Pomerium, Okta).
* :mod:`.traffic`: the healthy background, hour by hour.
* :mod:`.incidents`: labelled incidents and near-misses per detector id.
* :mod:`.engine`: the main loop, day files, ``labels.jsonl``, ``manifest.json``, ``ztaudit.toml``.
"""

from ztaudit.synth.engine import GenerateOptions, Result, generate
from ztaudit.synth.incidents import ALL_KINDS, Label

__all__ = ["ALL_KINDS", "GenerateOptions", "Label", "Result", "generate"]
