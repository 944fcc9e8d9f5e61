extension Reference {
    /// The inverse of a compaction: packed rows `[batch, rows, width]` go back to their
    /// positions, `out[b, positions[b, j]] = packed[b, j]` for slots j < rows of positions
    /// `[batch, slots]`; every other position is `base[b, p]` (the original x) when given, else
    /// `fill`. Empty slots (−1) and invalid indices place nothing. Returns `[batch, length, width]`.
    public static func expandTokens(
        packed: [Float], positions: [Int32], base: [Float]?, fill: Float, batch: Int, length: Int, slots: Int,
        rows: Int, width: Int
    ) -> [Float] {
        precondition(packed.count == batch * rows * width && positions.count == batch * slots)
        var out = base ?? [Float](repeating: fill, count: batch * length * width)
        for b in 0..<batch {
            for j in 0..<rows {
                guard let p = tokenPosition(positions, b, j, slots: slots, length: length, rows: rows) else { continue }
                for c in 0..<width { out[(b * length + p) * width + c] = packed[(b * rows + j) * width + c] }
            }
        }
        return out
    }
}
