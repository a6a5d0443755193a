import GantryCore
import GantryDashboard
import GantryObservability
import Testing

@Suite struct ObservabilityUnitTests {
    @Test func listenAddressesParseOrSayWhatIsWrong() throws {
        #expect(try ListenAddress.parse("127.0.0.1:9470", origin: "x") == ListenAddress(host: "127.0.0.1", port: 9470))
        #expect(try ListenAddress.parse(" 0.0.0.0:0 ", origin: "x") == ListenAddress(host: "0.0.0.0", port: 0))
        #expect(try ListenAddress.parse(":8080", origin: "x") == ListenAddress(host: "0.0.0.0", port: 8080))
        #expect(try ListenAddress.parse("[::1]:9470", origin: "x") == ListenAddress(host: "::1", port: 9470))
        #expect(try ListenAddress.parse("[::1]:9470", origin: "x")?.description == "[::1]:9470")
        #expect(try ListenAddress.parse("off", origin: "x") == nil)
        #expect(try ListenAddress.parse("", origin: "x") == nil)
        for bad in ["localhost", "host:port", "127.0.0.1:70000", "::1:9470", "[::1"] {
            let error = try #require(throws: GantryError.self) { try ListenAddress.parse(bad, origin: "setting 'observability.worker_listen'") }
            #expect(error.message.contains("setting 'observability.worker_listen' must be host:port"))
            #expect(error.message.contains("'\(bad)'"))
        }
    }

    @Test func eachProcessKindHasItsOwnListenSetting() throws {
        var settings = GantrySettings()
        #expect(try ObservabilityConfiguration(settings: settings, process: .worker).listen == ListenAddress(host: "127.0.0.1", port: 0))
        #expect(try ObservabilityConfiguration(settings: settings, process: .coordinator).listen == ListenAddress(host: "127.0.0.1", port: 9470))
        try settings.apply(environment: [
            "GANTRY_OBSERVABILITY_WORKER_LISTEN": "0.0.0.0:9464", "GANTRY_OBSERVABILITY_PORT_FILE": "/tmp/w.addr",
            "GANTRY_OBSERVABILITY_COORDINATOR_LISTEN": "off",
        ])
        let worker = try ObservabilityConfiguration(settings: settings, process: .worker)
        #expect(worker.listen == ListenAddress(host: "0.0.0.0", port: 9464))
        #expect(worker.portFile == "/tmp/w.addr")
        #expect(try ObservabilityConfiguration(settings: settings, process: .coordinator).listen == nil)
        settings.set("observability.worker_listen", "nowhere", source: "--listen")
        let error = try #require(throws: GantryError.self) { try ObservabilityConfiguration(settings: settings, process: .worker) }
        #expect(error.message.contains("setting 'observability.worker_listen' (from --listen)"))
    }

    @Test func everyTaskOfARunSharesTheRunsTraceID() throws {
        let run = try RunID(validating: "01ARZ3NDEKTSV4RRFFQ69G5FAV")
        let trace = TraceContext.traceID(of: run)
        #expect(trace.count == 32)
        #expect(trace == "01563e3ab5d3d6764c61efb99302bd5b")  // the ULID's 128 bits
        let first = TraceContext(run: run, node: NodeID(stage: "a"), attempt: 1)
        let second = TraceContext(run: run, node: NodeID(stage: "b", index: 2), attempt: 1)
        #expect(first.traceID == trace && second.traceID == trace)
        #expect(first.spanID != second.spanID && first.spanID.count == 16)
        #expect(TraceContext(run: run, node: NodeID(stage: "a"), attempt: 2).spanID != first.spanID)
        let parsed = try #require(TraceContext(traceParent: first.traceParent))
        #expect(parsed == first)
        #expect(first.traceParent == "00-\(trace)-\(first.spanID)-01")
        #expect(TraceContext(traceParent: "00-00000000000000000000000000000000-0000000000000001-01") == nil)
        #expect(TraceContext(traceParent: "nonsense") == nil)
        #expect(TraceContext.traceID(traceParent: "", run: run) == trace)
        // The envelope carries it across the broker.
        let envelope = TaskEnvelope(runID: run, node: NodeID(stage: "a"), task: "echo", kind: .io, epoch: 1, traceParent: first.traceParent)
        #expect(try TaskEnvelope(decoding: envelope.encoded()).traceParent == first.traceParent)
    }

