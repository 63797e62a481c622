"""The simulator: an offline feed of realistic ticks (the embedded default, and the benchmarks' source)."""
