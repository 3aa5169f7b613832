"""Serving: mixed-task batched prediction (`Predictor`) and, over it, the HTTP server."""
