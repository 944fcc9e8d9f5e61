import SwitchyardReference

/// The CPU reference behind the `ComputeBackend` protocol: each op calls its definition in
/// `SwitchyardReference` and rounds the result to the output's storage type.
public final class ReferenceBackend: ComputeBackend {
    /// The CPU reference backend (host memory, no device).
    public init() {}

    public var name: String { "reference" }

    public func tensor(_ values: [Float], shape: [Int], dtype: DType) throws -> Tensor {
        try checkHostCount(values.count, shape, "tensor values")
        guard dtype.isFloatingPoint else {
            throw SwitchyardError.dtype(argument: "tensor dtype", expected: "f32, f16 or bf16", actual: dtype)
        }
        return Tensor(shape: shape, dtype: dtype, storage: .host(.floats(dtype.round(values))))
    }

    public func tensor(_ values: [Int32], shape: [Int]) throws -> Tensor {
        try checkHostCount(values.count, shape, "tensor values")
        return Tensor(shape: shape, dtype: .i32, storage: .host(.ints(values)))
    }

    func host(_ tensor: Tensor, _ argument: String) throws -> Tensor.HostValues {
        guard case .host(let values) = tensor.storage else {
            throw SwitchyardError.backendMismatch(argument: argument, expected: name, actual: "an OpenCL device")
        }
        return values
    }

    func hostFloats(_ tensor: Tensor, _ argument: String) throws -> [Float] {
        guard case .floats(let values) = try host(tensor, argument) else {
            throw SwitchyardError.dtype(argument: argument, expected: "f32, f16 or bf16", actual: tensor.dtype)
        }
        return values
    }

    func hostInts(_ tensor: Tensor, _ argument: String) throws -> [Int32] {
        guard case .ints(let values) = try host(tensor, argument) else {
            throw SwitchyardError.dtype(argument: argument, expected: "i32", actual: tensor.dtype)
        }
        return values
    }

    func output(_ values: [Double], shape: [Int], dtype: DType) -> Tensor {
        Tensor(shape: shape, dtype: dtype, storage: .host(.floats(values.map { dtype.round(Float($0)) })))
    }

    public func floats(_ tensor: Tensor) throws -> [Float] {
        let values = try hostFloats(tensor, "tensor")
        try checkGuards(tensor)
        return values
    }

    public func ints(_ tensor: Tensor) throws -> [Int32] {
        let values = try hostInts(tensor, "tensor")
        try checkGuards(tensor)
        return values
    }
    public func synchronize() throws {}

    public func copyRows(_ t: Tensor, _ range: Range<Int>) throws -> Tensor {
        _ = try validateRowRange(t, range)
        let per = t.shape.dropFirst().reduce(1, *)
        let shape = [range.count] + t.shape.dropFirst()
        let lo = range.lowerBound * per
        let hi = range.upperBound * per
        switch try host(t, "copyRows tensor") {
        case .floats(let v): return Tensor(shape: shape, dtype: t.dtype, storage: .host(.floats(Array(v[lo..<hi]))), guards: t.guards)
        case .ints(let v): return Tensor(shape: shape, dtype: t.dtype, storage: .host(.ints(Array(v[lo..<hi]))), guards: t.guards)
        case .bytes(let v): return Tensor(shape: shape, dtype: t.dtype, storage: .host(.bytes(Array(v[lo..<hi]))), guards: t.guards)
        }
    }

    public func concatenateRows(_ parts: [Tensor]) throws -> Tensor {
        let (shape, dtype) = try validateConcatenation(parts)
        let guards = parts.flatMap(\.guards)
        if dtype == .i32 {
            return Tensor(shape: shape, dtype: dtype, storage: .host(.ints(try parts.flatMap { try hostInts($0, "part") })), guards: guards)
        }
        return Tensor(shape: shape, dtype: dtype, storage: .host(.floats(try parts.flatMap { try hostFloats($0, "part") })), guards: guards)
    }

    public var maxTensorBytes: Int { Tensor.maxBytes }

    // Host memory: the values are already here, nothing to wait for.
    public func floats(_ tensor: Tensor) async throws -> [Float] {
        let values = try hostFloats(tensor, "tensor")
        try await checkGuards(tensor)
        return values
    }

    public func ints(_ tensor: Tensor) async throws -> [Int32] {
        let values = try hostInts(tensor, "tensor")
        try await checkGuards(tensor)
        return values
    }

    public func bytes(_ tensor: Tensor) async throws -> [UInt8] {
        let values = try rawBytes(tensor)
        try await checkGuards(tensor)
        return values
    }

    public func synchronize() async throws {}

    /// The reference pads to 4 rows (its results do not depend on it).
    public var preferredBlockSize: Int { 4 }

    public func timed<T>(_ body: () throws -> T) throws -> (value: T, seconds: () throws -> Double?) {
        (try body(), { nil })
    }
}
