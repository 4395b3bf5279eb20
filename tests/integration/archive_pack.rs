// tests for archive_pack
