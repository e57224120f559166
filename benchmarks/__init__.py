"""Benchmarks of neva_kernels and neva_model against the implementations a user would otherwise pick."""
