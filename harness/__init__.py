"""Compress CNNs, deploy them to real inference backends, measure accuracy and latency honestly.

The Python API: ``harness.config.SweepConfig`` + ``harness.sweep.run_sweep`` run a sweep;
``harness.report.publish`` rebuilds tables; ``harness.bench.bench_onnx`` times an ONNX file;
``harness.inspection.inspect_model`` counts MACs, params and size. Importing this package imports no
inference runtime.
"""
__version__ = "0.1.0"
