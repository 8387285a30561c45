"""What the benchmark entry points share: engine lab, the two serving stacks, reports, profiling."""
