// tests for archive_unpack
