import ArgumentParser
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

struct FaultWalkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fault-walk",
        abstract: "Make every OpenCL call of an MoE layer forward fail in turn: each failure must surface as a "
            + "CLError naming the call, the next forward must be right, and no OpenCL object may leak.")

    @Option(help: "Device index or case-insensitive name substring.")
    var device: String?

    @Option(help: "Layer config: \(MoEConfig.named.keys.sorted().joined(separator: ", ")).")
    var config = "mixtral-tiny"

    @Option(help: "Tokens in the batch.")
    var tokens = 16

    func run() throws {
        guard let c = MoEConfig.named[config] else { throw ValidationError("unknown config \(config)") }
        guard (1...4096).contains(tokens) else { throw ValidationError("--tokens must be in 1...4096") }
        let dev = try Device.select(device)
        let r = try FaultWalk.run(device: dev, config: c, tokens: tokens)
        print("device \(dev.name): \(r.calls) OpenCL calls in one forward and read, each made to fail in turn")
        print("  surfaced as a CLError naming the call: \(r.surfaced) of \(r.calls)")
        print("  forwards after a failure that differed from the fault-free output: \(r.wrongAfter)")
        print("  OpenCL objects held while the backend and layer were alive: \(r.heldWhileAlive)")
        print("  OpenCL objects left after the backend was dropped: "
            + (r.leaked.isEmpty ? "0" : r.leaked.map { "\($0.key) \($0.value)" }.sorted().joined(separator: ", ")))
        for p in r.problems.prefix(20) { print("  problem: \(p)") }
        print(r.passed ? "fault walk: pass" : "fault walk: FAIL")
        if !r.passed { throw ExitCode(1) }
    }
}
