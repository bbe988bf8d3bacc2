"""ByteEdit feedback learning: PeFL, the adversarial stage and progressive 20 -> 8 acceleration."""
