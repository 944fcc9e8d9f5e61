import Foundation
import SwitchyardReference

/// Tensors as raw bytes: a tensor made from its elements' stored bytes, a region of one written
/// in place from bytes, or a region read back as bytes. No conversion: the bytes are the
/// storage type's bit patterns, little-endian. One move of `byteCount` bytes, no arithmetic.
public struct TensorBytes: Hashable, Sendable {
    public enum Access: String, Sendable, Hashable {
        /// `tensor(bytes:shape:dtype:)`: the whole tensor.
        case create
        /// `write(_:into:atElement:)`: `count` elements from `offset`.
        case write
        /// `bytes(_:elements:)`: `count` elements from `offset`.
        case read
    }

    public var access: Access
    /// Elements of the whole tensor.
    public var tensorCount: Int
    /// First element moved and how many.
    public var offset: Int
    public var count: Int
    public var dtype: DType

    public init(access: Access, tensorCount: Int, offset: Int, count: Int, dtype: DType) {
        self.access = access
        self.tensorCount = tensorCount
        self.offset = offset
        self.count = count
        self.dtype = dtype
    }

    /// A tensor of `shape` and `dtype` from `byteCount` bytes: sizes checked, and the byte count
    /// must be the shape's exactly.
    init(creating shape: [Int], dtype: DType, byteCount: Int) throws {
        let count = try Tensor.checkedCount(shape, dtype: dtype, "tensor bytes shape")
        guard byteCount == count * dtype.size else {
            throw SwitchyardError.hostData(argument: "tensor bytes", expected: count * dtype.size, actual: byteCount)
        }
        self.init(access: .create, tensorCount: count, offset: 0, count: count, dtype: dtype)
    }

    /// `byteCount` bytes written into `tensor` from element `offset`: a whole number of
    /// elements, inside the tensor.
    init(writing tensor: Tensor, byteCount: Int, offset: Int) throws {
        let size = tensor.dtype.size
        let total = tensor.count
        guard offset >= 0 && offset <= total else {
            throw SwitchyardError.outOfRange(argument: "write offset", value: offset, range: "0...\(total) (elements of \(tensor))")
        }
        guard byteCount % size == 0 else {
            throw SwitchyardError.outOfRange(
                argument: "write bytes (whole \(tensor.dtype) elements of \(size) bytes)", value: byteCount,
                range: "multiples of \(size)")
        }
        guard byteCount / size <= total - offset else {
            throw SwitchyardError.hostData(
                argument: "write at element \(offset) of \(tensor): bytes", expected: (total - offset) * size, actual: byteCount)
        }
        self.init(access: .write, tensorCount: total, offset: offset, count: byteCount / size, dtype: tensor.dtype)
    }

    /// The elements `elements` of `tensor`, read as bytes.
    init(reading tensor: Tensor, elements: Range<Int>) throws {
        guard elements.lowerBound >= 0 && elements.upperBound <= tensor.count else {
            throw SwitchyardError.outOfRange(
                argument: "bytes elements (end)", value: elements.lowerBound < 0 ? elements.lowerBound : elements.upperBound,
                range: "0...\(tensor.count) (elements of \(tensor))")
        }
        self.init(access: .read, tensorCount: tensor.count, offset: elements.lowerBound, count: elements.count, dtype: tensor.dtype)
    }

    /// Byte offset of the region and its length.
    public var byteOffset: Int { offset * dtype.size }
    public var byteCount: Int { count * dtype.size }

    public var flops: Double { 0 }
    public var bytes: Double { Double(byteCount) }
}

extension DType {
    /// How the reference stores this floating-point type (nil for i32).
    var floatStorage: Reference.FloatStorage? {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .i32, .u8: nil
        }
    }
}

extension ReferenceBackend {
    public func empty(shape: [Int], dtype: DType, label: String) throws -> Tensor {
        let count = try Tensor.checkedCount(shape, dtype: dtype, label)
        // The reference keeps 4 bytes per element in host memory: refuse what the host lacks.
        let memory = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        guard count <= memory / 2 / 4 else {
            throw SwitchyardError.shape(
                argument: label, expected: "at most \(memory / 2) bytes of host memory for the reference's 4-byte values",
                actual: shape)
        }
        if dtype == .u8 { return Tensor(shape: shape, dtype: dtype, storage: .host(.bytes(Array(repeating: 0, count: count)))) }
        if dtype == .i32 { return Tensor(shape: shape, dtype: dtype, storage: .host(.ints(Array(repeating: 0, count: count)))) }
        return Tensor(shape: shape, dtype: dtype, storage: .host(.floats(Array(repeating: 0, count: count))))
    }

    public func tensor(bytes: UnsafeRawBufferPointer, shape: [Int], dtype: DType) throws -> Tensor {
        _ = try TensorBytes(creating: shape, dtype: dtype, byteCount: bytes.count)
        if dtype == .u8 { return Tensor(shape: shape, dtype: dtype, storage: .host(.bytes(Array(bytes)))) }
        if let storage = dtype.floatStorage {
            return Tensor(shape: shape, dtype: dtype, storage: .host(.floats(Reference.decodeFloats(bytes, as: storage))))
        }
        return Tensor(shape: shape, dtype: dtype, storage: .host(.ints(Reference.decodeInts(bytes))))
    }

    public func write(_ bytes: UnsafeRawBufferPointer, into tensor: Tensor, atElement offset: Int) throws {
        _ = try host(tensor, "write tensor")
        let op = try TensorBytes(writing: tensor, byteCount: bytes.count, offset: offset)
        let region = op.offset..<(op.offset + op.count)
        try tensor.box.mutateHost { values in
            switch values {
            case .floats(var floats):
                values = .ints([])  // floats uniquely held while it changes
                floats.replaceSubrange(region, with: Reference.decodeFloats(bytes, as: tensor.dtype.floatStorage!))
                values = .floats(floats)
            case .ints(var ints):
                values = .ints([])
                ints.replaceSubrange(region, with: Reference.decodeInts(bytes))
                values = .ints(ints)
            case .bytes(var raw):
                values = .ints([])
                raw.replaceSubrange(region, with: Array(bytes))
                values = .bytes(raw)
            }
        }
    }

    public func bytes(_ tensor: Tensor) throws -> [UInt8] {
        try bytes(tensor, elements: 0..<tensor.count)
    }

    public func bytes(_ tensor: Tensor, elements: Range<Int>) throws -> [UInt8] {
        let out = try rawBytes(tensor, elements: elements)
        try checkGuards(tensor)
        return out
    }

    /// The stored bytes of `elements` of `tensor`, without checking its guards.
    func rawBytes(_ tensor: Tensor, elements: Range<Int>? = nil) throws -> [UInt8] {
        let op = try TensorBytes(reading: tensor, elements: elements ?? 0..<tensor.count)
        let region = op.offset..<(op.offset + op.count)
        switch try host(tensor, "tensor") {
        case .floats(let values): return Reference.encode(values[region], as: tensor.dtype.floatStorage!)
        case .ints(let values): return Reference.encode(values[region])
        case .bytes(let values): return Array(values[region])
        }
    }
}
