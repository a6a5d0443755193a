/// A Lua script run with `EVALSHA`, named for error messages.
///
/// The SHA-1 is computed once, here, so calls send only the 40-character digest. When the
/// server does not have the script cached (after a restart or `SCRIPT FLUSH`) the client
/// loads it with `SCRIPT LOAD` and retries, in pipelines too.
public struct RedisScript: Sendable, Hashable {
    /// A short name used in error messages, e.g. `claim_task`.
    public let name: String
    /// The Lua source.
    public let source: String
    /// The lowercase hex SHA-1 of ``source``: the name Redis caches the script under.
    public let sha1: String

    /// Creates a script and computes its SHA-1.
    /// - Parameters:
    ///   - name: a short name for error messages (`EVALSHA claim_task failed: …`).
    ///   - source: the Lua source.
    public init(name: String, source: String) {
        self.name = name
        self.source = source
        self.sha1 = SHA1.hexDigest(of: source.utf8)
    }
}
