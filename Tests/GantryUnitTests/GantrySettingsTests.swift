import Foundation
import Testing
import GantryCore

@Suite struct GantrySettingsTests {
    @Test func theShippedConfigFileMatchesTheDefaults() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../config/gantry.yaml").standardized.path
        let settings = try GantrySettings.load(file: path, environment: [:], fileMustExist: true)
        for (name, value) in GantrySettings.defaults {
            #expect(settings.values[name] == value, "config/gantry.yaml disagrees with the default of \(name)")
        }
    }

    @Test func environmentOverridesTheFile() throws {
        var settings = GantrySettings()
        try settings.apply(yaml: "worker:\n  concurrency: 8\n  queues: [a, b]\nbroker:\n  kind: kafka\n", file: "g.yaml")
        #expect(try settings.int("worker.concurrency") == 8)
        #expect(try settings.strings("worker.queues") == ["a", "b"])
        try settings.apply(environment: ["GANTRY_WORKER_CONCURRENCY": "16", "GANTRY_WORKER_QUEUES": "x, y", "GANTRY_BROKER": "rabbitmq", "GANTRY_REDIS_URL": "redis://h:1", "HOME": "/root"])
        #expect(try settings.int("worker.concurrency") == 16)
        #expect(try settings.strings("worker.queues") == ["x", "y"])
        #expect(try settings.string("broker.kind") == "rabbitmq")
        #expect(try settings.string("redis.url") == "redis://h:1")
        #expect(settings.source(of: "worker.concurrency") == "environment variable GANTRY_WORKER_CONCURRENCY")
        #expect(try settings.duration("worker.lease") == .seconds(30))
    }

    @Test func mistakesNameTheSettingAndWhereItCameFrom() throws {
        var settings = GantrySettings()
        let unknown = try #require(throws: GantryError.self) { try settings.apply(yaml: "worker:\n  concurency: 8\n", file: "g.yaml") }
        #expect(unknown.message.contains("unknown setting 'worker.concurency'"))
        #expect(unknown.message.contains("did you mean 'worker.concurrency'"))
        try settings.apply(environment: ["GANTRY_WORKER_LEASE": "forever"])
        let bad = try #require(throws: GantryError.self) { try settings.duration("worker.lease") }
        #expect(bad.message.contains("from environment variable GANTRY_WORKER_LEASE"))
        #expect(throws: GantryError.self) { try GantrySettings.load(file: "/nonexistent.yaml", environment: [:], fileMustExist: true) }
    }
}
