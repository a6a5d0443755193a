extension Duration {
    /// Parses a human duration: `250ms`, `30s`, `5m`, `2h`, `1h30m`, or a bare number of seconds.
    ///
    /// Returns `nil` for anything else, including negative values.
    public init?(parsing text: String) {
        let trimmed = text.trimmingSpaces
        if let seconds = Double(trimmed) {
            guard seconds >= 0, seconds.isFinite else { return nil }
            self = .nanoseconds(Int64(seconds * 1e9))
            return
        }
        var total: Int64 = 0
        var number = ""
        var unit = ""
        var sawAny = false
        func flush() -> Bool {
            guard let value = Double(number), value >= 0 else { return false }
            let scale: Double
            switch unit {
            case "ns": scale = 1
            case "us", "µs": scale = 1e3
            case "ms": scale = 1e6
            case "s": scale = 1e9
            case "m": scale = 60e9
            case "h": scale = 3600e9
            case "d": scale = 86_400e9
            default: return false
            }
            total += Int64(value * scale)
            number = ""
            unit = ""
            sawAny = true
            return true
        }
        for char in trimmed {
            if char.isNumber || char == "." {
                if !unit.isEmpty { guard flush() else { return nil } }
                number.append(char)
            } else if char.isLetter || char == "µ" {
                guard !number.isEmpty else { return nil }
                unit.append(char)
            } else {
                return nil
            }
        }
        guard !number.isEmpty, flush(), sawAny else { return nil }
        self = .nanoseconds(total)
    }

    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Seconds as a floating-point number.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// A short human form: `250ms`, `1.5s`, `2m30s`.
    public var shortDescription: String {
        let ms = milliseconds
        if ms < 1000 { return "\(ms)ms" }
        if ms < 60_000 {
            let tenths = ms / 100
            return tenths % 10 == 0 ? "\(tenths / 10)s" : "\(tenths / 10).\(tenths % 10)s"
        }
        let totalSeconds = ms / 1000
        if totalSeconds < 3600 {
            return totalSeconds % 60 == 0 ? "\(totalSeconds / 60)m" : "\(totalSeconds / 60)m\(totalSeconds % 60)s"
        }
        let minutes = totalSeconds / 60
        return minutes % 60 == 0 ? "\(minutes / 60)h" : "\(minutes / 60)h\(minutes % 60)m"
    }
}

extension String {
    var trimmingSpaces: String {
        var view = Substring(self)
        while let first = view.first, first.isWhitespace { view.removeFirst() }
        while let last = view.last, last.isWhitespace { view.removeLast() }
        return String(view)
    }
}
