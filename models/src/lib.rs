//! ftu architectures. Layer types that train in Candle and export to ONNX land here (issue 3).
