//! Preview apps: with previews on, a push to a branch other than the deployed one deploys
//! that branch as an app of its own, `LABEL--NAME`, served at `LABEL--NAME.<domain>`. This
//! module holds the pure rules: which refs make previews and what a branch's app is named.
//! The orchestrator (`orchestrator/previews.rs`) makes, deploys and removes them.

use crate::domain::ProjectName;
use crate::error::{Error, Result};

/// How many previews of one project may exist at once when the operator sets nothing
/// (`[previews] max_per_project`).
pub const DEFAULT_MAX_PER_PROJECT: usize = 5;

/// The env var every preview's processes get, so an app can tell it is one.
pub const PREVIEW_ENV: &str = "PAASTECH_PREVIEW";

/// A project that is the preview of another's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewOf {
    /// The project whose repository and config it comes from.
    pub parent_id: i64,
    /// The branch it deploys, without `refs/heads/`.
    pub branch: String,
}

/// The branch a ref names, if it is one (`refs/heads/feature/x` → `feature/x`).
pub fn branch_of(refname: &str) -> Option<&str> {
    refname.strip_prefix("refs/heads/").filter(|b| !b.is_empty())
}

/// The name of the preview app of `branch` of `parent`: the branch made into a DNS label
/// (lowercase letters and digits, every other run of characters one hyphen), then `--`,
/// then the project's name; cut so the whole stays a project name (40 characters). A label
/// that would start with a digit gets a `b` first, as project names start with a letter.
/// Two branches can give the same name (`feature/x`, `Feature-X`): the orchestrator
/// refuses the second.
pub fn preview_name(parent: &ProjectName, branch: &str) -> Result<ProjectName> {
    let mut label = String::new();
    for c in branch.chars() {
        if c.is_ascii_alphanumeric() {
            label.push(c.to_ascii_lowercase());
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    if label.starts_with(|c: char| c.is_ascii_digit()) {
        label.insert(0, 'b');
    }
    let room = ProjectName::MAX_LEN.saturating_sub(parent.as_str().len() + 2);
    label.truncate(room);
    let label = label.trim_end_matches('-');
    if label.is_empty() {
        return Err(Error::Invalid(if room == 0 {
            format!(
                "project {parent} has no previews: its name leaves no room for a branch in a {}-character app name",
                ProjectName::MAX_LEN
            )
        } else {
            format!("branch {branch:?} has no letter or digit to name its preview app after")
        }));
    }
    ProjectName::parse(&format!("{label}--{parent}"))
}

/// Whether a project name is of the form previews take (`LABEL--NAME`): such names are
/// kept for previews, so a user cannot create one that a branch's preview would need.
pub fn is_preview_form(name: &ProjectName) -> bool {
    name.as_str().contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ProjectName {
        ProjectName::parse(s).expect("valid name")
    }

    #[test]
    fn branches_become_dns_labels_before_the_project_name() {
        let app = name("shop");
        assert_eq!(preview_name(&app, "feature/Login_Form").expect("a name").as_str(), "feature-login-form--shop");
        assert_eq!(preview_name(&app, "fix--double").expect("a name").as_str(), "fix-double--shop");
        assert_eq!(preview_name(&app, "-x-").expect("a name").as_str(), "x--shop");
        assert_eq!(preview_name(&app, "123-hotfix").expect("a name").as_str(), "b123-hotfix--shop");
        assert_eq!(preview_name(&app, "Ünïcode/ok").expect("a name").as_str(), "n-code-ok--shop");
    }

    #[test]
    fn different_branches_can_give_the_same_name() {
        let app = name("shop");
        assert_eq!(preview_name(&app, "feature/x").expect("a name"), preview_name(&app, "Feature-X").expect("a name"));
    }

    #[test]
    fn long_branches_are_cut_to_fit_a_project_name() {
        let app = name("a-rather-long-project-name");
        let preview = preview_name(&app, "some/very-long-branch-name-indeed").expect("a name");
        assert_eq!(preview.as_str().len(), ProjectName::MAX_LEN);
        assert_eq!(preview.as_str(), "some-very-lo--a-rather-long-project-name");
        // A cut that ends on a hyphen drops it.
        let cut = preview_name(&app, "some-very-l-x").expect("a name");
        assert_eq!(cut.as_str(), "some-very-l--a-rather-long-project-name");
    }

    #[test]
    fn names_without_room_or_letters_are_refused_with_the_reason() {
        let full = name(&format!("a{}", "b".repeat(38)));
        let err = preview_name(&full, "x").expect_err("refused").to_string();
        assert!(err.contains("leaves no room"), "{err}");
        let err = preview_name(&name("shop"), "///").expect_err("refused").to_string();
        assert!(err.contains("no letter or digit"), "{err}");
    }

    #[test]
    fn only_branch_refs_are_branches() {
        assert_eq!(branch_of("refs/heads/feature/x"), Some("feature/x"));
        assert_eq!(branch_of("refs/tags/v1"), None);
        assert_eq!(branch_of("refs/heads/"), None);
    }

    #[test]
    fn preview_form_is_a_double_hyphen() {
        assert!(is_preview_form(&name("x--shop")));
        assert!(!is_preview_form(&name("my-shop")));
    }
}
