/// An error in how Switchyard was called or in what a kernel found in its input. Each case
/// names the argument and what was expected.
public enum SwitchyardError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A tensor has the wrong rank or extent.
    case shape(argument: String, expected: String, actual: [Int])
    /// A tensor has a storage type the op does not take.
    case dtype(argument: String, expected: String, actual: DType)
    /// A scalar option is out of its range.
    case outOfRange(argument: String, value: Int, range: String)
    /// A tensor lives on another backend than the op runs on.
    case backendMismatch(argument: String, expected: String, actual: String)
    /// Host data does not match the tensor it is meant for.
    case hostData(argument: String, expected: Int, actual: Int)
    /// The input held values the op refuses (NaN or infinite router logits, say), detected on
    /// the device and raised when the result is read.
    case invalidValues(argument: String, detail: String)
    /// An option combination the op does not support.
    case unsupported(String)

    /// One line naming the argument, what was expected and what was given.
    public var description: String {
        switch self {
        case .shape(let argument, let expected, let actual):
            "\(argument): expected shape \(expected), got \(actual)"
        case .dtype(let argument, let expected, let actual):
            "\(argument): expected dtype \(expected), got \(actual)"
        case .outOfRange(let argument, let value, let range):
            "\(argument) = \(value) is out of range \(range)"
        case .backendMismatch(let argument, let expected, let actual):
            "\(argument) lives on \(actual), but the op runs on \(expected)"
        case .hostData(let argument, let expected, let actual):
            "\(argument): expected \(expected) \(argument.hasSuffix("bytes") ? "bytes" : "host elements"), got \(actual)"
        case .invalidValues(let argument, let detail):
            "\(argument): \(detail)"
        case .unsupported(let message):
            "unsupported: \(message)"
        }
    }
}
