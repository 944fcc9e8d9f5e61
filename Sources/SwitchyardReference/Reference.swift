/// The CPU reference of every Switchyard op: the definition the device kernels are checked
/// against. Plain loops over row-major arrays, Double accumulation, no OpenCL, readable above all.
public enum Reference {
    /// Row-wise softmax of `x [rows, cols]`: exp(x − max) / Σ exp(x − max), in Double.
    /// The row maximum ignores NaN (as OpenCL's `fmax` does); a NaN then makes its row NaN.
    public static func softmax(_ x: [Float], rows: Int, cols: Int) -> [Double] {
        precondition(x.count == rows * cols)
        var out = [Double](repeating: 0, count: x.count)
        for r in 0..<rows {
            let row = r * cols
            var m = -Double.infinity
            for c in 0..<cols where !x[row + c].isNaN { m = max(m, Double(x[row + c])) }
            var sum = 0.0
            for c in 0..<cols { sum += exp(Double(x[row + c]) - m) }
            for c in 0..<cols { out[row + c] = exp(Double(x[row + c]) - m) / sum }
        }
        return out
    }

    /// True when `a` (at index `ia`) ranks before `b` (at index `ib`) in a descending top-k:
    /// larger first, NaN above every number, −0 equal to +0, ties to the lower index.
    @inline(__always)
    public static func ranksBefore(_ a: Float, _ ia: Int, _ b: Float, _ ib: Int) -> Bool {
        if a.isNaN || b.isNaN {
            if a.isNaN && b.isNaN { return ia < ib }
            return a.isNaN
        }
        if a == b { return ia < ib }
        return a > b
    }

    /// Row-wise top-k of `x [rows, cols]`: the k largest values of each row in descending order
    /// and their column indices, ties to the lower index (a stable sort of the row).
    public static func topK(_ x: [Float], rows: Int, cols: Int, k: Int) -> (values: [Float], indices: [Int32]) {
        precondition(x.count == rows * cols && k >= 1 && k <= max(cols, 1))
        var values = [Float]()
        var indices = [Int32]()
        values.reserveCapacity(rows * k)
        indices.reserveCapacity(rows * k)
        for r in 0..<rows {
            let row = Array(x[(r * cols)..<((r + 1) * cols)])
            let order = (0..<cols).sorted { ranksBefore(row[$0], $0, row[$1], $1) }
            for j in 0..<k {
                values.append(row[order[j]])
                indices.append(Int32(order[j]))
            }
        }
        return (values, indices)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
