// Replaced in the temporary copy of this package by DocSampleTests (DocSamples.generate), which
// writes here every ```swift block of README.md and the DocC catalogs. This copy only fails.
import Foundation

print("samples: not generated; run `swift test --filter DocSampleTests` in the Switchyard repository")
exit(1)
