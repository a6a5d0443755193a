/// W3C trace context (`traceparent`) for the tasks of a run.
///
/// Every task of a run shares one trace: its trace id is the run id's 128 bits in hex (a run id
/// is a ULID, exactly the size of a trace id), so any process that sees a run id can find its
/// trace without a lookup, and the coordinator's re-publishes and retries stay in the same trace
/// as the submitter's first publish. Each attempt of a node is its own span, with an id derived
/// from the node and attempt, so logs of one attempt share a span id across workers and retries.
public struct TraceContext: Hashable, Sendable {
    /// 32 lower-case hex digits.
    public var traceID: String
    /// 16 lower-case hex digits.
    public var spanID: String

    /// The context of `attempt` of `node` in `run`.
    public init(run: RunID, node: NodeID, attempt: UInt32) {
        traceID = Self.traceID(of: run)
        let digest = SHA256.hash(Array("\(run.rawValue)/\(node.description)#\(attempt)".utf8))
        spanID = Self.hex(digest.prefix(8))
    }

    /// Parses a `traceparent` header (`00-<trace id>-<span id>-<flags>`); nil if malformed.
    public init?(traceParent: String) {
        let parts = traceParent.split(separator: "-")
        guard parts.count == 4, parts[0].count == 2, parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
              parts.allSatisfy({ $0.allSatisfy(\.isHexDigit) }), parts[1].contains(where: { $0 != "0" })
        else { return nil }
        traceID = parts[1].lowercased()
        spanID = parts[2].lowercased()
    }

    /// The `traceparent` value: version 00, sampled.
    public var traceParent: String { "00-\(traceID)-\(spanID)-01" }

    /// The trace id of every task of `run`: the run id's 128 bits as hex.
    public static func traceID(of run: RunID) -> String {
        var high: UInt64 = 0
        var low: UInt64 = 0
        for byte in run.rawValue.utf8 {
            let value = UInt64(crockfordValue(byte))
            // 26 characters × 5 bits = 130 bits; the two leading bits are zero and shift out.
            high = high << 5 | low >> 59
            low = low << 5 | value
        }
        return hex64(high) + hex64(low)
    }

    /// The trace id for logs of a task: from its envelope's `traceparent` when it has a valid
    /// one, else derived from the run.
    public static func traceID(traceParent: String, run: RunID) -> String {
        TraceContext(traceParent: traceParent)?.traceID ?? traceID(of: run)
    }

    private static func crockfordValue(_ byte: UInt8) -> UInt8 {
        let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
        return UInt8(alphabet.firstIndex(of: byte) ?? 0)
    }

    private static func hex64(_ value: UInt64) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }

    private static func hex(_ bytes: some Collection<UInt8>) -> String {
        bytes.map { byte in
            let text = String(byte, radix: 16)
            return byte < 16 ? "0" + text : text
        }.joined()
    }
}
