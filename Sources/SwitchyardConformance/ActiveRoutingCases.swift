import Switchyard

/// Cases of `activeRouting`: masks all active, none, a random share (as an exit leaves them),
/// one sample, zero samples, sizes off the block, values other than 0 and 1 (nonzero: active),
/// and the refused arguments. Every routing output compares exactly.
enum ActiveRoutingCases {
    static func mask(_ kind: String, n: Int, seed: UInt64) -> [Int32] {
        var g = SeededGenerator(seed: seed)
        switch kind {
        case "all": return [Int32](repeating: 1, count: n)
        case "none": return [Int32](repeating: 0, count: n)
        case "values": return (0..<n).map { _ in Int32(truncatingIfNeeded: g.next() % 5) - 2 }
        default:  // "share": about 40 % active
            return (0..<n).map { _ in g.next() % 5 < 2 ? 1 : 0 }
        }
    }

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        let specs: [(n: Int, block: Int, kind: String)] = [
            (0, 16, "all"), (1, 16, "all"), (1, 1, "none"), (100, 16, "share"), (100, 1, "share"), (1000, 64, "all"),
            (1000, 64, "none"), (4099, 64, "share"), (4096, 6, "share"), (300, 7, "values"), (70_000, 64, "share"),
        ]
        for s in specs {
            let shape = "N=\(s.n) block=\(s.block)"
            let seed = Conformance.seed("active_routing \(shape) \(s.kind)")
            let op = ActiveRouting(samples: s.n, blockSize: s.block)
            cases.append(
                ConformanceCase(
                    op: "active_routing", shape: shape, dtype: .i32, options: s.kind, seed: seed, rows: s.n, flops: op.flops,
                    bytes: op.bytes
                ) { backend in
                    let active = try backend.tensor(mask(s.kind, n: s.n, seed: seed), shape: [s.n])
                    return { try RoutingCases.routingOutputs(backend, try backend.activeRouting(active, blockSize: s.block)) }
                })
        }
        let refusals: [(String, String, @Sendable (any ComputeBackend) throws -> Tensor, Int)] = [
            ("block 0", "activeRouting blockSize", { try $0.tensor([1, 0, 1] as [Int32], shape: [3]) }, 0),
            ("block 4097", "activeRouting blockSize", { try $0.tensor([1, 0, 1] as [Int32], shape: [3]) }, 4097),
            ("f32 mask", "activeRouting active", { try $0.tensor([1, 0, 1] as [Float], shape: [3], dtype: .f32) }, 16),
            ("rank-2 mask", "activeRouting active", { try $0.tensor([1, 0, 1, 1] as [Int32], shape: [2, 2]) }, 16),
        ]
        for (name, match, make, block) in refusals {
            cases.append(
                ConformanceCase(
                    op: "active_routing", shape: "N=3 block=\(block)", dtype: .i32, options: name,
                    seed: Conformance.seed("active_routing refused \(name)"), flops: 0, bytes: 0, expectsError: true,
                    errorMatch: match
                ) { backend in
                    let active = try make(backend)
                    return { try RoutingCases.routingOutputs(backend, try backend.activeRouting(active, blockSize: block)) }
                })
        }
        return cases
    }
}
