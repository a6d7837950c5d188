"""Ray actors: one per H3 cell, holding the live state of that cell."""
