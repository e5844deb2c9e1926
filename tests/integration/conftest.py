"""Integration fixtures: the session's Triton lives in tests/conftest.py (e2e meshes share it too)."""
