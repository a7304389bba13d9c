"""The sans-I/O engine: scripts, planning, leases, caches, and the flows
the clients drive."""