    @Test func theDAGIsLaidOutByDependencyDepthAndLongEdgesAvoidBoxes() throws {
        let layout = DAGLayout(stages: [
            (name: "chunks", after: []), (name: "count", after: ["chunks"]), (name: "digest", after: ["chunks"]),
            (name: "whole", after: []), (name: "report", after: ["count", "digest", "whole"]),
            (name: "a", after: ["chunks"]), (name: "b", after: ["a"]), (name: "c", after: ["b", "chunks"]),
        ])
        let boxes = Dictionary(uniqueKeysWithValues: layout.boxes.map { ($0.name, $0) })
        #expect(boxes["chunks"]?.layer == 0 && boxes["whole"]?.layer == 0)
        #expect(boxes["count"]?.layer == 1 && boxes["digest"]?.layer == 1 && boxes["a"]?.layer == 1)
        #expect(boxes["report"]?.layer == 2 && boxes["b"]?.layer == 2 && boxes["c"]?.layer == 3)
        #expect(layout.edges.count == 9)
        // No two boxes overlap, and every box lies inside the drawing.
        for one in layout.boxes {
            #expect(one.x >= 0 && one.y >= 0 && one.x + DAGLayout.boxWidth <= layout.width && one.y + DAGLayout.boxHeight <= layout.height)
            for other in layout.boxes where other.name != one.name && other.layer == one.layer {
                #expect(abs(other.y - one.y) >= DAGLayout.boxHeight)
            }
        }
        // No edge passes through a box other than the two it connects (points sampled along the curves).
        for edge in layout.edges {
            for point in Self.samples(of: edge.path) {
                for box in layout.boxes where box.name != edge.from && box.name != edge.to {
                    let inside = point.x > box.x + 1 && point.x < box.x + DAGLayout.boxWidth - 1 && point.y > box.y + 1 && point.y < box.y + DAGLayout.boxHeight - 1
                    #expect(!inside, "\(edge.from) → \(edge.to) crosses \(box.name) at \(point)")
                }
            }
        }
    }

    /// Points along an SVG path of M, L and C commands.
    static func samples(of path: String) -> [(x: Double, y: Double)] {
        var tokens = path.replacingOccurrences(of: ",", with: " ").split(separator: " ").map(String.init)[...]
        var points: [(x: Double, y: Double)] = []
        var current = (x: 0.0, y: 0.0)
        func number(_ text: String) -> Double { Double(text.drop { $0.isLetter }) ?? .nan }
        while let token = tokens.first {
            let command = token.first!
            var values = [number(token)]
            tokens = tokens.dropFirst()
            let needed = command == "C" ? 6 : 2
            while values.count < needed, let next = tokens.first { values.append(number(next)); tokens = tokens.dropFirst() }
            switch command {
            case "M": current = (values[0], values[1]); points.append(current)
            case "L":
                for step in 1...20 {
                    let t = Double(step) / 20
                    points.append((current.x + (values[0] - current.x) * t, current.y + (values[1] - current.y) * t))
                }
                current = (values[0], values[1])
            case "C":
                for step in 1...40 {
                    let t = Double(step) / 40, u = 1 - t
                    let x = u * u * u * current.x + 3 * u * u * t * values[0] + 3 * u * t * t * values[2] + t * t * t * values[4]
                    let y = u * u * u * current.y + 3 * u * u * t * values[1] + 3 * u * t * t * values[3] + t * t * t * values[5]
                    points.append((x, y))
                }
                current = (values[4], values[5])
            default: return points
            }
        }
        return points
    }
}
