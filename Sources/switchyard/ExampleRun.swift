import ArgumentParser
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardExamples

/// `switchyard run --config mod-tiny|soft-moe-tiny|early-exit-tiny`: an example stack with conditional
/// computation, dynamic against dense on one device (`ExampleReport.run`), and with `--check`
/// against the CPU reference.
extension Run {
    func runExample(_ example: ConditionalExample) throws {
        // The MoE layer's options do not apply to a stack; refuse them rather than ignore them.
        var refused: [String] = []
        if ep { refused.append("--ep") }
        if model != nil { refused.append("--model") }
        if layer != nil { refused.append("--layer") }
        if input != nil { refused.append("--input") }
        if output != nil { refused.append("--output") }
        if quantize != "none" { refused.append("--quantize") }
        if noPack { refused.append("--no-pack") }
        if placement != nil { refused.append("--placement") }
        if tokenSplit != nil { refused.append("--token-split") }
        if capacityFactor != nil { refused.append("--capacity-factor") }
        if !refused.isEmpty {
            throw ValidationError("\(refused.joined(separator: ", ")) apply to MoE layer configs, not to the example stack \(example.name)")
        }
        guard let d = DType(rawValue: dtype), d.isFloatingPoint else { throw ValidationError("dtype must be f32, f16 or bf16") }
        let shape = ExampleShape(batch: batch ?? example.defaultBatch, length: tokensOption ?? example.defaultLength, dtype: d)
        guard shape.batch >= 1 else { throw ValidationError("--batch must be at least 1") }
        guard shape.length >= 1 else { throw ValidationError("--tokens must be at least 1") }
        guard iterations >= 1 else { throw ValidationError("--iterations must be at least 1") }
        try failing {
            let backend = try OpenCLBackend(device: try Device.select(device))
            let dev = backend.device
            print("device  \(dev.name) (\(dev.kind.rawValue), \(dev.platformName), driver \(dev.driverVersion))")
            // The input is drawn on the host (and, with --check, the reference holds the stack):
            // refuse a batch whose tokens, at 4 KiB each (d 256 in f32: the input, the output and
            // what lies between), take over a quarter of host memory.
            let (n, overflow) = shape.batch.multipliedReportingOverflow(by: shape.length)
            let host = ProcessInfo.processInfo.physicalMemory
            guard !overflow, n <= Int(host / 4) / 4096 else {
                throw ValidationError(
                    "--batch \(shape.batch) × --tokens \(shape.length): at 4 KiB per token that is over a quarter of the "
                        + "machine's \(host) bytes of host memory")
            }
            let report = try ExampleReport.run(example, backend: backend, shape: shape, iterations: iterations, check: check)
            for line in report.lines { print(line) }
            if let c = report.check, !c.passed { throw ExitCode(1) }
        }
    }
}
