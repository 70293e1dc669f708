"""Sample data for SIS Sync: seeded, synthetic OneRoster 1.1 districts (no real people)."""
