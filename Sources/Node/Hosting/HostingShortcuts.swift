/// uwsgi.it's custom vassal options (`shortcuts.ini`, §3.8), expanded by uWSGI itself through `declare-option2`
/// and injected before every customer vassal (`--set inject-before=…`), so a vassal file needs only
/// `domain = example.com` or `cluster-domain = example.com`. Each shortcut binds a unix socket in the
/// container's `run/` (named from the domain and `%J`, the hash of the vassal file's path, so two vassals
/// never collide) and sends **signed** subscriptions (the customer's `etc/uwsgi.key`) to this node's router:
/// the HTTP subscription socket for `domain`, the cluster subscription socket for `cluster-domain` (relayed to
/// every member, so the Lord balances across nodes). `unsubscribe-on-graceful-reload` is on: while a vassal
/// reloads, the router sends its requests to the domain's other vassals instead of queueing them.
public enum HostingShortcuts {
    public struct Routes: Sendable, Equatable {
        /// `HOST:PORT` of the HTTP router's subscription server (nil: no router on this node).
        public var http: String?
        /// `HOST:PORT` of the cluster subscription server (nil: no cluster domains here).
        public var cluster: String?
        /// The digest the router checks signatures with (`[router] sign_check`); uwsgi.it used SHA1.
        public var digest: String
        public init(http: String?, cluster: String?, digest: String = "SHA1") {
            self.http = http
            self.cluster = cluster
            self.digest = digest
        }
    }

    public static func render(home: String, routes: Routes) -> String {
        let key = "sign=\(routes.digest):\(home)/etc/uwsgi.key"
        func socket(_ name: String) -> String { "\(home)/run/\(name)_%J.socket" }
        func subscribe(_ server: String?, extra: String = "") -> String {
            guard let server else { return "" }
            return ";subscribe2=server=\(server),key=$1,addr=\(socket("$1")),\(key)\(extra)"
        }
        let sni = ",sni_key=$2,sni_crt=$3"
        let sniCA = ",sni_key=$2,sni_crt=$3,sni_ca=$4"
        var lines = [
            "[uwsgi]",
            "; legion: uwsgi.it's shortcuts for customer vassals (generated; rewritten when the node's routes change)",
            "unsubscribe-on-graceful-reload = true",
            "; zero-stall reloads: touching a vassal file chain-reloads its workers through this FIFO (lazy-apps: each",
            "; worker loads the app, so a new worker runs the new code); editing the file reloads it fully",
            "lazy-apps = true",
            "master-fifo = \(home)/run/%n.fifo",
            "declare-option2 = domain=socket=\(socket("$1"))\(subscribe(routes.http))",
            "declare-option2 = cluster-domain=socket=\(socket("$1"))\(subscribe(routes.cluster))",
            "declare-option2 = ssl-domain=socket=\(socket("$1"))\(subscribe(routes.http, extra: sni))",
            "declare-option2 = ssl-cluster-domain=socket=\(socket("$1"))\(subscribe(routes.cluster, extra: sni))",
            "declare-option2 = ssl-ca-domain=socket=\(socket("$1"))\(subscribe(routes.http, extra: sniCA))",
            "declare-option2 = ssl-ca-cluster-domain=socket=\(socket("$1"))\(subscribe(routes.cluster, extra: sniCA))",
        ]
        lines.append("")
        return lines.joined(separator: "\n")
    }
}
