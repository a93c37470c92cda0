import Foundation

/// What one node needs from the store to host and route, kept on local disk so hosting and routing go on from
/// the last known state while the store has no quorum (static stability).
public struct DesiredState: Codable, Sendable, Equatable {
    public struct Container: Codable, Sendable, Equatable {
        public var uid: Int64
        public var name: String
        public var customer: String
        public var memory: Int64
        public var storage: Int64
        public var distro: String?
        public var ip: String
        public var lastRebootMs: Int64
        public var sshKeys: String?
        /// The customer's key pair (PEM): vassals sign their domain subscriptions with it (nil in snapshots
        /// written before hosting existed).
        public var rsaKey: String?
        public var rsaPubkey: String?
        /// The customer's domains: the only ones this container's vassals may attach.
        public var customerDomains: [String]?
        public var customerUUID: String?
        /// Storage use (percent) that raises a quota alarm (uwsgi.it's `quota_threshold`; 0 = never).
        public var quotaThreshold: Int64?
        /// At most one alarm of a kind per this many seconds (`alarm_freq`, ≥ 60).
        public var alarmFreq: Int64?
        /// The distro's directory name (under the node's distros directory); nil: the node's host-/usr template.
        public var distroPath: String?

        public init(uid: Int64, name: String, customer: String, memory: Int64, storage: Int64, distro: String?, ip: String,
                    lastRebootMs: Int64, sshKeys: String?, rsaKey: String? = nil, rsaPubkey: String? = nil,
                    customerDomains: [String]? = nil, customerUUID: String? = nil, quotaThreshold: Int64? = nil, alarmFreq: Int64? = nil,
                    distroPath: String? = nil) {
            self.distroPath = distroPath
            self.uid = uid
            self.name = name
            self.customer = customer
            self.memory = memory
            self.storage = storage
            self.distro = distro
            self.ip = ip
            self.lastRebootMs = lastRebootMs
            self.sshKeys = sshKeys
            self.rsaKey = rsaKey
            self.rsaPubkey = rsaPubkey
            self.customerDomains = customerDomains
            self.customerUUID = customerUUID
            self.quotaThreshold = quotaThreshold
            self.alarmFreq = alarmFreq
        }
    }

    public struct Domain: Codable, Sendable, Equatable {
        public var name: String
        public var customer: String
    }

    /// The change-log sequence number this state reflects.
    public var version: Int64
    public var fetchedAtMs: Int64
    public var server: String
    /// Containers placed on this server.
    public var containers: [Container]
    /// Every domain (the router accepts subscriptions for them from the owner's containers).
    public var domains: [Domain]
    /// Customer name → RSA public key (PEM), to verify signed subscriptions.
    public var customerKeys: [String: String]
    /// Two-sided links of this server's containers (A linked B and B linked A), with the peer's server address
    /// (nil in snapshots written before container networking existed).
    public var links: [Link]?
    /// Port mappings (public port → container port) of this server's containers.
    public var portMappings: [PortMapping]?
    /// Loopboxes (ext4 images in a home, mounted in it) of this server's containers.
    public var loopboxes: [Loopbox]?
    /// Admin firewall rules of this server's containers, highest priority first.
    public var rules: [Rule]?

    public struct Rule: Codable, Sendable, Equatable, Hashable {
        public var uid: Int64
        /// `in` (to the container) or `out` (from it).
        public var direction: String
        public var src: String
        public var dst: String
        /// `allow` or `deny`.
        public var action: String
        public init(uid: Int64, direction: String, src: String, dst: String, action: String) {
            self.uid = uid
            self.direction = direction
            self.src = src
            self.dst = dst
            self.action = action
        }
    }

    public struct Loopbox: Codable, Sendable, Equatable, Hashable {
        public var id: Int64
        public var uid: Int64
        /// Both relative to the home (the store's CHECKs refuse '..', absolute paths and reserved directories).
        public var filename: String
        public var mountpoint: String
        public var readOnly: Bool
        public init(id: Int64, uid: Int64, filename: String, mountpoint: String, readOnly: Bool) {
            self.id = id
            self.uid = uid
            self.filename = filename
            self.mountpoint = mountpoint
            self.readOnly = readOnly
        }
    }

    public struct Link: Codable, Sendable, Equatable, Hashable {
        public var local: Int64
        public var peer: Int64
        public var peerAddress: String
        public init(local: Int64, peer: Int64, peerAddress: String) {
            self.local = local
            self.peer = peer
            self.peerAddress = peerAddress
        }
    }

    public struct PortMapping: Codable, Sendable, Equatable, Hashable {
        public var proto: String
        public var publicPort: Int64
        public var uid: Int64
        public var privatePort: Int64
        public init(proto: String, publicPort: Int64, uid: Int64, privatePort: Int64) {
            self.proto = proto
            self.publicPort = publicPort
            self.uid = uid
            self.privatePort = privatePort
        }
    }

    public static func empty(server: String) -> DesiredState {
        DesiredState(version: -1, fetchedAtMs: 0, server: server, containers: [], domains: [], customerKeys: [:])
    }

