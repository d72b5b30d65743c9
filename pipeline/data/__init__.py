"""What the stages pass between them: trajectory records, task sources, segments, balance, snapshots, SFT rows.

Pure data: nothing here loads a model or plays an episode (SPEC 4, 5)."""
