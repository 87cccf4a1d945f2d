import Foundation
import PackagePlugin

/// Writes `GitRevision.swift` for the target it is applied to (vhostctl): the commit the package
/// was built from, its commit date, and whether tracked files differ from it, for `--version`.
///
/// A prebuild command runs before every build, so a new commit or an edit is seen without a
/// clean build; the file is replaced only when its text changes, so an unchanged tree does not
/// recompile the target. It runs `git` from the system (a prebuild command may not run a tool
/// built from source). Where the package directory is not the top of a git work tree (a
/// tarball, or a copy inside another repository) or git is missing, the revision is unknown.
@main
struct GitRevisionPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let outputDirectory = context.pluginWorkDirectoryURL.appending(path: "generated")
        return [
            .prebuildCommand(
                displayName: "Recording the git revision for \(target.name)",
                executable: URL(filePath: "/bin/sh"),
                arguments: ["-c", Self.script, "git-revision",
                            context.package.directoryURL.path(percentEncoded: false),
                            outputDirectory.path(percentEncoded: false)],
                outputFilesDirectory: outputDirectory
            ),
        ]
    }

    /// `sh -c SCRIPT git-revision PACKAGE_DIR OUTPUT_DIR`. Only the package's own work tree
    /// counts: `git rev-parse --show-toplevel` must be the package directory itself.
    static let script = #"""
    set -u
    package=$1 out=$2
    mkdir -p "$out" || exit 1
    commit='nil' date='nil' modified=false
    top=$(git -C "$package" rev-parse --show-toplevel 2>/dev/null || true)
    if [ -n "$top" ] && [ "$(cd "$top" && pwd -P)" = "$(cd "$package" && pwd -P)" ]; then
        hash=$(git -C "$package" rev-parse --short=7 HEAD 2>/dev/null || true)
        day=$(git -C "$package" show -s --format=%cs HEAD 2>/dev/null || true)
        if [ -n "$hash" ]; then
            commit="\"$hash\""
            [ -n "$day" ] && date="\"$day\""
            [ -n "$(git -C "$package" status --porcelain --untracked-files=no 2>/dev/null)" ] && modified=true
        fi
    fi
    tmp="$out/.GitRevision.swift.new"
    cat > "$tmp" <<SWIFT
    // Written by the GitRevision build-tool plugin (Plugins/GitRevision) before each build; not in git.
    enum GitRevision {
        /// The abbreviated commit the build came from; nil outside a git checkout of the package.
        static let commit: String? = $commit
        /// The commit's date (YYYY-MM-DD); nil outside a git checkout.
        static let commitDate: String? = $date
        /// Whether tracked files differed from the commit when it was built.
        static let modified = $modified
    }
    SWIFT
    if cmp -s "$tmp" "$out/GitRevision.swift"; then rm -f "$tmp"; else mv "$tmp" "$out/GitRevision.swift"; fi
    """#
}
