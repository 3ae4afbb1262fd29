//! Which build arguments a Dockerfile declares (`ARG NAME`, `ARG NAME=default`), so that a
//! container build is given exactly those of the project's vars and no other: a var the
//! Dockerfile does not declare never reaches the engine, its logs or the image. Pure logic,
//! read the way the engines' own parser reads a Dockerfile: parser directives (`# escape=`),
//! comment lines (also inside a continued instruction), line continuations, instructions in
//! any case, any number of stages, several arguments per `ARG`, quoted defaults.

use std::collections::BTreeSet;

use crate::domain::EnvVars;

/// The names of every build argument declared by an `ARG` instruction, in any stage
/// (before the first `FROM` too).
pub fn declared_args(dockerfile: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for instruction in instructions(dockerfile) {
        let (keyword, rest) = split_keyword(&instruction.text);
        if !keyword.eq_ignore_ascii_case("ARG") {
            continue;
        }
        for word in words(rest, instruction.escape) {
            let name = word.split_once('=').map_or(word.as_str(), |(name, _)| name);
            if !name.is_empty() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The vars of `env` the Dockerfile declares with `ARG`: what a build may be given.
pub fn build_args(dockerfile: &str, env: &EnvVars) -> EnvVars {
    let declared = declared_args(dockerfile);
    env.iter().filter(|(name, _)| declared.contains(name.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// One instruction, its continuation lines joined.
struct Instruction {
    text: String,
    escape: char,
}

/// The instructions of a Dockerfile: parser directives read (only `escape` changes how the
/// rest reads), comment and empty lines dropped, continued lines joined.
fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut escape = '\\';
    let mut lines = dockerfile.lines().peekable();
    // Directives are comments of the form `# key=value` at the very top; the first line
    // that is not one (a comment, an empty line, an instruction) ends them.
    while let Some(line) = lines.peek() {
        let Some((key, value)) = directive(line) else { break };
        if key.eq_ignore_ascii_case("escape") && (value == "`" || value == "\\") {
            escape = value.chars().next().unwrap_or('\\');
        }
        lines.next();
    }
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in lines {
        let trimmed = line.trim_start();
        // A comment line is dropped wherever it is, even between the lines of one
        // instruction; so is an empty line.
        if trimmed.starts_with('#') || trimmed.trim_end().is_empty() {
            continue;
        }
        let end = line.trim_end();
        let (part, continues) = match end.strip_suffix(escape) {
            Some(head) => (head, true),
            None => (end, false),
        };
        let text = current.get_or_insert_with(String::new);
        text.push_str(part);
        if continues {
            // The engines join continued lines without the escape and the line break.
            continue;
        }
        out.extend(current.take().map(|text| Instruction { text, escape }));
    }
    // A Dockerfile that ends inside a continuation: the engines read what is there.
    out.extend(current.map(|text| Instruction { text, escape }));
    out
}

/// `# key=value` as a parser directive: (key, value).
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (key, value) = rest.split_once('=')?;
    let key = key.trim();
    let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric());
    valid.then(|| (key, value.trim()))
}

/// The instruction's keyword and the rest of its text.
fn split_keyword(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    }
}

/// The words of an instruction's arguments: split on whitespace outside quotes; quotes
/// removed; the escape character keeps the next character as it is.
fn words(text: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            (c, _) if c == escape => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (c, Some(open)) if c == open => quote = None,
            (c, Some(_)) => word.push(c),
            ('"' | '\'', None) => {
                in_word = true;
                quote = Some(c);
            }
            (c, None) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (c, None) => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arg_declarations() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("one", "FROM base\nARG TOKEN\nRUN make\n", &["TOKEN"]),
            ("none", "FROM base\nRUN make\n", &[]),
            ("a default", "FROM base\nARG LEVEL=3\n", &["LEVEL"]),
            ("several on one line", "FROM base\nARG A B=1 C\n", &["A", "B", "C"]),
            ("quoted defaults with spaces", "FROM b\nARG A=\"x y=z\" B='p q' C\n", &["A", "B", "C"]),
            ("an escaped space in a default", "FROM b\nARG A=x\\ y B\n", &["A", "B"]),
            ("the instruction in any case", "from b\narg lower\nArG Mixed\n", &["Mixed", "lower"]),
            ("a tab after ARG", "FROM b\nARG\tTABBED\n", &["TABBED"]),
            ("indented", "FROM b\n   ARG INDENTED\n", &["INDENTED"]),
            ("before the first FROM", "ARG BASE=busybox\nFROM $BASE\n", &["BASE"]),
            ("every stage", "FROM a AS build\nARG ONE\nRUN x\nFROM b\nARG TWO\n", &["ONE", "TWO"]),
            ("a continued line", "FROM b\nARG A \\\n    B=2 \\\n    C\n", &["A", "B", "C"]),
            ("spaces after the escape", "FROM b\nARG A \\  \n B\n", &["A", "B"]),
            ("a comment inside a continuation", "FROM b\nARG A \\\n# ARG NOT\n  B\n", &["A", "B"]),
            ("an empty line inside a continuation", "FROM b\nARG A \\\n\n  B\n", &["A", "B"]),
            ("a continuation at the end of the file", "FROM b\nARG A \\", &["A"]),
            ("a comment", "FROM b\n# ARG COMMENTED\n  # ARG INDENTED_COMMENT\n", &[]),
            ("ARG inside a RUN", "FROM b\nRUN echo ARG X && export ARG=1\n", &[]),
            ("ARG as an ENV name", "FROM b\nENV ARG=1 ARGUMENT=2\n", &[]),
            ("ARG continuing a RUN", "FROM b\nRUN echo \\\nARG HIDDEN\n", &[]),
            ("a longer keyword", "FROM b\nARGS NOPE\nARGUMENT NOPE\n", &[]),
            ("ARG alone", "FROM b\nARG\n", &[]),
            ("CRLF line ends", "FROM b\r\nARG A \\\r\n B\r\nRUN x\r\n", &["A", "B"]),
            ("the escape directive", "# escape=`\nFROM b\nARG A `\n B\n", &["A", "B"]),
            ("a backslash under the backtick escape", "# escape=`\nFROM b\nRUN dir c:\\\nARG C\n", &["C"]),
            ("a backtick continuing a RUN", "# escape=`\nFROM b\nRUN echo `\nARG HIDDEN\n", &[]),
            ("a directive after an instruction", "FROM b\n# escape=`\nRUN echo `\nARG B\n", &["B"]),
            ("a directive after a comment", "# hello\n# escape=`\nFROM b\nRUN echo `\nARG B\n", &["B"]),
            ("the syntax directive", "# syntax=docker/dockerfile:1\nARG A\nFROM b\n", &["A"]),
        ];
        for (what, dockerfile, want) in cases {
            let got: Vec<String> = declared_args(dockerfile).into_iter().collect();
            assert_eq!(got, *want, "{what}: {dockerfile:?}");
        }
    }

    #[test]
    fn build_args_are_the_declared_vars_only() {
        let env: EnvVars = [("SECRET", "s3cr3t"), ("NPM_TOKEN", "t0k3n"), ("LEVEL", "9")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let dockerfile = "FROM b\nARG NPM_TOKEN LEVEL=3 UNSET\nRUN make\n";
        let want: EnvVars = [("LEVEL", "9"), ("NPM_TOKEN", "t0k3n")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
        assert_eq!(build_args(dockerfile, &env), want);
        assert!(build_args("FROM b\nRUN make\n", &env).is_empty());
    }
}
