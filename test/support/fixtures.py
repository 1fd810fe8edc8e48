"""Session and per-test fixtures; the control-plane issue fills these in."""
