import ArgumentParser
import Foundation
import Node
import Store

/// `legion admin …`: create, list and delete the control-plane records (customers, servers, legions, distros,
/// containers, domains) in the replicated store.
struct AdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "Create, list and delete customers, servers, legions, distros, containers and domains in the store.",
        discussion: """
        Example:
          legion admin customer add alice --password-stdin <<< 'correct horse battery'
          legion admin server add node1 --address 127.0.0.1 --memory 4096 --storage 40960
          legion admin container add web --customer alice --server node1 --memory 256 --storage 2048
          legion admin domain add example.com --customer alice
          legion admin container list --json
        Every write is one transaction applied at most once (pass --request-id to make a retry safe).
        """,
        subcommands: [Customer.self, Server.self, Legion.self, Distro.self, Container.self, Rule.self, Domain.self, News.self, Token.self]
    )

    struct WriteOptions: ParsableArguments {
        @OptionGroup var store: StoreOptions

        @Option(help: "Idempotency key: repeating a command with the same id applies it at most once.")
        var requestID: String?

        var id: String { requestID ?? UUID().uuidString }
    }

    static func run<T: Sendable>(_ store: StoreOptions, _ body: (AdminStore) async throws(StoreError) -> T) async throws -> T {
        let client = try store.client()
        defer { Task { await client.close() } }
        do {
            return try await body(AdminStore(client: client))
        } catch {
            throw UserFacingError("\(error)")
        }
    }

    static func printRows(_ rows: DqliteRows, json: Bool) {
        print(json ? rows.json.serialized : rows.table)
    }

    static func done(_ what: String, _ receipt: StoreClient.WriteReceipt) {
        print("\(what)\(receipt.replayed ? " (already applied by request \(receipt.requestID))" : "")")
    }

    // MARK: customer

    struct Customer: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Customers (API logins with a password hash and an RSA key pair).",
                                                        subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add a customer; the password is asked (no echo) or read from stdin.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Login name.") var name: String
            @Flag(help: "Read the password from the first line of standard input.") var passwordStdin = false
            @Option(help: "E-mail address.") var email: String?
            @Option(help: "Company name.") var company: String?
            @Option(help: "VAT number.") var vat: String?

            func run() async throws {
                let password = try PasswordInput.read(fromStdin: passwordStdin)
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.addCustomer(username: name, password: password, email: email, company: company, vat: vat, requestID: options.id)
                }
                AdminCommand.done("customer \(name) added (id \(receipt.insertIDs.first ?? 0))", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List customers.")
            @OptionGroup var store: StoreOptions
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.customers() }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a customer (refused while it has containers).")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Login name.") var name: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteCustomer(username: name, requestID: options.id) }
                AdminCommand.done("customer \(name) deleted", receipt)
            }
        }
    }

    // MARK: server

    struct Server: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Servers (the nodes that host containers).",
                                                        subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add a server.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Server name (the node's [node].name).") var name: String
            @Option(help: "Public IP address.") var address: String
            @Option(help: "Memory for containers, MB.") var memory: Int
            @Option(help: "Storage for containers, MB.") var storage: Int
            @Option(help: "Block device for quotas.") var hd = ""
            @Option(help: "Datacenter name (created if missing).") var datacenter: String?
            @Option(help: "Owner (customer login) of a dedicated server: they may create containers and map ports on it.") var owner: String?
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.addServer(name: name, address: address, memory: memory, storage: storage, hd: hd, datacenter: datacenter,
                                              owner: owner, requestID: options.id)
                }
                AdminCommand.done("server \(name) added", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List servers with used memory and storage.")
            @OptionGroup var store: StoreOptions
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.servers() }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a server (refused while it hosts containers).")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Server name.") var name: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteServer(name: name, requestID: options.id) }
                AdminCommand.done("server \(name) deleted", receipt)
            }
        }
    }

    // MARK: legion

    struct Legion: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Legions (a failover IP shared by servers).",
                                                        subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add a legion.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Legion name.") var name: String
            @Option(help: "The failover IP.") var address: String
            @Option(help: "Comma-separated server names.") var nodes: String
            func run() async throws {
                let servers = nodes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.addLegion(name: name, address: address, servers: servers, requestID: options.id)
                }
                AdminCommand.done("legion \(name) added", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List legions.")
            @OptionGroup var store: StoreOptions
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.legions() }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a legion.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Legion name.") var name: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteLegion(name: name, requestID: options.id) }
                AdminCommand.done("legion \(name) deleted", receipt)
            }
        }
    }

    // MARK: distro

    struct Distro: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Distros (shared root filesystems under /distros).",
                                                        subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add a distro.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Distro name.") var name: String
            @Option(help: "Directory name under /distros.") var path: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.addDistro(name: name, path: path, requestID: options.id) }
                AdminCommand.done("distro \(name) added", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List distros.")
            @OptionGroup var store: StoreOptions
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.distros() }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a distro.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Distro name.") var name: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteDistro(name: name, requestID: options.id) }
                AdminCommand.done("distro \(name) deleted", receipt)
            }
        }
    }

    // MARK: rule

    struct Rule: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Extra firewall rules for a container's traffic with the outside (routed networks; links decide container ↔ container).",
            discussion: "Example: legion admin rule add 30001 --direction out --dst 203.0.113.0/24 --action deny",
            subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add a rule (applied live by the container's node).")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Container uid (30001…).") var uid: Int64
            @Option(help: "in (to the container) or out (from it).") var direction: String
            @Option(help: "Source: IPv4 address/CIDR or any.") var src = "any"
            @Option(help: "Destination: IPv4 address/CIDR or any.") var dst = "any"
            @Option(help: "allow or deny.") var action: String
            @Option(help: "Higher first.") var priority = 0
            @Option(help: "A note for operators.") var note: String?
            func run() async throws {
                let (uuid, receipt) = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.addRule(containerUID: uid, direction: direction, src: src, dst: dst, action: action, priority: priority,
                                            note: note, requestID: options.id)
                }
                AdminCommand.done("rule \(uuid) added to container \(uid)", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List rules (of one container, or all).")
            @OptionGroup var store: StoreOptions
            @Option(help: "Container uid.") var container: Int64?
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.rules(containerUID: container) }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a rule by its uuid.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Rule uuid (legion admin rule list).") var uuid: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteRule(uuid: uuid, requestID: options.id) }
                AdminCommand.done("rule \(uuid) deleted", receipt)
            }
        }
    }

    // MARK: container

    struct Container: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Containers (uid = 30000 + id; private IP 10.0.0.0 | (id + 2)).",
                                                        subcommands: [Add.self, List.self, Delete.self, Reboot.self, Resize.self, SSHKeys.self])

        struct Resize: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Change a container's memory and/or storage (MB); its node restarts it with the new limits, data kept.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Container uid (30001, …).") var uid: Int64
            @Option(help: "Memory, MB.") var memory: Int?
            @Option(help: "Storage, MB.") var storage: Int?
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.resizeContainer(uid: uid, memory: memory, storage: storage, requestID: options.id)
                }
                AdminCommand.done("container \(uid) resized", receipt)
            }
        }

        struct Reboot: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Restart a container (its node restarts its sub-Emperor and vassals).")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Container uid (30001, …).") var uid: Int64
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.rebootContainer(uid: uid, requestID: options.id) }
                AdminCommand.done("container \(uid) rebooted", receipt)
            }
        }

        struct SSHKeys: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "ssh-keys",
                                                            abstract: "Replace a container's authorized ssh keys (no restart).")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Container uid (30001, …).") var uid: Int64
            @Option(help: "A file of authorized_keys lines ('-' for standard input).") var file: String
            func run() async throws {
                let text: String
                if file == "-" {
                    text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                } else {
                    guard let t = try? String(contentsOfFile: file, encoding: .utf8) else { throw UserFacingError("cannot read \(file)") }
                    text = t
                }
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.setContainerSSHKeys(uid: uid, keys: text, requestID: options.id)
                }
                AdminCommand.done("container \(uid): ssh keys replaced", receipt)
            }
        }

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add a container on a server, or on the least-loaded server of a legion (refused if it lacks memory or storage).")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Container name.") var name: String
            @Option(help: "Owner (customer login).") var customer: String
            @Option(help: "Server name.") var server: String?
            @Option(help: "Legion name: place the container on its server with the most free memory (instead of --server).") var legion: String?
            @Option(help: "Memory, MB.") var memory: Int
            @Option(help: "Storage, MB.") var storage: Int
            @Option(help: "Distro name.") var distro: String?
            @Option(help: "A file of authorized_keys lines.") var sshKeysFile: String?
            func run() async throws {
                var keys: String?
                if let sshKeysFile {
                    guard let text = try? String(contentsOfFile: sshKeysFile, encoding: .utf8) else { throw UserFacingError("cannot read \(sshKeysFile)") }
                    keys = text
                }
                guard (server == nil) != (legion == nil) else { throw ValidationError("give either --server or --legion") }
                let (receipt, placed) = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    var target = server ?? ""
                    if let legion {
                        guard let found = try await admin.placement(legion: legion, memory: memory, storage: storage) else {
                            throw StoreError.rejected("no server of legion \(legion) has \(memory) MB memory and \(storage) MB storage free")
                        }
                        target = found
                    }
                    let receipt = try await admin.addContainer(name: name, customer: customer, server: target, memory: memory, storage: storage,
                                                               distro: distro, sshKeys: keys, requestID: options.id)
                    return (receipt, target)
                }
                let id = receipt.insertIDs.first ?? 0
                AdminCommand.done("container \(name) added on \(placed): uid \(AdminStore.baseUID + id), ip \(AdminStore.containerIP(id: id))", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List containers.")
            @OptionGroup var store: StoreOptions
            @Option(help: "Only containers on this server.") var server: String?
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.containers(server: server) }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a container by uid.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Container uid (30001…).") var uid: Int64
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteContainer(uid: uid, requestID: options.id) }
                AdminCommand.done("container \(uid) deleted", receipt)
            }
        }
    }

    // MARK: domain

    struct Domain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Domains (owned by a customer; unique across customers).",
                                                        subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Add a domain for a customer.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Domain name.") var name: String
            @Option(help: "Owner (customer login).") var customer: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.addDomain(name: name, customer: customer, requestID: options.id) }
                AdminCommand.done("domain \(name) added", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List domains.")
            @OptionGroup var store: StoreOptions
            @Option(help: "Only this customer's domains.") var customer: String?
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.domains(customer: customer) }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a domain.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Domain name.") var name: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteDomain(name: name, requestID: options.id) }
                AdminCommand.done("domain \(name) deleted", receipt)
            }
        }
    }

    // MARK: news

    struct News: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "News shown to customers (GET /api/news; public ones also anonymously).",
                                                        subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Publish a news item.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "The text.") var content: String
            @Flag(name: .customLong("public"), help: "Shown without credentials too.") var isPublic = false
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.addNews(content: content, isPublic: isPublic, requestID: options.id)
                }
                AdminCommand.done("news \(receipt.insertIDs.first ?? 0) added", receipt)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List news, newest first.")
            @OptionGroup var store: StoreOptions
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.news() }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a news item.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "News id.") var id: Int64
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteNews(id: id, requestID: options.id) }
                AdminCommand.done("news \(id) deleted", receipt)
            }
        }
    }

    // MARK: operator tokens

    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Operator tokens for the admin API (/admin/…, Authorization: Bearer TOKEN).",
                                                        subcommands: [Add.self, List.self, Delete.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Make a token; it is printed once (only its SHA-256 is stored).")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Token name (who or what uses it).") var name: String
            @Option(help: "A note.") var note: String?
            func run() async throws {
                let (token, _) = try await AdminCommand.run(options.store) { admin throws(StoreError) in
                    try await admin.addOperatorToken(name: name, note: note, requestID: options.id)
                }
                print(token)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List tokens (names, not the tokens).")
            @OptionGroup var store: StoreOptions
            @Flag(help: "JSON output.") var json = false
            func run() async throws {
                AdminCommand.printRows(try await AdminCommand.run(store) { admin throws(StoreError) in try await admin.operatorTokens() }, json: json)
            }
        }

        struct Delete: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Revoke a token.")
            @OptionGroup var options: WriteOptions
            @Argument(help: "Token name.") var name: String
            func run() async throws {
                let receipt = try await AdminCommand.run(options.store) { admin throws(StoreError) in try await admin.deleteOperatorToken(name: name, requestID: options.id) }
                AdminCommand.done("token \(name) revoked", receipt)
            }
        }
    }
}
