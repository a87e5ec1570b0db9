"""Benchmarks of hardened_spawner against plain DockerSpawner (see README.md)."""
