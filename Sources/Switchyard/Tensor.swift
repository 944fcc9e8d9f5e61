import Foundation
import OpenCLHost

/// A dense row-major tensor: a shape, a storage type, and its storage on one backend.
/// Ops return new tensors and never change their inputs; only `ComputeBackend.write` changes a
/// tensor's elements in place (loading weights into a stacked tensor), and every view of the
/// storage (`reshaped`, a guarded copy) sees the change, on either backend.
public final class Tensor: @unchecked Sendable, CustomStringConvertible {
    /// Extents, outermost first (row-major).
    public let shape: [Int]
    /// The storage type of the elements.
    public let dtype: DType
    /// The elements (a snapshot of the host values on the reference backend).
    var storage: Storage { box.storage }
    /// Shared by every view of the same storage.
    let box: StorageBox

    /// Where the elements live.
    enum Storage: @unchecked Sendable {
        /// Host memory of the reference backend: floats already rounded to `dtype`, or Int32s.
        case host(HostValues)
        /// An OpenCL buffer (possibly longer than the tensor, e.g. with a sentinel tail).
        case device(Buffer)
    }

    /// Host-side element values.
    enum HostValues: Sendable {
        case floats([Float])
        case ints([Int32])
        /// Raw bytes of a `u8` tensor.
        case bytes([UInt8])
    }

    /// Keeps a pooled device buffer leased while any tensor viewing it is alive.
    let lease: AnyObject?

    /// Routing flags this tensor's values depend on: reading the tensor (`floats`, `ints`,
    /// `bytes`) reads them too, after the values, and throws if one is raised (NaN or infinite
    /// router logits, an expert id out of range). So ops enqueue without waiting and a wrong
    /// output never reaches the caller unannounced.
    let guards: [Tensor]

    init(shape: [Int], dtype: DType, storage: Storage, lease: AnyObject? = nil, guards: [Tensor] = []) {
        self.shape = shape
        self.dtype = dtype
        self.box = StorageBox(storage)
        self.lease = lease
        self.guards = guards
    }

    /// A view of `box` (same elements, another shape or more guards).
    private init(shape: [Int], dtype: DType, box: StorageBox, lease: AnyObject?, guards: [Tensor]) {
        self.shape = shape
        self.dtype = dtype
        self.box = box
        self.lease = lease
        self.guards = guards
    }

    /// The same tensor, also guarded by `flags` (see `guards`).
    func guarded(by flags: [Tensor]) -> Tensor {
        if flags.isEmpty { return self }
        var all = guards
        for f in flags where !all.contains(where: { $0 === f }) { all.append(f) }
        return Tensor(shape: shape, dtype: dtype, box: box, lease: lease, guards: all)
    }

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }

    /// Bytes the elements occupy.
    public var byteCount: Int { count * dtype.size }

    public var description: String { "Tensor(\(shape), \(dtype))" }

    /// Whether both tensors live on the same backend storage (one OpenCL context, or host memory).
    func sameBackend(as other: Tensor) -> Bool {
        switch (storage, other.storage) {
        case (.host, .host): true
        case (.device(let a), .device(let b)): a.context === b.context
        default: false
        }
    }

    var buffer: Buffer? {
        if case .device(let buffer) = storage { return buffer }
        return nil
    }
}

/// A tensor's storage, shared by its views. The device case never changes (writes go into the
/// buffer); the reference backend's host values change under the lock.
final class StorageBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Tensor.Storage

    init(_ value: Tensor.Storage) {
        self.value = value
    }

    var storage: Tensor.Storage {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    /// Runs `body` on the host values in place (no copy unless a snapshot of them is alive).
    func mutateHost<T>(_ body: (inout Tensor.HostValues) throws -> T) throws -> T? {
        lock.lock()
        defer { lock.unlock() }
        guard case .host(var values) = value else { return nil }
        value = .host(.ints([]))  // drop the enum's reference so `values` is uniquely held
        defer { value = .host(values) }
        return try body(&values)
    }
}

extension Tensor {
    /// The largest byte count of one tensor (2^48: above any device's memory, far below what
    /// overflows the size arithmetic of the kernels' launches).
    public static let maxBytes = 1 << 48

    /// The element count of `shape` with checked arithmetic: an error naming `argument` for a
    /// negative extent or a size past `maxBytes`, never a trap.
    public static func checkedCount(_ shape: [Int], dtype: DType, _ argument: String) throws -> Int {
        if let bad = shape.first(where: { $0 < 0 }) {
            throw SwitchyardError.outOfRange(argument: "\(argument) extent", value: bad, range: "0...")
        }
        var count = 1
        for extent in shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: extent)
            guard !overflow, product <= maxBytes / dtype.size else {
                throw SwitchyardError.shape(
                    argument: argument, expected: "at most \(maxBytes) bytes of \(dtype)", actual: shape)
            }
            count = product
        }
        return count
    }

    /// The same storage seen with another shape of the same element count.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        guard (try? Tensor.checkedCount(newShape, dtype: dtype, "reshape")) == count else {
            throw SwitchyardError.shape(argument: "reshape to \(newShape)", expected: "\(count) elements", actual: shape)
        }
        return Tensor(shape: newShape, dtype: dtype, box: box, lease: lease, guards: guards)
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
