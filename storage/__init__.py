"""Everything that touches InfluxDB: schema names, line protocol, writers, queries, bootstrap."""
