import Foundation
import OpenCLHost
import Testing

/// `switchyard fault-walk` on every device, in its own process (fault injection and the live
/// object counts are process-wide, and other suites run beside this one): every OpenCL call of an
/// MoE layer forward made to fail in turn surfaces as a CLError naming the call, the next forward
/// is bitwise right, and no OpenCL object is left once the backend is gone.
@Test(arguments: Array((try? Device.all().indices) ?? 0..<0))
func faultWalk(device: Int) throws {
    let binary = LoadMemoryTests.tool
    try #require(FileManager.default.isExecutableFile(atPath: binary), "build the switchyard tool first (swift build)")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = ["fault-walk", "--device", "\(device)", "--tokens", "8"]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "\(output)")
    #expect(output.contains("fault walk: pass"), "\(output)")
}
