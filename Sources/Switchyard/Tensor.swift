import OpenCLHost

/// A dense row-major tensor: a shape, a storage type, and its storage on one backend.
/// Tensors are immutable handles; ops return new tensors.
public final class Tensor: @unchecked Sendable, CustomStringConvertible {
    public let shape: [Int]
    public let dtype: DType
    public let storage: Storage

    /// Where the elements live.
    public enum Storage: @unchecked Sendable {
        /// Host memory of the reference backend: floats already rounded to `dtype`, or Int32s.
        case host(HostValues)
        /// An OpenCL buffer (possibly longer than the tensor, e.g. with a sentinel tail).
        case device(Buffer)
    }

    /// Host-side element values.
    public enum HostValues: Sendable {
        case floats([Float])
        case ints([Int32])
    }

    /// Keeps a pooled device buffer leased while any tensor viewing it is alive.
    let lease: AnyObject?

    init(shape: [Int], dtype: DType, storage: Storage, lease: AnyObject? = nil) {
        self.shape = shape
        self.dtype = dtype
        self.storage = storage
        self.lease = lease
    }

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }

    /// Bytes the elements occupy.
    public var byteCount: Int { count * dtype.size }

    public var description: String { "Tensor(\(shape), \(dtype))" }

    var buffer: Buffer? {
        if case .device(let buffer) = storage { return buffer }
        return nil
    }
}

extension Tensor {
    /// The same storage seen with another shape of the same element count.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        guard newShape.allSatisfy({ $0 >= 0 }), newShape.reduce(1, *) == count else {
            throw SwitchyardError.shape(argument: "reshape to \(newShape)", expected: "\(count) elements", actual: shape)
        }
        return Tensor(shape: newShape, dtype: dtype, storage: storage, lease: lease)
    }

    /// Checks the tensor has rank `rank`, returning its shape.
    func expectRank(_ rank: Int, _ argument: String, _ pattern: String) throws -> [Int] {
        guard shape.count == rank else {
            throw SwitchyardError.shape(argument: argument, expected: pattern, actual: shape)
        }
        return shape
    }

    func expectDType(_ allowed: [DType], _ argument: String) throws {
        guard allowed.contains(dtype) else {
            throw SwitchyardError.dtype(
                argument: argument, expected: allowed.map(\.rawValue).joined(separator: " or "), actual: dtype)
        }
    }
}
