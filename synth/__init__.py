"""``ztaudit generate``: realistic synthetic Kubernetes audit, Pomerium and Okta logs with labelled incidents.

A tool, not a stage of the pipeline: it imports only :mod:`ztaudit.core`. Modules, in the order data
flows:

* :mod:`.clock`: µs instants and the three timestamp formats; stable ids from the seed.
* :mod:`.world`: clusters, nodes, workloads and pods, teams and people.
* :mod:`.events`: line builders (audit Event from precomputed fragments, Pomerium, Okta).
* :mod:`.traffic`: the machines' healthy background (control plane, kubelets, workloads), hour by hour.
* :mod:`.people`: people through Pomerium and CI, hour by hour.
* :mod:`.incident_context`, :mod:`.incidents_impersonation`, :mod:`.incidents_revocation`,
  :mod:`.incidents_reach`, :mod:`.incidents_credentials`: labelled incidents and near-misses per
  detector id; :mod:`.incidents` plans them.
* :mod:`.revocation_truth`: the expected status of every revocation, judged on the lines written.
* :mod:`.engine`: the main loop, day files, ``labels.jsonl``, ``revocations.jsonl``, ``manifest.json``,
  ``ztaudit.toml``.
"""
