"""Client-side tools: the load generator behind `inferd bench`.

They talk to any server of the V2 protocol (inferd, Triton, KServe runtimes) through tritonclient's asyncio
clients, so nothing here imports the server.
"""

from .bench import BenchError, BenchOptions, add_bench_parser, benchmark, run_bench

__all__ = ["BenchError", "BenchOptions", "add_bench_parser", "benchmark", "run_bench"]
