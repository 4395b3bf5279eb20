// tests for prune
