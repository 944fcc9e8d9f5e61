import SwitchyardReference

/// The device-side flags of the token ops (gather, scatter, expand, compact): an `[4]` i32
/// tensor, zero until a kernel finds a bad input. Like the routing flags, nothing waits for
/// them: the ops' outputs carry them (`Tensor.guards`), and reading an output throws
/// `SwitchyardError.invalidValues` naming the problem. (Routing flags have 2 elements, token
/// flags 4: the length tells `ComputeBackend.check(flags:)` which layout it reads.)
enum TokenFlags {
    static let count = 4
    /// An index other than −1 outside 0..<length.
    static let outOfRange = 0
    /// A position named twice in one sequence.
    static let repeated = 1
    /// A valid index in a slot at or past the packed rows.
    static let pastRows = 2
    /// A keep-mask value other than 0 or 1.
    static let badMask = 3

    static func raise(_ f: [Int32]) throws {
        if f[outOfRange] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "token indices", detail: "an index is out of range (valid: −1 for an empty slot, or 0..<length)")
        }
        if f[repeated] != 0 {
            throw SwitchyardError.invalidValues(argument: "token indices", detail: "a position is repeated within a sequence")
        }
        if f[pastRows] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "token indices", detail: "a position sits in a slot past the packed rows (more kept tokens than rows)")
        }
        if f[badMask] != 0 {
            throw SwitchyardError.invalidValues(argument: "keep mask", detail: "a value is neither 0 nor 1")
        }
    }

    /// Host flags for the reference backend.
    static func values(_ p: TokenIndexProblems, badMask: Bool = false) -> [Int32] {
        [p.outOfRange ? 1 : 0, p.repeated ? 1 : 0, p.pastRows ? 1 : 0, badMask ? 1 : 0]
    }
}

/// The largest element count one token-op index space may have: the kernels index positions,
/// slots and rows with 32-bit integers.
let tokenIndexLimit = Int(Int32.max)

/// Whether `a · b` (extents, ≥ 0) fits the kernels' 32-bit index space, without overflowing.
func fitsTokenIndices(_ a: Int, _ b: Int) -> Bool {
    let (product, overflow) = a.multipliedReportingOverflow(by: b)
    return !overflow && product <= tokenIndexLimit
}

/// Checks a token tensor `[batch, length, width]` of a float storage type.
func validateTokenRows(_ x: Tensor, _ argument: String, pattern: String = "[batch, length, d]") throws -> (Int, Int, Int) {
    let s = try x.expectRank(3, argument, pattern)
    try x.expectDType(DType.floatingPoint, argument)
    _ = try Tensor.checkedCount(s, dtype: x.dtype, argument)
    guard fitsTokenIndices(s[0], s[1]) else {
        throw SwitchyardError.shape(argument: argument, expected: "batch × length below 2³¹", actual: s)
    }
    return (s[0], s[1], s[2])
}

/// Checks token indices `[batch, slots]` (i32) for a batch of `batch` sequences.
func validateTokenIndices(_ indices: Tensor, batch: Int, _ argument: String) throws -> Int {
    let s = try indices.expectRank(2, argument, "[\(batch), slots]")
    try indices.expectDType([.i32], argument)
    guard s[0] == batch else {
        throw SwitchyardError.shape(argument: argument, expected: "[\(batch), slots]", actual: s)
    }
    guard fitsTokenIndices(s[0], s[1]) else {
        throw SwitchyardError.shape(argument: argument, expected: "batch × slots below 2³¹", actual: s)
    }
    return s[1]
}

/// Checks an optional output storage type: float only.
func validateOutputDType(_ dtype: DType?, _ argument: String) throws {
    if let dtype, !dtype.isFloatingPoint {
        throw SwitchyardError.dtype(argument: argument, expected: "f32, f16 or bf16", actual: dtype)
    }
}

extension ReferenceBackend {
    /// The reference backend's token flags tensor.
    func tokenFlags(_ p: TokenIndexProblems, badMask: Bool = false) -> Tensor {
        Tensor(shape: [TokenFlags.count], dtype: .i32, storage: .host(.ints(TokenFlags.values(p, badMask: badMask))))
    }
}
