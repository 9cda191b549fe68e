"""collapse."""
