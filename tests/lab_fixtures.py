"""Lab fixtures: simulated devices started in-process for contract and integration tests."""
