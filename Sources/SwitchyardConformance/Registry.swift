import Switchyard

/// Every registered conformance case, in a stable order.
public enum Conformance {
    public static let cases: [ConformanceCase] =
        RowCases.softmax + RowCases.topK + RoutingCases.gating + RoutingCases.permute + RoutingCases.route
        + RoutingCases.gather + RoutingCases.combine + RoutingCases.expertChoice + RoutingCases.routingStats + MatmulCases.grouped
        + LayerCases.layers + RefusalCases.cases + TensorBytesCases.cases + TokenMergeCases.all + SoftMoECases.all
        + TokenTopKCases.cases + GatherTokensCases.cases + ScatterTokensCases.cases + CompactCases.cases
        + ExpandTokensCases.cases + HaltingCases.cases + EarlyExitCases.cases + ActiveRoutingCases.cases
        + QuantizedWeightsCases.quantize + QuantizedWeightsCases.matmul + QuantizedWeightsCases.layers
        + GatedEpilogueCases.cases + GatedEpilogueCases.layers

    /// The cases whose name matches `pattern` (a regular expression), or all when nil.
    public static func cases(matching pattern: String?) throws -> [ConformanceCase] {
        guard let pattern, !pattern.isEmpty else { return cases }
        let regex = try Regex(pattern)
        return cases.filter { $0.name.contains(regex) }
    }

    /// A stable seed for a case's name, so cases never share inputs by accident.
    static func seed(_ name: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01B3
        }
        return hash
    }
}
