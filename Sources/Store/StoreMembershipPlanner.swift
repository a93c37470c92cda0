/// Decides the next role change of the dqlite cluster (pure; the leader's node applies one change per round,
/// as LXD does): keep 3 voters (5 once there are ≥ 5 members) among members that run, the rest standby; replace a
/// voter that has been unreachable for a while; never promote a member that does not answer.
public enum StoreMembershipPlanner {
    public enum Change: Sendable, Equatable, CustomStringConvertible {
        case assign(id: UInt64, role: DqliteMember.Role, reason: String)

        public var description: String {
            switch self {
            case .assign(let id, let role, let reason): "assign node \(id) as \(role): \(reason)"
            }
        }
    }

    public static func targetVoters(members: Int) -> Int { members >= 5 ? 5 : min(3, members) }

    /// - Parameters:
    ///   - members: CLUSTER's answer.
    ///   - reachable: members that answered a probe just now.
    ///   - lost: members unreachable for longer than the grace period (a subset of the unreachable ones).
    ///   - leader: the current leader (never demoted here).
    public static func next(members: [DqliteMember], reachable: Set<UInt64>, lost: Set<UInt64>, leader: UInt64) -> Change? {
        let target = targetVoters(members: members.count)
        let voters = members.filter { $0.role == .voter }
        let healthyVoters = voters.filter { reachable.contains($0.id) }
        // Prefer standbys (already replicating) over spares; lower ids first for determinism.
        let candidates = members
            .filter { $0.role != .voter && reachable.contains($0.id) }
            .sorted { ($0.role == .standby ? 0 : 1, $0.id) < ($1.role == .standby ? 0 : 1, $1.id) }

        // 1. Too few healthy voters: promote a running non-voter.
        if healthyVoters.count < target, let candidate = candidates.first {
            return .assign(id: candidate.id, role: .voter,
                           reason: "\(healthyVoters.count) healthy voter(s), target \(target)")
        }
        // 2. A lost voter whose place is taken: demote it so the quorum counts only running nodes.
        if healthyVoters.count >= target, let dead = voters.first(where: { lost.contains($0.id) && $0.id != leader }) {
            return .assign(id: dead.id, role: .spare, reason: "voter unreachable; \(healthyVoters.count) healthy voter(s) remain")
        }
        // 3. More voters than the target (all healthy): step one down to standby.
        if voters.count > target, healthyVoters.count > target,
           let extra = voters.filter({ $0.id != leader }).max(by: { $0.id < $1.id }) {
            return .assign(id: extra.id, role: .standby, reason: "\(voters.count) voters, target \(target)")
        }
        // 4. Running spares become standbys (they replicate and can be promoted at once).
        if let spare = members.filter({ $0.role == .spare && reachable.contains($0.id) }).min(by: { $0.id < $1.id }) {
            return .assign(id: spare.id, role: .standby, reason: "running spare")
        }
        return nil
    }
}
