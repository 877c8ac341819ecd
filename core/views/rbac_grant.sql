-- RBAC snapshots are stored under their source id (the lake folder is the source id, docs/design.md);
-- rbac_grant is the name reports, notebooks and detectors query.
SELECT * FROM rbac_snapshot
