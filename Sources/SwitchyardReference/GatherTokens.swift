extension Reference {
    /// Gathers chosen tokens: `y[b, j] = x[b, indices[b, j]]` for the first `rows` slots of
    /// indices `[batch, slots]`, over `x [batch, length, width]`; an empty slot (−1) or an
    /// invalid index gives a zero row. Returns `[batch, rows, width]`.
    public static func gatherTokens(
        x: [Float], batch: Int, length: Int, width: Int, indices: [Int32], slots: Int, rows: Int
    ) -> [Float] {
        precondition(x.count == batch * length * width && indices.count == batch * slots && rows <= slots)
        var y = [Float](repeating: 0, count: batch * rows * width)
        for b in 0..<batch {
            for j in 0..<rows {
                guard let p = tokenPosition(indices, b, j, slots: slots, length: length, rows: rows) else { continue }
                for c in 0..<width { y[(b * rows + j) * width + c] = x[(b * length + p) * width + c] }
            }
        }
        return y
    }
}
