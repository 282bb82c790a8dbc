"""Benchmarks and local dev servers (embedded broker, Redis): never imported by production code."""
