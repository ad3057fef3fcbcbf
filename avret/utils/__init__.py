"""Small shared helpers: atomic file output, seeding, progress, fingerprints."""