    /// Reads the state for `server` at change-log position `version`.
    public static func fetch(_ client: StoreClient, server: String, version: Int64) async throws(StoreError) -> DesiredState {
        let containers = try await client.query("""
            SELECT k.id, k.name, c.username, k.memory, k.storage, d.name, k.last_reboot_ms, k.ssh_keys_raw,
                   c.rsa_key, c.rsa_pubkey, c.uuid, k.quota_threshold, k.alarm_freq, d.path
            FROM containers k JOIN customers c ON c.id = k.customer_id JOIN servers s ON s.id = k.server_id
            LEFT JOIN distros d ON d.id = k.distro_id WHERE s.name = ? ORDER BY k.id
            """, [.text(server)])
        let domains = try await client.query("""
            SELECT d.name, c.username FROM domains d JOIN customers c ON c.id = d.customer_id ORDER BY d.name
            """)
        let keys = try await client.query("SELECT username, rsa_pubkey FROM customers WHERE id IN (SELECT customer_id FROM domains)")
        let links = try await client.query("""
            SELECT l.container_id, l.to_id, ps.address FROM container_links l
            JOIN container_links r ON r.container_id = l.to_id AND r.to_id = l.container_id
            JOIN containers k ON k.id = l.container_id JOIN servers s ON s.id = k.server_id
            JOIN containers p ON p.id = l.to_id JOIN servers ps ON ps.id = p.server_id
            WHERE s.name = ? ORDER BY l.container_id, l.to_id
            """, [.text(server)])
        let portmaps = try await client.query("""
            SELECT m.proto, m.public_port, m.container_id, m.private_port FROM portmaps m
            JOIN containers k ON k.id = m.container_id JOIN servers s ON s.id = k.server_id
            WHERE s.name = ? ORDER BY m.proto, m.public_port, m.container_id
            """, [.text(server)])
        let loopboxes = try await client.query("""
            SELECT l.id, l.container_id, l.filename, l.mountpoint, l.ro FROM loopboxes l
            JOIN containers k ON k.id = l.container_id JOIN servers s ON s.id = k.server_id
            WHERE s.name = ? ORDER BY l.id
            """, [.text(server)])
        let rules = try await client.query("""
            SELECT r.container_id, r.direction, r.src, r.dst, r.action FROM rules r
            JOIN containers k ON k.id = r.container_id JOIN servers s ON s.id = k.server_id
            WHERE s.name = ? ORDER BY r.priority DESC, r.id
            """, [.text(server)])
        var state = DesiredState(version: version, fetchedAtMs: Int64(Date().timeIntervalSince1970 * 1000), server: server,
                                 containers: [], domains: [], customerKeys: [:])
        for row in domains.rows where row.count == 2 {
            state.domains.append(Domain(name: row[0].string ?? "", customer: row[1].string ?? ""))
        }
        var domainsByCustomer: [String: [String]] = [:]
        for d in state.domains { domainsByCustomer[d.customer, default: []].append(d.name) }
        for row in containers.rows where row.count == 14 {
            let id = row[0].int ?? 0
            let customer = row[2].string ?? ""
            state.containers.append(Container(uid: AdminStore.baseUID + id, name: row[1].string ?? "", customer: customer,
                                              memory: row[3].int ?? 0, storage: row[4].int ?? 0, distro: row[5].string,
                                              ip: AdminStore.containerIP(id: id), lastRebootMs: row[6].int ?? 0, sshKeys: row[7].string,
                                              rsaKey: row[8].string, rsaPubkey: row[9].string,
                                              customerDomains: domainsByCustomer[customer] ?? [], customerUUID: row[10].string,
                                              quotaThreshold: row[11].int, alarmFreq: row[12].int, distroPath: row[13].string))
        }
        for row in keys.rows where row.count == 2 {
            if let name = row[0].string, let key = row[1].string { state.customerKeys[name] = key }
        }
        state.links = links.rows.compactMap { row in
            guard row.count == 3, let a = row[0].int, let b = row[1].int, let address = row[2].string else { return nil }
            return Link(local: AdminStore.baseUID + a, peer: AdminStore.baseUID + b, peerAddress: address)
        }
        state.rules = rules.rows.compactMap { row in
            guard row.count == 5, let k = row[0].int, let d = row[1].string, let src = row[2].string, let dst = row[3].string,
                  let action = row[4].string else { return nil }
            return Rule(uid: AdminStore.baseUID + k, direction: d, src: src, dst: dst, action: action)
        }
        state.loopboxes = loopboxes.rows.compactMap { row in
            guard row.count == 5, let id = row[0].int, let k = row[1].int, let file = row[2].string, let mount = row[3].string else { return nil }
            return Loopbox(id: id, uid: AdminStore.baseUID + k, filename: file, mountpoint: mount, readOnly: (row[4].int ?? 0) != 0)
        }
        state.portMappings = portmaps.rows.compactMap { row in
            guard row.count == 4, let proto = row[0].string, let pub = row[1].int, let id = row[2].int, let priv = row[3].int else { return nil }
            return PortMapping(proto: proto, publicPort: pub, uid: AdminStore.baseUID + id, privatePort: priv)
        }
        return state
    }

    // MARK: Local snapshot

    /// Writes the state atomically (temporary file + rename), so a crash never leaves a torn snapshot.
    public func save(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(self)
        // It holds customers' private keys: readable by this node's user only.
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: temporary])
        }
        guard rename(temporary, path) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }

    /// The last saved state, or nil when there is none or it cannot be read (then the node waits for the store).
    public static func load(from path: String) -> DesiredState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(DesiredState.self, from: data)
    }
}
