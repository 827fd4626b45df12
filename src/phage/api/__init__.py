"""The HTTP API's bodies, shared by the coordinator (which serves them) and the SDK (which parses them)."""
