import Testing
@testable import Store

@Suite struct StoreMembershipPlannerTests {
    func m(_ id: UInt64, _ role: DqliteMember.Role) -> DqliteMember { DqliteMember(id: id, address: "127.0.0.1:\(17300 + id)", role: role) }

    @Test func promotesRunningMembersUpToThreeVoters() {
        let members = [m(1, .voter), m(2, .spare), m(3, .spare)]
        #expect(StoreMembershipPlanner.next(members: members, reachable: [1, 2, 3], lost: [], leader: 1)
            == .assign(id: 2, role: .voter, reason: "1 healthy voter(s), target 3"))
        // Never a member that does not answer.
        #expect(StoreMembershipPlanner.next(members: members, reachable: [1, 3], lost: [], leader: 1)
            == .assign(id: 3, role: .voter, reason: "1 healthy voter(s), target 3"))
        #expect(StoreMembershipPlanner.next(members: members, reachable: [1], lost: [], leader: 1) == nil)
    }

    @Test func fiveVotersFromFiveNodesAndTheRestStandby() {
        var members = (1...6).map { m($0, $0 <= 5 ? .voter : .spare) }
        #expect(StoreMembershipPlanner.next(members: members, reachable: Set(1...6), lost: [], leader: 1)
            == .assign(id: 6, role: .standby, reason: "running spare"))
        members[5].role = .standby
        #expect(StoreMembershipPlanner.next(members: members, reachable: Set(1...6), lost: [], leader: 1) == nil)
        #expect(StoreMembershipPlanner.targetVoters(members: 4) == 3)
        #expect(StoreMembershipPlanner.targetVoters(members: 2) == 2)
    }

    @Test func replacesALostVoterThenDemotesIt() {
        var members = [m(1, .voter), m(2, .voter), m(3, .voter), m(4, .standby)]
        // Voter 3 is down: first promote the standby (quorum over running nodes)…
        #expect(StoreMembershipPlanner.next(members: members, reachable: [1, 2, 4], lost: [3], leader: 1)
            == .assign(id: 4, role: .voter, reason: "2 healthy voter(s), target 3"))
        members[3].role = .voter
        // …then demote the lost one.
        #expect(StoreMembershipPlanner.next(members: members, reachable: [1, 2, 4], lost: [3], leader: 1)
            == .assign(id: 3, role: .spare, reason: "voter unreachable; 3 healthy voter(s) remain"))
        // A 3-node store that lost one voter keeps it (demoting would leave 2 voters needing both).
        let three = [m(1, .voter), m(2, .voter), m(3, .voter)]
        #expect(StoreMembershipPlanner.next(members: three, reachable: [1, 2], lost: [3], leader: 1) == nil)
    }

    @Test func extraVotersStepDownButNeverTheLeader() {
        let members = [m(1, .voter), m(2, .voter), m(3, .voter), m(4, .voter)]
        #expect(StoreMembershipPlanner.next(members: members, reachable: [1, 2, 3, 4], lost: [], leader: 4)
            == .assign(id: 3, role: .standby, reason: "4 voters, target 3"))
    }

    @Test func containerAddressFollowsUwsgiItsFormula() {
        #expect(AdminStore.containerIP(id: 1) == "10.0.0.3")
        #expect(AdminStore.containerIP(id: 9) == "10.0.0.11")
        #expect(AdminStore.containerIP(id: 300) == "10.0.1.46")
    }

    @Test func passwordHashesUseAKDFAndVerify() throws {
        let hash = try PasswordHasher.hash("correct horse battery", iterations: 210_000)
        #expect(hash.hasPrefix("pbkdf2_sha256$210000$"))
        #expect(!hash.contains("correct"))
        #expect(PasswordHasher.verify("correct horse battery", against: hash))
        #expect(!PasswordHasher.verify("correct horse batterz", against: hash))
        #expect(!PasswordHasher.verify("x", against: "plain-text"))
        #expect(throws: StoreError.self) { try PasswordHasher.hash("short") }
        // Django's own test vector format: pbkdf2_sha256$<iterations>$<salt>$<base64>.
        #expect(hash.split(separator: "$").count == 4)
    }
}

