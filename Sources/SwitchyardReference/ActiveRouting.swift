extension Reference {
    /// The routing of the active samples of an `[N]` mask (nonzero: active) through one expert:
    /// the active samples in ascending order take rows 0..<count (padded to `blockSize`), the
    /// others are dropped (row −1, weight 0). A grouped matmul over it computes the active rows
    /// only (tiles past the padded count are skipped on the device), and `combine` adds them back
    /// at their samples with the residual passing through elsewhere: a dense block on the samples
    /// an early exit left active. `Reference.permute` with every active sample sent to expert 0
    /// and the others to no expert.
    public static func activeRouting(active: [Int32], blockSize: Int) -> PermutationResult {
        permute(
            ids: active.map { $0 != 0 ? 0 : -1 }, weights: [Float](repeating: 1, count: active.count),
            tokens: active.count, k: 1, experts: 1, blockSize: blockSize, capacity: nil, priority: .tokenOrder)
    }
}
