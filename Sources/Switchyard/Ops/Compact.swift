import SwitchyardReference

/// Token dropping by a keep mask (DynamicViT, A-ViT at inference): `keep [batch, length]` →
/// `positions [batch, length]` (each sequence's kept positions in order, then −1) and
/// `counts [batch]` (kept per sequence), computed on the device by a scan, nothing read back.
/// The mask is i32 1 (keep) / 0 (drop), or float scores with a threshold (kept where score >
/// threshold; NaN dropped). An i32 value other than 0 or 1 is dropped and raises
/// `invalidValues` when an output is read.
///
/// Using the result without a host read: `gatherTokens(x, indices: positions, rows: R)` packs
/// the kept rows into `[batch, R, d]` (R = length, or any bound L_max ≥ the largest count; a kept
/// token past R raises an error when read), zero rows past each sequence's count; the next block
/// runs on the packed rows (`counts` tells a kernel where each sequence's real rows end, and
/// stays on the device); `expandTokens(packed, positions: positions, length: L, base: x)` puts
/// the rows back (dropped positions keep x, or a fill value).
public struct Compact: Hashable, Sendable {
    public var batch: Int
    public var length: Int
    /// The mask's storage type: i32 for a 0/1 mask, a float type for scores against `threshold`.
    public var dtype: DType
    public var threshold: Float?

    public init(batch: Int, length: Int, dtype: DType, threshold: Float? = nil) {
        self.batch = batch
        self.length = length
        self.dtype = dtype
        self.threshold = threshold
    }

    init(validating keep: Tensor, threshold: Float?) throws {
        let s = try keep.expectRank(2, "compact keep", "[batch, length]")
        _ = try Tensor.checkedCount(s, dtype: keep.dtype, "compact keep")
        guard fitsTokenIndices(s[0], s[1]) else {
            throw SwitchyardError.shape(argument: "compact keep", expected: "batch × length below 2³¹", actual: s)
        }
        switch (keep.dtype, threshold) {
        case (.i32, nil): break
        case (.i32, .some):
            throw SwitchyardError.unsupported("compact threshold: an i32 keep mask takes no threshold (it is 0/1 already)")
        case (_, nil):
            throw SwitchyardError.unsupported("compact threshold: float scores (\(keep.dtype)) need a threshold")
        case (_, .some(let t)):
            if t.isNaN { throw SwitchyardError.unsupported("compact threshold: NaN keeps nothing; pass a number") }
        }
        self.init(batch: s[0], length: s[1], dtype: keep.dtype, threshold: threshold)
    }

    public var flops: Double { 0 }
    /// Mask read, positions and counts written.
    public var bytes: Double { Double(batch * length * (dtype.size + 4) + batch * 4) }
}

extension ReferenceBackend {
    public func compact(_ keep: Tensor, threshold: Float?) throws -> (positions: Tensor, counts: Tensor) {
        let op = try Compact(validating: keep, threshold: threshold)
        let mask = try threshold.map { Reference.keepMask(scores: try hostFloats(keep, "compact keep"), threshold: $0) }
            ?? hostInts(keep, "compact keep")
        let r = Reference.compact(keep: mask, batch: op.batch, length: op.length)
        let guards = keep.guards + [tokenFlags(TokenIndexProblems(), badMask: r.invalid)]
        return (
            ints(r.positions, [op.batch, op.length]).guarded(by: guards), ints(r.counts, [op.batch]).guarded(by: guards)
        )
    }
}
