import Testing
@testable import GantryCore

@Suite struct RunIDTests {
    @Test func runIDsAreWellFormedAndOrderedByTime() throws {
        var generator = SystemRandomNumberGenerator()
        let early = RunID.make(milliseconds: 1_700_000_000_000, using: &generator)
        let late = RunID.make(milliseconds: 1_700_000_000_001, using: &generator)
        #expect(early.rawValue.count == 26)
        #expect(early < late)
        #expect(early.milliseconds == 1_700_000_000_000)
        #expect(late.milliseconds == 1_700_000_000_001)
        #expect(RunID(rawValue: early.rawValue) == early)
        #expect(try RunID(validating: early.rawValue.lowercased()) == early)
        #expect(RunID(rawValue: "short") == nil)
        #expect(RunID(rawValue: String(repeating: "U", count: 26)) == nil)  // U is not Crockford base32
        let many = Set((0..<1000).map { _ in RunID.make() })
        #expect(many.count == 1000)
    }

    @Test func nodeIDsParseAndPrint() {
        #expect(NodeID("hash[12]") == NodeID(stage: "hash", index: 12))
        #expect(NodeID("hash") == NodeID(stage: "hash"))
        #expect(NodeID("hash[-1]") == nil)
        #expect(NodeID("hash[x]") == nil)
        #expect(NodeID(stage: "hash", index: 3).description == "hash[3]")
    }
}

@Suite struct DurationTextTests {
    @Test func parsesHumanDurations() {
        #expect(Duration(parsing: "250ms") == .milliseconds(250))
        #expect(Duration(parsing: "30s") == .seconds(30))
        #expect(Duration(parsing: "1.5s") == .milliseconds(1500))
        #expect(Duration(parsing: "5m") == .seconds(300))
        #expect(Duration(parsing: "1h30m") == .seconds(5400))
        #expect(Duration(parsing: "2") == .seconds(2))
        #expect(Duration(parsing: "-1s") == nil)
        #expect(Duration(parsing: "soon") == nil)
        #expect(Duration(parsing: "5 parsecs") == nil)
        #expect(Duration(parsing: "") == nil)
        #expect(Duration.milliseconds(1500).shortDescription == "1.5s")
        #expect(Duration.seconds(150).shortDescription == "2m30s")
    }
}

@Suite struct RetryPolicyTests {
    @Test func backoffGrowsExponentiallyAndIsCapped() {
        let policy = RetryPolicy(maxAttempts: 10, initialBackoff: .milliseconds(100), maxBackoff: .seconds(1), multiplier: 2, jitter: 0)
        #expect(policy.baseBackoff(afterAttempt: 1) == .milliseconds(100))
        #expect(policy.baseBackoff(afterAttempt: 2) == .milliseconds(200))
        #expect(policy.baseBackoff(afterAttempt: 3) == .milliseconds(400))
        #expect(policy.baseBackoff(afterAttempt: 5) == .seconds(1))
        #expect(policy.baseBackoff(afterAttempt: 50) == .seconds(1))
        #expect(policy.backoff(afterAttempt: 2) == .milliseconds(200))
    }

    @Test func jitterStaysWithinItsBandAndVaries() {
        let policy = RetryPolicy(maxAttempts: 10, initialBackoff: .seconds(1), maxBackoff: .seconds(60), multiplier: 2, jitter: 0.25)
        let samples = (0..<500).map { _ in policy.backoff(afterAttempt: 1).seconds }
        #expect(samples.allSatisfy { $0 >= 0.75 - 1e-9 && $0 <= 1.25 + 1e-9 })
        #expect(Set(samples.map { Int($0 * 1000) }).count > 50)
    }

    @Test func attemptsAreCounted() {
        let policy = RetryPolicy(maxAttempts: 3)
        #expect(policy.allowsRetry(afterAttempt: 1))
        #expect(policy.allowsRetry(afterAttempt: 2))
        #expect(!policy.allowsRetry(afterAttempt: 3))
        #expect(!RetryPolicy.never.allowsRetry(afterAttempt: 1))
        #expect(RetryPolicy(maxAttempts: 0, multiplier: 0.5).problems.count == 2)
        #expect(RetryPolicy.default.problems.isEmpty)
    }
}

