import OpenCLHost

/// Raw-byte transfers: `clEnqueueWriteBuffer`/`clEnqueueReadBuffer` straight between the
/// caller's bytes and the tensor's buffer (no kernel, no host copy in between). Writes are
/// blocking, so the caller may reuse its bytes at once, and recorded like launches so device
/// timing sees them.
extension OpenCLBackend {
    public func tensor(bytes: UnsafeRawBufferPointer, shape: [Int], dtype: DType) throws -> Tensor {
        _ = try TensorBytes(creating: shape, dtype: dtype, byteCount: bytes.count)
        let t = try empty(shape: shape, dtype: dtype, label: "input")
        recordTransfer("write_bytes", try t.buffer!.upload(bytes: bytes, byteOffset: 0))
        return t
    }

    public func write(_ bytes: UnsafeRawBufferPointer, into tensor: Tensor, atElement offset: Int) throws {
        let buffer = try deviceBuffer(tensor, "write tensor")
        let op = try TensorBytes(writing: tensor, byteCount: bytes.count, offset: offset)
        recordTransfer("write_bytes", try buffer.upload(bytes: bytes, byteOffset: op.byteOffset))
    }

    public func bytes(_ tensor: Tensor) throws -> [UInt8] {
        try bytes(tensor, elements: 0..<tensor.count)
    }

    public func bytes(_ tensor: Tensor, elements: Range<Int>) throws -> [UInt8] {
        let buffer = try deviceBuffer(tensor, "tensor")
        let op = try TensorBytes(reading: tensor, elements: elements)
        var out = [UInt8](repeating: 0, count: op.byteCount)
        recordTransfer("read_bytes", try out.withUnsafeMutableBytes { try buffer.download(into: $0, byteOffset: op.byteOffset) })
        try checkGuards(tensor)
        return out
    }
}
