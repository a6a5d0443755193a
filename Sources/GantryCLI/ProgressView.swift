import Foundation
import GantryCore
import GantryStore

/// Live progress of a run.
///
/// On a terminal the run's stage tree (a progress bar per stage) is redrawn in place whenever
/// its event stream moves, and at least twice a second so running timers tick. Elsewhere (a
/// pipe, a log file, CI) one plain line is printed when something changed, at most every
/// `interval`, then the full status once the run ends.
enum ProgressView {
    enum Mode {
        /// Redraw on a terminal, plain lines otherwise.
        case automatic
        /// Plain periodic lines even on a terminal.
        case lines
        /// Nothing until the end (the caller prints JSON).
        case quiet
    }

    /// Follows `run` until it ends and returns its final state.
    static func follow(_ run: RunID, store: RedisStateStore, mode: Mode = .automatic, interval: Duration = .seconds(2)) async throws -> RunState {
        let redraw = mode == .automatic && isatty(1) == 1
        let color = redraw && StatusRenderer.useColor
        var drawn = 0
        var last = "0"
        var lastLine = ""
        var lastPrinted = ContinuousClock.now - interval
        while true {
            try Task.checkCancellation()
            let events = try await store.waitForEvents(run, after: last, timeout: .milliseconds(500))
            if let tail = events.last { last = tail.id }
            let status = try await store.status(run)
            let now = currentMilliseconds()
            switch mode {
            case .quiet:
                break
            case .automatic where redraw:
                let text = StatusRenderer.render(status, now: now, color: color, width: terminalWidth())
                // Up over what was drawn last time, clear to the end of the screen, draw again.
                var frame = drawn > 0 ? "\u{1B}[\(drawn)A\u{1B}[J" : ""
                frame += text + "\n"
                FileHandle.standardOutput.write(Data(frame.utf8))
                drawn = text.split(separator: "\n", omittingEmptySubsequences: false).count
            case .automatic, .lines:
                let line = StatusRenderer.line(status, now: now)
                // The elapsed time leads the line; compare the rest to see whether anything moved.
                let substance = line.drop { $0 != " " }
                if status.state.isFinal || (substance != lastLine.drop { $0 != " " } && ContinuousClock.now - lastPrinted >= interval) {
                    print(line)
                    fflush(nil)
                    lastLine = line
                    lastPrinted = .now
                }
                if status.state.isFinal {
                    print(StatusRenderer.render(status, now: now))
                }
            }
            if status.state.isFinal { return status.state }
        }
    }

    /// The width of the terminal on standard output, if it says.
    static func terminalWidth() -> Int? {
        var size = winsize()
        guard ioctl(1, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return nil }
        return Int(size.ws_col)
    }
}
