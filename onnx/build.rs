//! Generates the ONNX protobuf types from the vendored official `onnx.proto` with prost. protox is a
//! pure-Rust protobuf compiler, so no `protoc` has to be installed.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"]).expect("proto/onnx.proto must compile");
    prost_build::Config::new()
        .compile_fds(descriptors)
        .expect("prost must generate Rust types from proto/onnx.proto");
}
