//! The only commands the server runs, parsed without a shell.

use paastech_core::{Error, ProjectName, Result};

/// The git service a client asks for over SSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    /// `git push`.
    ReceivePack,
    /// `git fetch`, `git clone`.
    UploadPack,
}

impl GitService {
    /// The `git` subcommand that serves it.
    pub fn subcommand(self) -> &'static str {
        match self {
            GitService::ReceivePack => "receive-pack",
            GitService::UploadPack => "upload-pack",
        }
    }

    /// Whether it can change the repository.
    pub fn is_write(self) -> bool {
        self == GitService::ReceivePack
    }
}

/// Parses what git's SSH transport sends: `git-receive-pack 'NAME.git'` or
/// `git-upload-pack 'NAME.git'`. Also accepted: the `git receive-pack` spelling, double
/// quotes or none, a leading `/`, no `.git`. Nothing else: one argument, no escapes, no
/// trailing text, and the name must be a valid project name — so nothing a shell would
/// interpret can get through, even though no shell ever runs.
pub fn parse_git_command(command: &str) -> Result<(GitService, ProjectName)> {
    let unsupported = || {
        Error::Invalid(
            "unsupported command: only git push and git fetch (git-receive-pack, git-upload-pack) are served"
                .to_owned(),
        )
    };
    let (service, arg) = [
        ("git-receive-pack ", GitService::ReceivePack),
        ("git receive-pack ", GitService::ReceivePack),
        ("git-upload-pack ", GitService::UploadPack),
        ("git upload-pack ", GitService::UploadPack),
    ]
    .iter()
    .find_map(|(prefix, service)| command.strip_prefix(prefix).map(|arg| (*service, arg)))
    .ok_or_else(unsupported)?;

    let path =
        ['\'', '"'].iter().find_map(|q| arg.strip_prefix(*q).and_then(|rest| rest.strip_suffix(*q))).unwrap_or(arg);
    let path = path.strip_prefix('/').unwrap_or(path);
    let name = path.strip_suffix(".git").unwrap_or(path);
    // ProjectName allows only [a-z0-9-]: no quote, space, slash, dot or control character
    // survives this, whatever the quoting above let through.
    let project = ProjectName::parse(name).map_err(|_| {
        Error::Invalid(format!("invalid repository path: use ssh://HOST/NAME.git ({})", ProjectName::RULE))
    })?;
    Ok((service, project))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_git_sends() {
        let good = [
            ("git-receive-pack 'blog.git'", GitService::ReceivePack, "blog"),
            ("git-upload-pack 'blog.git'", GitService::UploadPack, "blog"),
            ("git-receive-pack '/blog.git'", GitService::ReceivePack, "blog"),
            ("git-upload-pack '/my-app2'", GitService::UploadPack, "my-app2"),
            ("git receive-pack 'blog.git'", GitService::ReceivePack, "blog"),
            ("git upload-pack \"blog.git\"", GitService::UploadPack, "blog"),
            ("git-upload-pack \"/blog\"", GitService::UploadPack, "blog"),
            ("git-upload-pack blog.git", GitService::UploadPack, "blog"),
            ("git-receive-pack /blog", GitService::ReceivePack, "blog"),
        ];
        for (input, service, name) in good {
            let (s, p) = parse_git_command(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!((s, p.as_str()), (service, name), "{input:?}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let bad = [
            "",
            "ls",
            "sh",
            "git-receive-pack",
            "git-receive-pack ",
            "git-receive-pack ''",
            "git-receive-pack 'a.git'; rm -rf /",
            "git-receive-pack 'blog.git' && id",
            "git-receive-pack 'blog.git' extra",
            "git-receive-pack 'blog.git",
            "git-receive-pack blog.git'",
            "git-receive-pack '../x'",
            "git-receive-pack '../x.git'",
            "git-receive-pack 'a/../../etc'",
            "git-receive-pack '/etc/passwd'",
            "git-receive-pack '~root/blog.git'",
            "git-receive-pack 'blog.git.git'",
            "git-receive-pack '$(id).git'",
            "git-receive-pack '`id`'",
            "git-receive-pack 'blog\n.git'",
            "git-receive-pack 'blog.git'\n",
            "git-receive-pack 'Blog.git'",
            "git-receive-pack  'blog.git'",
            "git-receive-pack\t'blog.git'",
            "git-receive-pack 'blog git'",
            "git-receive-pack \"blog.git'",
            "git-receive-pack '\"blog\"'",
            "git-upload-archive 'blog.git'",
            "git-upload-pack --upload-pack=touch 'blog.git'",
            "git upload-pack --help",
            "git -c core.sshCommand=x upload-pack 'blog.git'",
            "/usr/bin/git-upload-pack 'blog.git'",
            " git-upload-pack 'blog.git'",
            "git-upload-pack '//blog.git'",
            "git-upload-pack 'b.git'",
        ];
        for input in bad {
            let result = parse_git_command(input);
            assert!(matches!(result, Err(Error::Invalid(_))), "{input:?} gave {result:?}");
        }
    }

    #[test]
    fn services_say_what_they_run() {
        assert_eq!(GitService::ReceivePack.subcommand(), "receive-pack");
        assert_eq!(GitService::UploadPack.subcommand(), "upload-pack");
        assert!(GitService::ReceivePack.is_write());
        assert!(!GitService::UploadPack.is_write());
    }
}
