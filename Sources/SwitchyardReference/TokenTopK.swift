#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What `tokenTopK` returns beside the chosen positions.
public enum TokenWeighting: String, Sendable, Hashable, CaseIterable {
    /// The chosen positions' scores themselves (mixture-of-depths scales the block's output by
    /// the router's raw output).
    case score
    /// σ(score) = 1 / (1 + e^−score), a router weight in (0, 1).
    case sigmoid
}

extension Reference {
    /// Per-sequence token selection (mixture-of-depths, ColT5) over scores `[batch, length]`:
    /// each sequence's `capacity` highest-ranked positions (rank as `ranksBefore`: larger first,
    /// NaN above every number, −0 equal to +0, ties to the lower position), returned in
    /// ascending position order `[batch, capacity]`, with their weights (the score, or its
    /// sigmoid) in the same order.
    public static func tokenTopK(
        scores: [Float], batch: Int, length: Int, capacity: Int, weighting: TokenWeighting
    ) -> (indices: [Int32], weights: [Double]) {
        precondition(scores.count == batch * length && capacity >= 0 && capacity <= length)
        var indices = [Int32]()
        var weights = [Double]()
        indices.reserveCapacity(batch * capacity)
        weights.reserveCapacity(batch * capacity)
        for b in 0..<batch {
            let row = Array(scores[(b * length)..<((b + 1) * length)])
            let ranked = (0..<length).sorted { ranksBefore(row[$0], $0, row[$1], $1) }
            for p in ranked.prefix(capacity).sorted() {
                indices.append(Int32(p))
                let s = Double(row[p])
                weights.append(weighting == .sigmoid ? 1 / (1 + exp(-s)) : s)
            }
        }
        return (indices, weights)
    }
}
