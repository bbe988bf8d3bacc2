"""SeedEdit alignment: weak-generator edit pairs, filtering, editor training, rounds (see ../shared/DESIGN.md)."""
