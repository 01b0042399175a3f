"""privsem bench: baselines, micro-benchmarks and the analytic communication model."""
