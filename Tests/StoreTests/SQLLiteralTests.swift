import Testing
@testable import Store

@Suite struct SQLLiteralTests {
    @Test func parametersBecomeExactLiterals() {
        #expect(SQLLiteral.inline("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [.integer(-5), .text("it's"), .null, .blob([0, 255]), .float(2.5)])
                == "INSERT INTO t VALUES (-5, 'it''s', NULL, X'00ff', 2.5)")
        // Numbered parameters, reused; '?' inside strings, identifiers and comments is left alone.
        #expect(SQLLiteral.inline("SELECT ?2, ?1, ?2, '?', \"a?\" -- ?\n/* ? */ FROM t", [.integer(1), .text("x")])
                == "SELECT 'x', 1, 'x', '?', \"a?\" -- ?\n/* ? */ FROM t")
        #expect(SQLLiteral.inline("SELECT 'it''s ?', ?", [.integer(7)]) == "SELECT 'it''s ?', 7")
        // No exact literal, a missing or unused parameter, a named one: the bound path.
        #expect(SQLLiteral.inline("SELECT ?", [.float(.nan)]) == nil)
        #expect(SQLLiteral.inline("SELECT ?", [.text("a\u{0}b")]) == nil)
        #expect(SQLLiteral.inline("SELECT ?, ?", [.integer(1)]) == nil)
        #expect(SQLLiteral.inline("SELECT ?", [.integer(1), .integer(2)]) == nil)
        #expect(SQLLiteral.inline("SELECT :name", []) == nil)
        #expect(SQLLiteral.inline("SELECT ?3", [.integer(1)]) == nil)
        // Injection attempts stay data.
        #expect(SQLLiteral.inline("SELECT ?", [.text("'); DROP TABLE t; --")]) == "SELECT '''); DROP TABLE t; --'")
    }
}
