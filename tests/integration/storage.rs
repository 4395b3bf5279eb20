// tests for storage