@Suite struct SHA256Tests {
    @Test func matchesNISTVectors() {
        #expect(SHA256.hash(Array("".utf8)).hexString == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hash(Array("abc".utf8)).hexString == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)).hexString
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)).hexString
            == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func incrementalUpdatesMatchOneShot() {
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        var digest = SHA256()
        digest.update(data[0..<3])
        digest.update(data[3..<130])
        digest.update(data[130...])
        #expect(digest.finalize() == SHA256.hash(data))
        // A collection without contiguous storage, fed around a partial block.
        var mixed = SHA256()
        mixed.update(data[0..<5])
        mixed.update(data[5...].reversed())
        #expect(mixed.finalize() == SHA256.hash(Array(data[0..<5]) + data[5...].reversed()))
        #expect(SHA256.hash(data.reversed()).hexString == SHA256.hash(Array(data.reversed())).hexString)
    }

    @Test func hmacMatchesRFC4231() {
        // RFC 4231 test case 2.
        #expect(SHA256.hmac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)).hexString
            == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        // Test case 6: a key longer than the block size.
        #expect(SHA256.hmac(key: [UInt8](repeating: 0xaa, count: 131), message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)).hexString
            == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }
}

@Suite struct TaskEnvelopeTests {
    private func sample(payload: [UInt8] = Array("hello".utf8)) -> TaskEnvelope {
        TaskEnvelope(
            runID: RunID.make(), node: NodeID(stage: "hash", index: 41), task: "sha256", kind: .cpu, priority: 5, attempt: 3,
            epoch: 1 << 40, deadlineMilliseconds: 1_800_000_000_000, enqueuedMilliseconds: 1_700_000_000_000,
            traceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", payload: payload)
    }

    @Test func roundTripsEveryField() throws {
        let envelope = sample()
        #expect(try TaskEnvelope(decoding: envelope.encoded()) == envelope)
        var plain = TaskEnvelope(runID: RunID.make(), node: NodeID(stage: "a"), task: "noop", kind: .io, epoch: 1, enqueuedMilliseconds: 5)
        plain.payload = []
        #expect(try TaskEnvelope(decoding: plain.encoded()) == plain)
        #expect(plain.encoded().count < 64)
    }

    @Test func rejectsGarbageTruncationAndTrailingBytes() throws {
        let bytes = sample().encoded()
        #expect(throws: GantryError.self) { try TaskEnvelope(decoding: Array("{\"json\": true}".utf8)) }
        #expect(throws: GantryError.self) { try TaskEnvelope(decoding: []) }
        for cut in [3, 10, bytes.count / 2, bytes.count - 1] {
            #expect(throws: GantryError.self) { try TaskEnvelope(decoding: Array(bytes[0..<cut])) }
        }
        #expect(throws: GantryError.self) { try TaskEnvelope(decoding: bytes + [0]) }
        var future = bytes
        future[2] = 9
        let error = try #require(throws: GantryError.self) { try TaskEnvelope(decoding: future) }
        #expect(error.message.contains("version 9"))
    }

    @Test func refusesAnOversizedPayload() throws {
        let bytes = sample(payload: [UInt8](repeating: 1, count: 2000)).encoded()
        let error = try #require(throws: GantryError.self) { try TaskEnvelope(decoding: bytes, maxPayload: 1000) }
        #expect(error.code == .payloadTooLarge)
        #expect(error.message.contains("2000 bytes"))
    }

    @Test func signedEnvelopesAreVerified() throws {
        let key = Array("k1-secret".utf8)
        let envelope = sample()
        let signed = envelope.encoded(signedWith: key, keyID: "k1")
        #expect(try TaskEnvelope(decoding: signed, keys: ["k1": key, "k0": Array("old".utf8)]) == envelope)
        // A reader that does not check signatures still decodes a signed message.
        #expect(try TaskEnvelope(decoding: signed) == envelope)

        var tampered = signed
        tampered[20] ^= 0x01
        #expect(throws: GantryError.self) { try TaskEnvelope(decoding: tampered, keys: ["k1": key]) }
        let unknownKey = try #require(throws: GantryError.self) { try TaskEnvelope(decoding: signed, keys: ["k2": key]) }
        #expect(unknownKey.code == .signatureInvalid)
        let unsigned = try #require(throws: GantryError.self) { try TaskEnvelope(decoding: envelope.encoded(), keys: ["k1": key]) }
        #expect(unsigned.code == .signatureInvalid)
        #expect(unsigned.message.contains("not signed"))
    }
}

@Suite struct GantryErrorTests {
    @Test func codesDecideRetriability() {
        #expect(GantryError(.connectionFailed, "x").isRetriable)
        #expect(GantryError(.timeout, "x").isRetriable)
        #expect(!GantryError(.invalidPipeline, "x").isRetriable)
        #expect(GantryError(.commandFailed, "x", isRetriable: true).isRetriable)
        #expect("\(GantryError(.notFound, "run X"))" == "notFound: run X")
    }
}
