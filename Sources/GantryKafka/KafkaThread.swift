import Foundation

/// Starts a dedicated OS thread for work that blocks: polling librdkafka, relaying sockets.
///
/// Blocking calls must never run on Swift's cooperative pool (it has one thread per core;
/// a few blocked threads stall every task in the process), so each long-lived blocking loop
/// gets a thread of its own. The threads are detached: their owners learn that a loop ended
/// through their own state, not by joining.
enum KafkaThread {
    /// Starts `body` on a new thread named `name` (shown by `top -H`, cut to 15 bytes).
    static func start(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread {
            body()
        }
        thread.name = name
        // Relays and pollers keep little on the stack; 512 KiB leaves ample headroom while
        // keeping many relay threads cheap.
        thread.stackSize = 512 * 1024
        thread.start()
    }
}
