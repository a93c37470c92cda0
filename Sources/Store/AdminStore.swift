import Crypto
import Foundation

/// Operator and API operations on the control-plane model. Every write is one idempotent transaction
/// (`StoreClient.write`); names are checked before anything is sent so mistakes get a precise message.
public struct AdminStore: Sendable {
    public let client: StoreClient

    public init(client: StoreClient) { self.client = client }

    static let now = StoreSchema.nowMs

    /// uwsgi.it's public container id.
    public static let baseUID: Int64 = 30000

    /// uwsgi.it's private address formula: 10.0.0.0 | ((pk + 2) & 0xFFFFFF).
    public static func containerIP(id: Int64) -> String {
        let value = UInt32(0x0A00_0000) | UInt32(truncatingIfNeeded: (id + 2) & 0xFF_FFFF)
        return "\(value >> 24).\((value >> 16) & 0xff).\((value >> 8) & 0xff).\(value & 0xff)"
    }

    static func checkName(_ name: String, what: String, max: Int = 255) throws(StoreError) {
        if name.isEmpty { throw .invalidInput("the \(what) name is empty") }
        if name.utf8.count > max { throw .invalidInput("the \(what) name is longer than \(max) bytes") }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            throw .invalidInput("the \(what) name contains control characters")
        }
    }

    static func positive(_ value: Int, _ what: String) throws(StoreError) {
        if value < 0 || value > 1 << 40 { throw .invalidInput("\(what) must be between 0 and \(1 << 40) (got \(value))") }
    }

    private func exists(_ sql: String, _ parameters: [DqliteValue]) async throws(StoreError) -> Bool {
        !(try await client.query(sql, parameters)).rows.isEmpty
    }

    // MARK: Customers

    @discardableResult
    public func addCustomer(username: String, password: String, email: String? = nil, company: String? = nil, vat: String? = nil,
                            requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try Self.checkName(username, what: "customer", max: 150)
        let hash = try PasswordHasher.hash(password)
        if try await exists("SELECT 1 FROM customers WHERE username = ?", [.text(username)]),
           !(try await client.isApplied(requestID: requestID)) {
            throw .rejected("customer \(username) already exists")
        }
        let keys = try CustomerKeyPair.generate()
        return try await client.write(requestID: requestID, [
            .init("""
                INSERT INTO customers(username, email, password_hash, company, vat, uuid, rsa_key, rsa_pubkey, ctime_ms, mtime_ms)
                VALUES(?, ?, ?, ?, ?, ?, ?, ?, \(Self.now), \(Self.now))
                """, [.text(username), .optional(email), .text(hash), .optional(company), .optional(vat),
                      .text(UUID().uuidString.lowercased()), .text(keys.privatePEM), .text(keys.publicPEM)]),
        ])
    }

    public func customers() async throws(StoreError) -> DqliteRows {
        try await client.query("""
            SELECT c.id, c.username, c.email, c.company, c.vat, c.uuid, c.ctime_ms,
                   (SELECT count(*) FROM containers WHERE customer_id = c.id) AS containers,
                   (SELECT count(*) FROM domains WHERE customer_id = c.id) AS domains
            FROM customers c ORDER BY c.username
            """)
    }

    /// The customer's login check (for the customer API).
    public func verifyPassword(username: String, password: String) async throws(StoreError) -> Bool {
        let rows = try await client.query("SELECT password_hash FROM customers WHERE username = ?", [.text(username)])
        guard let hash = rows.scalar?.string else { return false }
        return PasswordHasher.verify(password, against: hash)
    }

    @discardableResult
    public func deleteCustomer(username: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        let rows = try await client.query("SELECT (SELECT count(*) FROM containers WHERE customer_id = c.id) FROM customers c WHERE username = ?",
                                          [.text(username)])
        if let count = rows.scalar?.int, count > 0 {
            throw .rejected("customer \(username) still has \(count) container(s); delete them first")
        }
        return try await client.write(requestID: requestID, [
            .init("DELETE FROM customers WHERE username = ?", [.text(username)], mustChange: "no customer named \(username)"),
        ])
    }

    // MARK: Servers (nodes)

    @discardableResult
    public func addServer(name: String, address: String, memory: Int, storage: Int, hd: String = "", datacenter: String? = nil,
                          owner: String? = nil, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try Self.checkName(name, what: "server")
        try Self.positive(memory, "memory (MB)")
        try Self.positive(storage, "storage (MB)")
        guard Self.isIPAddress(address) else { throw .invalidInput("\(address) is not an IPv4 or IPv6 address") }
        if try await exists("SELECT 1 FROM servers WHERE name = ?", [.text(name)]), !(try await client.isApplied(requestID: requestID)) {
            throw .rejected("server \(name) already exists")
        }
        if let owner, !(try await exists("SELECT 1 FROM customers WHERE username = ?", [.text(owner)])) {
            throw .rejected("no customer named \(owner); add it first (legion admin customer add)")
        }
        var statements: [StoreClient.Statement] = []
        if let datacenter {
            try Self.checkName(datacenter, what: "datacenter")
            statements.append(.init("INSERT OR IGNORE INTO datacenters(name, ctime_ms, mtime_ms) VALUES(?, \(Self.now), \(Self.now))", [.text(datacenter)]))
        }
        statements.append(.init("""
            INSERT INTO servers(name, address, memory, storage, hd, uuid, datacenter_id, owner_id, ctime_ms, mtime_ms)
            VALUES(?, ?, ?, ?, ?, ?, (SELECT id FROM datacenters WHERE name = ?), (SELECT id FROM customers WHERE username = ?), \(Self.now), \(Self.now))
            """, [.text(name), .text(address), .int(memory), .int(storage), .text(hd), .text(UUID().uuidString.lowercased()), .optional(datacenter),
                  .optional(owner)]))
        return try await client.write(requestID: requestID, statements)
    }

    public func servers() async throws(StoreError) -> DqliteRows {
        try await client.query("""
            SELECT s.id, s.name, s.address, s.memory, s.storage, s.uuid, d.name AS datacenter,
                   (SELECT coalesce(sum(memory), 0) FROM containers WHERE server_id = s.id) AS used_memory,
                   (SELECT coalesce(sum(storage), 0) FROM containers WHERE server_id = s.id) AS used_storage,
                   (SELECT count(*) FROM containers WHERE server_id = s.id) AS containers
            FROM servers s LEFT JOIN datacenters d ON d.id = s.datacenter_id ORDER BY s.name
            """)
    }

    @discardableResult
    public func deleteServer(name: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        let rows = try await client.query("SELECT (SELECT count(*) FROM containers WHERE server_id = s.id) FROM servers s WHERE name = ?", [.text(name)])
        if let count = rows.scalar?.int, count > 0 {
            throw .rejected("server \(name) still hosts \(count) container(s); move or delete them first")
        }
        return try await client.write(requestID: requestID, [
            .init("DELETE FROM servers WHERE name = ?", [.text(name)], mustChange: "no server named \(name)"),
        ])
    }

    // MARK: Legions

    @discardableResult
    public func addLegion(name: String, address: String, servers: [String], key: String = "",
                          requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try Self.checkName(name, what: "legion")
        guard Self.isIPAddress(address) else { throw .invalidInput("\(address) is not an IPv4 or IPv6 address (the legion's failover IP)") }
        for server in servers where !(try await exists("SELECT 1 FROM servers WHERE name = ?", [.text(server)])) {
            throw .rejected("no server named \(server); add it first (legion admin server add)")
        }
        var statements: [StoreClient.Statement] = [
            .init("INSERT INTO legions(name, address, key, uuid, ctime_ms, mtime_ms) VALUES(?, ?, ?, ?, \(Self.now), \(Self.now))",
                  [.text(name), .text(address), .text(key), .text(UUID().uuidString.lowercased())]),
        ]
        for server in servers {
            statements.append(.init("""
                INSERT INTO legion_nodes(legion_id, server_id) VALUES((SELECT id FROM legions WHERE name = ?), (SELECT id FROM servers WHERE name = ?))
                """, [.text(name), .text(server)]))
        }
        return try await client.write(requestID: requestID, statements)
    }

    public func legions() async throws(StoreError) -> DqliteRows {
        try await client.query("""
            SELECT l.id, l.name, l.address, l.uuid,
                   (SELECT group_concat(s.name, ',') FROM legion_nodes n JOIN servers s ON s.id = n.server_id WHERE n.legion_id = l.id) AS nodes
            FROM legions l ORDER BY l.name
            """)
    }

    @discardableResult
    public func deleteLegion(name: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try await client.write(requestID: requestID, [
            .init("DELETE FROM legions WHERE name = ?", [.text(name)], mustChange: "no legion named \(name)"),
        ])
    }

    // MARK: Distros

    @discardableResult
    public func addDistro(name: String, path: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try Self.checkName(name, what: "distro")
        guard !path.isEmpty, path != ".", path != "..",
              path.unicodeScalars.allSatisfy({ ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || "._-".unicodeScalars.contains($0) })
        else { throw .invalidInput("distro path \(path) must be a directory name under /distros (letters, digits, '.', '_', '-')") }
        return try await client.write(requestID: requestID, [
            .init("INSERT INTO distros(name, path, uuid, ctime_ms, mtime_ms) VALUES(?, ?, ?, \(Self.now), \(Self.now))",
                  [.text(name), .text(path), .text(UUID().uuidString.lowercased())]),
        ])
    }

    public func distros() async throws(StoreError) -> DqliteRows {
        try await client.query("SELECT id, name, path, uuid FROM distros ORDER BY name")
    }

    @discardableResult
    public func deleteDistro(name: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try await client.write(requestID: requestID, [
            .init("DELETE FROM distros WHERE name = ?", [.text(name)], mustChange: "no distro named \(name)"),
        ])
    }

    // MARK: Firewall rules (admin only, as uwsgi.it's preliminary `Rule`)

    /// An extra firewall rule for one container's traffic with the outside (container ↔ container traffic is decided
    /// by links alone): `out` = from the container, `in` = to it; `src`/`dst` are IPv4 CIDRs or `any`; `allow` or `deny`;
    /// higher `priority` first. uwsgi.it's `gateway` action (a UDP tunnel of its tuntap router) has no equivalent here.
    @discardableResult
    public func addRule(containerUID: Int64, direction: String, src: String, dst: String, action: String, priority: Int = 0,
                        note: String? = nil, requestID: String = UUID().uuidString) async throws(StoreError) -> (uuid: String, receipt: StoreClient.WriteReceipt) {
        guard direction == "in" || direction == "out" else { throw .invalidInput("rule direction must be in (to the container) or out (from it)") }
        guard action == "allow" || action == "deny" else {
            throw .invalidInput("rule action must be allow or deny (uwsgi.it's gateway is not supported: links across servers are routed)")
        }
        for (what, value) in [("src", src), ("dst", dst)] where !Self.isRuleAddress(value) {
            throw .invalidInput("rule \(what) \(value) must be an IPv4 address or CIDR (1.2.3.4, 1.2.3.0/24) or any")
        }
        let uuid = UUID().uuidString.lowercased()
        let receipt = try await client.write(requestID: requestID, [
            .init("""
                INSERT INTO rules(container_id, direction, src, dst, action, priority, uuid, note, ctime_ms, mtime_ms)
                SELECT id, ?, ?, ?, ?, ?, ?, ?, \(Self.now), \(Self.now) FROM containers WHERE id = ?
                """, [.text(direction), .text(src), .text(dst), .text(action), .int(priority), .text(uuid), .optional(note),
                      .integer(containerUID - Self.baseUID)], mustChange: "no container \(containerUID)"),
        ])
        return (uuid, receipt)
    }

    public func rules(containerUID: Int64? = nil) async throws(StoreError) -> DqliteRows {
        if let containerUID {
            return try await client.query("""
                SELECT uuid, container_id + \(Self.baseUID) AS container, direction, src, dst, action, priority, note FROM rules
                WHERE container_id = ? ORDER BY priority DESC, id
                """, [.integer(containerUID - Self.baseUID)])
        }
        return try await client.query("""
            SELECT uuid, container_id + \(Self.baseUID) AS container, direction, src, dst, action, priority, note FROM rules
            ORDER BY container_id, priority DESC, id
            """)
    }

    @discardableResult
    public func deleteRule(uuid: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try await client.write(requestID: requestID, [.init("DELETE FROM rules WHERE uuid = ?", [.text(uuid)], mustChange: "no rule \(uuid)")])
    }

    /// `any`, or an IPv4 address with an optional /0…/32 prefix, written canonically (no leading zeros).
    public static func isRuleAddress(_ text: String) -> Bool {
        if text == "any" { return true }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return false }
        if parts.count == 2 {
            guard let prefix = Int(parts[1]), (0...32).contains(prefix), String(prefix) == parts[1] else { return false }
        }
        return isIPv4Literal(String(parts[0]))
    }

    /// A dotted-quad IPv4 address written canonically (no leading zeros, each octet 0…255): safe to put in a rule.
    public static func isIPv4Literal(_ text: String) -> Bool {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets.allSatisfy { o in Int(o).map { (0...255).contains($0) && String($0) == o } ?? false }
    }

    // MARK: Containers

    /// Creates a container; returns its receipt (insertIDs[0] is the row id; uid = 30000 + id).
    @discardableResult
    public func addContainer(name: String, customer: String, server: String, memory: Int, storage: Int, distro: String? = nil,
                             sshKeys: String? = nil, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try Self.checkName(name, what: "container")
        try Self.positive(memory, "memory (MB)")
        try Self.positive(storage, "storage (MB)")
        if !(try await client.isApplied(requestID: requestID)) {
            guard try await exists("SELECT 1 FROM customers WHERE username = ?", [.text(customer)]) else {
                throw .rejected("no customer named \(customer); add it first (legion admin customer add)")
            }
            let capacity = try await client.query("""
                SELECT s.memory - (SELECT coalesce(sum(memory), 0) FROM containers WHERE server_id = s.id),
                       s.storage - (SELECT coalesce(sum(storage), 0) FROM containers WHERE server_id = s.id)
                FROM servers s WHERE s.name = ?
                """, [.text(server)])
            guard let free = capacity.rows.first, let freeMemory = free[0].int, let freeStorage = free[1].int else {
                throw .rejected("no server named \(server); add it first (legion admin server add)")
            }
            if Int64(memory) > freeMemory || Int64(storage) > freeStorage {
                throw .rejected("server \(server) has \(freeMemory) MB memory and \(freeStorage) MB storage free; the container asks for \(memory) MB and \(storage) MB")
            }
            if let distro, !(try await exists("SELECT 1 FROM distros WHERE name = ?", [.text(distro)])) {
                throw .rejected("no distro named \(distro); add it first (legion admin distro add)")
            }
        }
        // The same checks again inside the transaction, so a concurrent write cannot over-allocate the server.
        return try await client.write(requestID: requestID, [
            .init("""
                INSERT INTO containers(name, server_id, customer_id, memory, storage, distro_id, ssh_keys_raw, uuid,
                                       last_reboot_ms, ctime_ms, mtime_ms)
                SELECT ?, s.id, c.id, ?, ?, (SELECT id FROM distros WHERE name = ?), ?, ?, \(Self.now), \(Self.now), \(Self.now)
                FROM servers s, customers c WHERE s.name = ? AND c.username = ?
                  AND (SELECT coalesce(sum(memory), 0) FROM containers WHERE server_id = s.id) + ? <= s.memory
                  AND (SELECT coalesce(sum(storage), 0) FROM containers WHERE server_id = s.id) + ? <= s.storage
                """, [.text(name), .int(memory), .int(storage), .optional(distro), .optional(sshKeys), .text(UUID().uuidString.lowercased()),
                      .text(server), .text(customer), .int(memory), .int(storage)],
                  mustChange: "the container was not created: server \(server) or customer \(customer) changed meanwhile (capacity or deletion); retry"),
        ])
    }

    public func containers(server: String? = nil) async throws(StoreError) -> DqliteRows {
        var rows = try await client.query("""
            SELECT k.id + \(Self.baseUID) AS uid, k.id, k.name, c.username AS customer, s.name AS server, k.memory, k.storage,
                   d.name AS distro, k.last_reboot_ms, k.uuid
            FROM containers k JOIN customers c ON c.id = k.customer_id JOIN servers s ON s.id = k.server_id
            LEFT JOIN distros d ON d.id = k.distro_id
            WHERE ? IS NULL OR s.name = ? ORDER BY k.id
            """, [.optional(server), .optional(server)])
        // The private address is derived, as in uwsgi.it.
        rows.columns.append("ip")
        for index in rows.rows.indices {
            rows.rows[index].append(.text(Self.containerIP(id: rows.rows[index][1].int ?? 0)))
        }
        return rows
    }

    @discardableResult
    public func deleteContainer(uid: Int64, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        guard uid > Self.baseUID else { throw .invalidInput("container ids start at \(Self.baseUID + 1) (got \(uid))") }
        return try await client.write(requestID: requestID, [
            .init("DELETE FROM containers WHERE id = ?", [.integer(uid - Self.baseUID)], mustChange: "no container \(uid)"),
        ])
    }

    /// Changes a container's memory and/or storage (MB), within its server's capacity. The store marks the
    /// container rebooted (its `last_reboot` trigger), so its node restarts it with the new limits; the data stays.
    @discardableResult
    public func resizeContainer(uid: Int64, memory: Int?, storage: Int?, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        guard uid > Self.baseUID else { throw .invalidInput("container ids start at \(Self.baseUID + 1) (got \(uid))") }
        guard memory != nil || storage != nil else { throw .invalidInput("give --memory or --storage (MB)") }
        if let memory { try Self.positive(memory, "memory (MB)") }
        if let storage { try Self.positive(storage, "storage (MB)") }
        let id = uid - Self.baseUID
        let mem: DqliteValue = memory.map { .int($0) } ?? .null
        let disk: DqliteValue = storage.map { .int($0) } ?? .null
        // The new sizes must fit the server beside every other container on it (checked in the transaction).
        return try await client.write(requestID: requestID, [
            .init("""
                UPDATE containers SET memory = coalesce(?, memory), storage = coalesce(?, storage), mtime_ms = \(Self.now)
                WHERE id = ?
                  AND (SELECT coalesce(sum(memory), 0) FROM containers k WHERE k.server_id = containers.server_id AND k.id != ?)
                      + coalesce(?, memory) <= (SELECT memory FROM servers WHERE id = containers.server_id)
                  AND (SELECT coalesce(sum(storage), 0) FROM containers k WHERE k.server_id = containers.server_id AND k.id != ?)
                      + coalesce(?, storage) <= (SELECT storage FROM servers WHERE id = containers.server_id)
                """, [mem, disk, .integer(id), .integer(id), mem, .integer(id), disk],
                  mustChange: "container \(uid) was not changed: no such container, or its server lacks the memory or storage"),
        ])
    }

    /// Restarts the container wherever it runs: its `last_reboot` moves on, so its node reloads its sub-Emperor.
    @discardableResult
    public func rebootContainer(uid: Int64, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        guard uid > Self.baseUID else { throw .invalidInput("container ids start at \(Self.baseUID + 1) (got \(uid))") }
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        return try await client.write(requestID: requestID, [
            .init("UPDATE containers SET last_reboot_ms = max(last_reboot_ms + 1, ?) WHERE id = ?", [.integer(nowMs), .integer(uid - Self.baseUID)],
                  mustChange: "no container \(uid)"),
        ])
    }

    /// Replaces the container's authorized ssh keys (its node rewrites the file; nothing restarts).
    @discardableResult
    public func setContainerSSHKeys(uid: Int64, keys: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        guard uid > Self.baseUID else { throw .invalidInput("container ids start at \(Self.baseUID + 1) (got \(uid))") }
        return try await client.write(requestID: requestID, [
            .init("UPDATE containers SET ssh_keys_raw = ? WHERE id = ?", [.text(keys), .integer(uid - Self.baseUID)], mustChange: "no container \(uid)"),
        ])
    }

    // MARK: Domains

    @discardableResult
    public func addDomain(name: String, customer: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        let domain = name.lowercased()
        guard Self.isDomainName(domain) else {
            throw .invalidInput("\(name) is not a domain name (labels of letters, digits and '-', separated by dots, at most 253 bytes)")
        }
        if !(try await client.isApplied(requestID: requestID)) {
            guard try await exists("SELECT 1 FROM customers WHERE username = ?", [.text(customer)]) else {
                throw .rejected("no customer named \(customer)")
            }
            if try await exists("SELECT 1 FROM domains WHERE name = ?", [.text(domain)]) {
                throw .rejected("domain \(domain) is already taken (domains are unique across customers)")
            }
        }
        return try await client.write(requestID: requestID, [
            .init("""
                INSERT INTO domains(name, customer_id, uuid, ctime_ms, mtime_ms)
                SELECT ?, id, ?, \(Self.now), \(Self.now) FROM customers WHERE username = ?
                """, [.text(domain), .text(UUID().uuidString.lowercased()), .text(customer)], mustChange: "no customer named \(customer)"),
        ])
    }

    public func domains(customer: String? = nil) async throws(StoreError) -> DqliteRows {
        try await client.query("""
            SELECT d.id, d.name, c.username AS customer, d.uuid, d.mtime_ms
            FROM domains d JOIN customers c ON c.id = d.customer_id WHERE ? IS NULL OR c.username = ? ORDER BY d.name
            """, [.optional(customer), .optional(customer)])
    }

    @discardableResult
    public func deleteDomain(name: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try await client.write(requestID: requestID, [
            .init("DELETE FROM domains WHERE name = ?", [.text(name.lowercased())], mustChange: "no domain named \(name)"),
        ])
    }

    // MARK: Alarms

    @discardableResult
    /// - Parameter atMs: when it happened (a spooled alarm stored late keeps its time); default: now.
    public func raiseAlarm(containerUID: Int64, level: Int, message: String, color: String = "#ffffff",
                           requestID: String = UUID().uuidString, atMs: Int64? = nil) async throws(StoreError) -> StoreClient.WriteReceipt {
        guard (0...4).contains(level) else { throw .invalidInput("alarm level must be 0 (system) … 4 (log)") }
        guard color.utf8.count == 7, color.hasPrefix("#") else { throw .invalidInput("alarm color must look like #rrggbb") }
        let at = atMs.map { "\($0)" } ?? Self.now
        return try await client.write(requestID: requestID, [
            .init("INSERT INTO alarms(container_id, unix_ms, level, color, msg) SELECT id, \(at), ?, ?, ? FROM containers WHERE id = ?",
                  [.int(level), .text(color), .text(message), .integer(containerUID - Self.baseUID)], mustChange: "no container \(containerUID)"),
        ])
    }

    // MARK: Operator tokens (admin API)

    /// Makes an operator token for the admin API; returns it (shown once: only its SHA-256 is stored).
    public func addOperatorToken(name: String, note: String? = nil, requestID: String = UUID().uuidString) async throws(StoreError) -> (token: String, receipt: StoreClient.WriteReceipt) {
        try Self.checkName(name, what: "token", max: 100)
        let token = "lgn_" + (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let receipt = try await client.write(requestID: requestID, [
            .init("INSERT INTO operator_tokens(name, token_sha256, note, ctime_ms) VALUES(?, ?, ?, \(Self.now))",
                  [.text(name), .text(Self.sha256Hex(token)), .optional(note)]),
        ])
        if receipt.replayed {
            throw .rejected("request \(requestID) already made token \(name), which was shown then and is not stored; revoke it and make a new one")
        }
        return (token, receipt)
    }

    public func operatorTokens() async throws(StoreError) -> DqliteRows {
        try await client.query("SELECT id, name, note, ctime_ms, last_used_ms FROM operator_tokens ORDER BY name")
    }

    @discardableResult
    public func deleteOperatorToken(name: String, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try await client.write(requestID: requestID, [
            .init("DELETE FROM operator_tokens WHERE name = ?", [.text(name)], mustChange: "no operator token named \(name)"),
        ])
    }

    /// The operator a token belongs to, if any.
    public func operatorName(token: String) async throws(StoreError) -> String? {
        guard token.hasPrefix("lgn_"), token.utf8.count == 68 else { return nil }
        return try await client.query("SELECT name FROM operator_tokens WHERE token_sha256 = ?", [.text(Self.sha256Hex(token))]).scalar?.string
    }

    static func sha256Hex(_ text: String) -> String {
        SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// The least-loaded server of a legion (most free memory) that fits the container; nil when none does.
    public func placement(legion: String, memory: Int, storage: Int) async throws(StoreError) -> String? {
        let rows = try await client.query("""
            SELECT s.name FROM legion_nodes n JOIN legions l ON l.id = n.legion_id JOIN servers s ON s.id = n.server_id
            WHERE l.name = ?
              AND s.memory - (SELECT coalesce(sum(memory), 0) FROM containers WHERE server_id = s.id) >= ?
              AND s.storage - (SELECT coalesce(sum(storage), 0) FROM containers WHERE server_id = s.id) >= ?
            ORDER BY s.memory - (SELECT coalesce(sum(memory), 0) FROM containers WHERE server_id = s.id) DESC, s.name LIMIT 1
            """, [.text(legion), .int(memory), .int(storage)])
        if rows.rows.isEmpty, try await client.query("SELECT 1 FROM legions WHERE name = ?", [.text(legion)]).rows.isEmpty {
            throw .rejected("no legion named \(legion)")
        }
        return rows.scalar?.string
    }

    // MARK: News

    @discardableResult
    public func addNews(content: String, isPublic: Bool, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        if content.isEmpty { throw .invalidInput("the news text is empty") }
        if content.utf8.count > 65536 { throw .invalidInput("the news text is longer than 65536 bytes") }
        return try await client.write(requestID: requestID, [
            .init("INSERT INTO news(content, public, ctime_ms, mtime_ms) VALUES(?, ?, \(Self.now), \(Self.now))", [.text(content), .int(isPublic ? 1 : 0)]),
        ])
    }

    public func news() async throws(StoreError) -> DqliteRows {
        try await client.query("SELECT id, public, ctime_ms, content FROM news ORDER BY ctime_ms DESC, id DESC")
    }

    @discardableResult
    public func deleteNews(id: Int64, requestID: String = UUID().uuidString) async throws(StoreError) -> StoreClient.WriteReceipt {
        try await client.write(requestID: requestID, [.init("DELETE FROM news WHERE id = ?", [.integer(id)], mustChange: "no news \(id)")])
    }

    // MARK: Validation helpers

    static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }

    static func isDomainName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        return labels.allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-") }
        }
    }
}
