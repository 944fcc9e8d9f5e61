import ArgumentParser
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

@main
struct SwitchyardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "Switchyard: OpenCL kernels for conditional-computation networks (MoE routing and experts).",
        subcommands: [Devices.self, Conformance.self, Run.self])
}

/// Prints a host-layer or Switchyard error as one paragraph and exits non-zero, without a trace.
func failing<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("switchyard: \(error)\n".utf8))
        throw ExitCode(2)
    }
}

func gib(_ bytes: Int) -> String { String(format: "%.1f GiB", Double(bytes) / 1_073_741_824) }

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every OpenCL device and the default choice.")

    func run() throws {
        let devices = try failing { try Device.all() }
        let chosen = try? Device.select()
        var rows: [[String]] = [["#", "name", "type", "platform", "CUs", "global mem", "max alloc", "OpenCL C", "fp16", "fp64", "default"]]
        for (i, d) in devices.enumerated() {
            rows.append([
                "\(i)", d.name, d.kind.rawValue, d.platformName, "\(d.computeUnits)", gib(d.globalMemoryBytes),
                gib(d.maxAllocationBytes), d.openCLCVersion.replacingOccurrences(of: "OpenCL C ", with: ""),
                d.supportsFP16 ? "yes" : "no", d.supportsFP64 ? "yes" : "no",
                chosen.map { $0.id == d.id ? "*" : "" } ?? "",
            ])
        }
        print(table(rows))
        if ProcessInfo.processInfo.environment["SWITCHYARD_DEVICE"] != nil && chosen == nil {
            _ = try failing { try Device.select() }
        }
    }
}

func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
    }.joined(separator: "\n")
}

struct Conformance: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run every registered case on a device against the CPU reference.")

    @Option(help: "Device index or case-insensitive name substring (default: SWITCHYARD_DEVICE, else GPU > accelerator > CPU).")
    var device: String?

    @Option(help: "Only the cases whose name matches this regular expression.")
    var filter: String?

    @Option(help: "Write every case's result to this JSON file.")
    var json: String?

    func run() throws {
        let passed = try runConformance(device: device, filter: filter, json: json)
        if !passed { throw ExitCode(1) }
    }
}

/// Runs the cases and prints a line per case and the summary; true when all passed.
func runConformance(device selector: String?, filter: String?, json: String?) throws -> Bool {
    let (runner, cases) = try failing {
        let device = try Device.select(selector)
        return (try ConformanceRunner(device: device), try SwitchyardConformance.Conformance.cases(matching: filter))
    }
    print("device: \(runner.device.device.name) (\(runner.device.device.kind.rawValue), \(runner.device.device.platformName), driver \(runner.device.device.driverVersion))")
    let terminal = isatty(STDERR_FILENO) != 0
    var results: [CaseResult] = []
    for (i, c) in cases.enumerated() {
        if terminal {
            FileHandle.standardError.write(Data("\r\u{1B}[K[\(i + 1)/\(cases.count)] \(c.name)".utf8))
        }
        let r = runner.run(c)
        results.append(r)
        if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        let error = r.error.isNaN ? "-" : String(format: "%.2e", r.error)
        let status = r.passed ? "pass" : "FAIL"
        let line = [c.op, c.shape, c.dtype.rawValue, c.options, "err=\(error)", status]
            .filter { !$0.isEmpty }.joined(separator: "  ")
        print(r.passed ? line : "\(line)  \(r.detail)")
        fflush(nil)
    }
    let failed = results.filter { !$0.passed }.count
    if let json {
        let items: [[String: Any]] = results.map {
            [
                "name": $0.name, "op": $0.op, "shape": $0.shape, "dtype": $0.dtype.rawValue, "passed": $0.passed,
                "error": $0.error.isFinite ? $0.error : NSNull(), "detail": $0.detail, "seconds": $0.seconds,
            ]
        }
        let document: [String: Any] = [
            "device": runner.device.device.name, "driver": runner.device.device.driverVersion,
            "passed": results.count - failed, "failed": failed, "cases": items,
        ]
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: json))
    }
    print("\(results.count - failed) passed, \(failed) failed")
    return failed == 0
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The main job: list the devices and run the conformance suite on the default device.")

    @Option(help: "Device index or case-insensitive name substring.")
    var device: String?

    func run() throws {
        try Devices().run()
        print("")
        if !(try runConformance(device: device, filter: nil, json: nil)) { throw ExitCode(1) }
    }
}
