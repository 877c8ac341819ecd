SELECT * FROM (VALUES ('*', 'system:serviceaccount:pomerium:pomerium-authorize')) AS t(cluster, username)
