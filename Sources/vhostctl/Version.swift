/// What `vhostctl --version` prints: the release and the git revision the binary was built from.
enum VhostCtlVersion {
    /// The release number of swift-vhost and vhostctl (semantic versioning).
    static let number = "0.9.0"

    /// `vhostctl 0.9.0 (git b6edd26, 2026-05-01)`; `git b6edd26 with local changes` when tracked
    /// files differed from the commit; `unknown revision` for a build outside a git checkout.
    /// The revision comes from `GitRevision`, written before each build by Plugins/GitRevision.
    static var description: String {
        describe(commit: GitRevision.commit, date: GitRevision.commitDate, modified: GitRevision.modified)
    }

    static func describe(commit: String?, date: String?, modified: Bool) -> String {
        guard let commit else { return "vhostctl \(number) (unknown revision: not built from a git checkout)" }
        var revision = "git \(commit)"
        if modified { revision += " with local changes" }
        if let date { revision += ", committed \(date)" }
        return "vhostctl \(number) (\(revision))"
    }
}
