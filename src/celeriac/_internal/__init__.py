"""Small helpers shared by every layer; stdlib only, no I/O at import."""
