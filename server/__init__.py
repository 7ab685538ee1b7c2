"""LopSo server: HTTP, signalling, auth, state and attendance (the edge around media/)."""
