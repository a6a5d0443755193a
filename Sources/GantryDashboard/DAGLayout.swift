/// Places a pipeline's stages for drawing: left to right by dependency depth, each column's
/// stages ordered by where their dependencies sit so that edges cross as little as a simple
/// layered layout allows.
public struct DAGLayout: Sendable, Hashable {
    /// One stage's box.
    public struct Box: Sendable, Hashable {
        public var name: String
        /// The column: 0 for stages without dependencies, else one past the deepest dependency.
        public var layer: Int
        /// The position within the column, from the top.
        public var row: Int
        public var x: Double
        public var y: Double
    }

    /// One dependency: from `from`'s right edge to `to`'s left edge.
    public struct Edge: Sendable, Hashable {
        public var from: String
        public var to: String
        /// An SVG path (a cubic curve).
        public var path: String
    }

    public static let boxWidth = 210.0
    public static let boxHeight = 74.0
    static let columnGap = 70.0
    static let rowGap = 22.0
    static let margin = 16.0

    /// Boxes in the order the stages were given.
    public var boxes: [Box]
    public var edges: [Edge]
    public var width: Double
    public var height: Double

    /// Lays out `stages` (name and dependencies, in pipeline order). Dependencies on unknown
    /// names are ignored; the pipeline validator has already refused cycles.
    public init(stages: [(name: String, after: [String])]) {
        let known = Set(stages.map(\.name))
        let after = Dictionary(stages.map { ($0.name, $0.after.filter(known.contains)) }, uniquingKeysWith: { first, _ in first })
        var layer: [String: Int] = [:]
        func depth(_ name: String, _ visiting: Set<String>) -> Int {
            if let known = layer[name] { return known }
            guard !visiting.contains(name) else { return 0 }
            let value = (after[name] ?? []).map { depth($0, visiting.union([name])) + 1 }.max() ?? 0
            layer[name] = value
            return value
        }
        for stage in stages { _ = depth(stage.name, []) }

        let layerCount = (layer.values.max() ?? -1) + 1
        var columns = [[String]](repeating: [], count: layerCount)
        for stage in stages { columns[layer[stage.name]!].append(stage.name) }
        var row: [String: Int] = [:]
        for index in columns.indices {
            if index > 0 {
                // Barycentre ordering: a stage goes near the average row of its dependencies.
                let order = Dictionary(columns[index].enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
                columns[index].sort { a, b in
                    let ka = Self.barycentre(after[a] ?? [], row), kb = Self.barycentre(after[b] ?? [], row)
                    return ka == kb ? order[a]! < order[b]! : ka < kb
                }
            }
            for (position, name) in columns[index].enumerated() { row[name] = position }
        }

        let tallest = columns.map(\.count).max() ?? 0
        let columnHeight = Double(tallest) * Self.boxHeight + Double(max(0, tallest - 1)) * Self.rowGap
        var boxes: [Box] = []
        var position: [String: (x: Double, y: Double)] = [:]
        for stage in stages {
            let column = layer[stage.name]!
            let count = columns[column].count
            let height = Double(count) * Self.boxHeight + Double(max(0, count - 1)) * Self.rowGap
            let x = Self.margin + Double(column) * (Self.boxWidth + Self.columnGap)
            let y = Self.margin + (columnHeight - height) / 2 + Double(row[stage.name]!) * (Self.boxHeight + Self.rowGap)
            position[stage.name] = (x, y)
            boxes.append(Box(name: stage.name, layer: column, row: row[stage.name]!, x: x, y: y))
        }
        // Top edges of each column's boxes, to route long edges through the gaps between them.
        var columnTops = [[Double]](repeating: [], count: layerCount)
        for box in boxes { columnTops[box.layer].append(box.y) }
        for index in columnTops.indices { columnTops[index].sort() }
        var edges: [Edge] = []
        for stage in stages {
            for dependency in after[stage.name] ?? [] {
                guard let from = position[dependency], let to = position[stage.name] else { continue }
                let start = (x: from.x + Self.boxWidth, y: from.y + Self.boxHeight / 2)
                let end = (x: to.x - 4, y: to.y + Self.boxHeight / 2)
                // An edge that skips columns passes each one through the gap nearest its straight
                // line, never across a box it does not connect.
                var points = [start]
                let first = layer[dependency]!, last = layer[stage.name]!
                if last - first > 1 {
                    for column in (first + 1)..<last {
                        let progress = Double(column - first) / Double(last - first)
                        let ideal = start.y + (end.y - start.y) * progress
                        let y = Self.gap(nearest: ideal, tops: columnTops[column])
                        let left = Self.margin + Double(column) * (Self.boxWidth + Self.columnGap)
                        points.append((left - 6, y))
                        points.append((left + Self.boxWidth + 6, y))
                    }
                }
                points.append(end)
                var path = "M\(Self.format(points[0].x)) \(Self.format(points[0].y))"
                for (a, b) in zip(points, points.dropFirst()) {
                    if a.y == b.y {
                        path += " L\(Self.format(b.x)) \(Self.format(b.y))"
                    } else {
                        let bend = max(18, (b.x - a.x) / 2)
                        path += " C\(Self.format(a.x + bend)) \(Self.format(a.y)), \(Self.format(b.x - bend)) \(Self.format(b.y)), \(Self.format(b.x)) \(Self.format(b.y))"
                    }
                }
                edges.append(Edge(from: dependency, to: stage.name, path: path))
            }
        }
        self.boxes = boxes
        self.edges = edges
        width = Self.margin * 2 + Double(layerCount) * Self.boxWidth + Double(max(0, layerCount - 1)) * Self.columnGap
        height = Self.margin * 2 + columnHeight
    }

    /// The y of the free horizontal channel nearest `ideal` in a column whose boxes start at `tops`.
    private static func gap(nearest ideal: Double, tops: [Double]) -> Double {
        guard let firstTop = tops.first, let lastTop = tops.last else { return ideal }
        var channels = [firstTop - rowGap / 2, lastTop + boxHeight + rowGap / 2]
        for (upper, lower) in zip(tops, tops.dropFirst()) { channels.append((upper + boxHeight + lower) / 2) }
        // Wide open space above or below the column's boxes is fine as it is.
        if ideal < firstTop - rowGap / 2 || ideal > lastTop + boxHeight + rowGap / 2 { return ideal }
        return channels.min { abs($0 - ideal) < abs($1 - ideal) }!
    }

    private static func barycentre(_ dependencies: [String], _ row: [String: Int]) -> Double {
        let rows = dependencies.compactMap { row[$0] }
        guard !rows.isEmpty else { return .infinity }
        return Double(rows.reduce(0, +)) / Double(rows.count)
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(format1: value)
    }
}

extension String {
    /// `value` with one decimal.
    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
}
