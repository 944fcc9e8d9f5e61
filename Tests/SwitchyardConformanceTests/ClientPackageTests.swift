import Foundation
import OpenCLHost
import Testing

/// A client package outside the repository (Tests/Fixtures/ClientPackage copied to a temporary
/// folder, depending on this checkout by path) links Switchyard through its public API only: it
/// wraps its own cl_context, in-order queue and cl_mem buffers, runs routing, a grouped matmul
/// and an MoE layer with async reads, and must get the same bytes as the synchronous path, on
/// every OpenCL device.
@Suite(.serialized) struct ClientPackageTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Copies the fixture, builds it once (shared by the tests below) and returns its folder.
    static let built: Result<URL, any Error> = Result {
        let fixture = repository.appendingPathComponent("Tests/Fixtures/ClientPackage")
        // One folder per checkout, outside it, reused from run to run: its .build stays, so a
        // second run builds incrementally, and runs leave no new folders behind.
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in repository.path.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        let folder = FileManager.default.temporaryDirectory
            .appendingPathComponent("switchyard-client-\(String(hash, radix: 16))")
        let files = FileManager.default
        try files.createDirectory(at: folder, withIntermediateDirectories: true)
        for item in try files.contentsOfDirectory(atPath: folder.path) where item != ".build" {
            try files.removeItem(at: folder.appendingPathComponent(item))
        }
        for item in try files.contentsOfDirectory(atPath: fixture.path) {
            try files.copyItem(at: fixture.appendingPathComponent(item), to: folder.appendingPathComponent(item))
        }
        // The documentation's samples: one more executable of the same build (DocSampleTests).
        try DocSamples.generate(into: folder, repository: repository)
        let manifest = folder.appendingPathComponent("Package.swift")
        let identity = repository.lastPathComponent.lowercased()
        let text = try String(contentsOf: manifest, encoding: .utf8)
            .replacingOccurrences(of: "@SWITCHYARD_PATH@", with: repository.path)
            .replacingOccurrences(of: "@SWITCHYARD_IDENTITY@", with: identity)
        try text.write(to: manifest, atomically: true, encoding: .utf8)
        let resolved = repository.appendingPathComponent("Package.resolved")
        if FileManager.default.fileExists(atPath: resolved.path) {
            try FileManager.default.copyItem(at: resolved, to: folder.appendingPathComponent("Package.resolved"))
        }
        let (status, output) = try run(swift, ["build", "--package-path", folder.path], in: folder)
        guard status == 0 else { throw ClientError.build(output) }
        return folder
    }

    enum ClientError: Error, CustomStringConvertible {
        case build(String)
        var description: String {
            switch self {
            case .build(let output): "the client package did not build:\n\(output.suffix(4000))"
            }
        }
    }

    static var swift: String {
        let env = ProcessInfo.processInfo.environment
        for dir in (env["PATH"] ?? "").split(separator: ":") + ["/opt/swift/usr/bin"] {
            let path = "\(dir)/swift"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return "/usr/bin/swift"
    }

    static func run(_ executable: String, _ arguments: [String], in folder: URL) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = folder
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test(arguments: Array((try? Device.all().indices) ?? 0..<0))
    func engineObjectsGiveTheSameBytes(device: Int) throws {
        let folder = try Self.built.get()
        let binary = folder.appendingPathComponent(".build/debug/client").path
        let (status, output) = try Self.run(binary, ["\(device)"], in: folder)
        #expect(status == 0, "\(output)")
        #expect(output.contains("the engine's context, queue and buffers give the same bytes"), "\(output)")
    }
}
