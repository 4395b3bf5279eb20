// tests for backup
