"""ens: hardware-aware neural architecture search for image restoration."""

__version__ = "0.1.0"


def _register_int8_graph() -> None:
    """INT8 latencies time the graph ``ens finalize --export onnx_int8`` ships (see profilers.int8_graphs)."""
    from profilers.int8_graphs import register_int8_graph

    def onnx_int8(model, shape, path) -> None:
        from ens.finalize.int8_graph import export_deployed_int8

        export_deployed_int8(model, shape, path)

    register_int8_graph("onnx_int8", onnx_int8)


_register_int8_graph()
