import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a report file cannot be written at `path`, or nil when it can: the tools check their
/// output paths (`--json`, `--svg`, `--output`) with this before any work, so that a run of
/// minutes does not end in a write error, and a FIFO or socket there cannot block the final
/// write. Links are followed; a character device (/dev/null, /dev/stdout) is accepted.
public func outputPathProblem(_ path: String) -> String? {
    if path.isEmpty { return "an empty path" }
    var info = stat()
    if stat(path, &info) == 0 {
        switch info.st_mode & S_IFMT {
        case S_IFDIR: return "a folder, not a file"
        case S_IFREG, S_IFCHR:
            return access(path, W_OK) == 0 ? nil : "a file that is not writable"
        default: return "not a regular file (a FIFO, socket or block device)"
        }
    }
    let folder = (path as NSString).deletingLastPathComponent
    let dir = folder.isEmpty ? "." : folder
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue,
        FileManager.default.isWritableFile(atPath: dir)
    else { return "the folder \(dir) does not exist or is not writable" }
    return nil
}
