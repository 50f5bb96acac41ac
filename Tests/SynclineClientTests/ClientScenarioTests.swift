import Foundation
@testable import SynclineClient
import SynclineProtocol
import Testing

/// Every language-neutral client scenario in protocol/client-scenarios, run against ClientCore.
@Suite("Client scenarios (protocol/client-scenarios)")
struct ClientScenarioTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("protocol/client-scenarios")

    static var files: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".json") }.sorted()
    }

    @Test func theScenariosAreThere() {
        #expect(Self.files.count >= 10)
    }

    @Test(arguments: files)
    func scenario(_ file: String) throws {
        let text = try String(contentsOf: Self.directory.appendingPathComponent(file), encoding: .utf8)
        var runner = ScenarioRunner(try JSONParser.parse(text))
        let failures = runner.runAll()
        #expect(failures.isEmpty, "\(file):\n\(failures.joined(separator: "\n"))")
    }
}
