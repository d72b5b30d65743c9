"""What a finished stage shows: terminal tables, the demo's summary, pictures (the sawtooth, training curves)."""
