"""Who runs the relevance pass: the NumPy walk (reference, float32/float64) or one compiled onnxruntime graph."""
