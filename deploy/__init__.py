"""The `smartcity` command line, the local stack, docker compose and broker ACLs."""
