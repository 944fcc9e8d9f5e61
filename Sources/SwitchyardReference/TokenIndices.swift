/// What `Reference.checkTokenIndices` found in the token indices of a gather, scatter or
/// expand; each raises an error when the op's output is read.
public struct TokenIndexProblems: Sendable, Equatable {
    /// An index other than −1 outside 0..<length.
    public var outOfRange = false
    /// A position named twice in one sequence.
    public var repeated = false
    /// A position in a slot at or past the packed rows (a kept token with no row to go to).
    public var pastRows = false

    public init(outOfRange: Bool = false, repeated: Bool = false, pastRows: Bool = false) {
        self.outOfRange = outOfRange
        self.repeated = repeated
        self.pastRows = pastRows
    }
}

extension Reference {
    /// Checks token indices `[batch, slots]` naming positions of sequences of `length`: −1 marks
    /// an empty slot; any other index must lie in 0..<length, name no position twice in its
    /// sequence, and sit in one of the first `rows` slots.
    public static func checkTokenIndices(
        _ indices: [Int32], batch: Int, length: Int, slots: Int, rows: Int
    ) -> TokenIndexProblems {
        precondition(indices.count == batch * slots)
        var problems = TokenIndexProblems()
        for b in 0..<batch {
            var seen = Set<Int32>()
            for j in 0..<slots {
                let i = indices[b * slots + j]
                if i == -1 { continue }
                if i < -1 || Int(i) >= length {
                    problems.outOfRange = true
                } else if j >= rows {
                    problems.pastRows = true
                } else if !seen.insert(i).inserted {
                    problems.repeated = true
                }
            }
        }
        return problems
    }

    /// The valid position of slot `j` of sequence `b`, or nil (empty slot, bad index, past rows).
    static func tokenPosition(_ indices: [Int32], _ b: Int, _ j: Int, slots: Int, length: Int, rows: Int) -> Int? {
        let i = Int(indices[b * slots + j])
        return (0..<length).contains(i) && j < rows ? i : nil
    }
}
