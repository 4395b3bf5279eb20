// tests for quiesce
