import Switchyard
import Testing

/// The API example of README.md, kept compiling and true.
@Test func readmeExample() throws {
    let backend = try OpenCLBackend()
    let logits = try backend.tensor((0..<4 * 8).map { Float($0 % 7) - 3 }, shape: [4, 8], dtype: .bf16)
    let probabilities = try backend.softmax(logits)
    let (values, experts) = try backend.topK(probabilities, k: 2)
    #expect(try backend.ints(experts).count == 8)
    #expect(try backend.floats(values).allSatisfy { $0 > 0 && $0 < 1 })

    let reference = ReferenceBackend()
    let check = try reference.topK(
        reference.softmax(reference.tensor(try backend.floats(logits), shape: [4, 8], dtype: .bf16)), k: 2)
    #expect(try reference.ints(check.indices) == backend.ints(experts))
}
