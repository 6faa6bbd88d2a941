"""The shipped demo model: a tiny CLIP trained on synthetic meters (see README.md here)."""
