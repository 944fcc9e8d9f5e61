extension Reference {
    /// Token dropping by a keep mask `[batch, length]` (DynamicViT, A-ViT at inference): per
    /// sequence, the kept positions in ascending order followed by −1 for the dropped ones
    /// (`positions [batch, length]`) and the number kept (`counts [batch]`). `keep` holds 1 (kept)
    /// or 0 (dropped); any other value is dropped and reported as `invalid`.
    public static func compact(keep: [Int32], batch: Int, length: Int) -> (
        positions: [Int32], counts: [Int32], invalid: Bool
    ) {
        precondition(keep.count == batch * length)
        var positions = [Int32](repeating: -1, count: batch * length)
        var counts = [Int32](repeating: 0, count: batch)
        var invalid = false
        for b in 0..<batch {
            var n = 0
            for p in 0..<length {
                let v = keep[b * length + p]
                if v != 0 && v != 1 { invalid = true }
                if v == 1 {
                    positions[b * length + n] = Int32(p)
                    n += 1
                }
            }
            counts[b] = Int32(n)
        }
        return (positions, counts, invalid)
    }

    /// The keep mask of scores `[batch, length]` against a threshold: kept where score >
    /// threshold (NaN is dropped).
    public static func keepMask(scores: [Float], threshold: Float) -> [Int32] {
        scores.map { $0 > threshold ? 1 : 0 }
    }
}
