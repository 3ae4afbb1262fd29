//! Quoting for `sh -c`: the one place a command line is assembled from pieces.

/// Quotes `word` so that POSIX `sh` reads it back as exactly one word, unchanged.
///
/// Words made only of characters no shell treats specially are left bare for
/// readability; anything else goes in single quotes, where nothing is special except the
/// single quote itself, which is written as `'\''` (close, escaped quote, reopen).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(&b));
    if plain {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Quotes each word and joins them with spaces: a command line for `sh -c`.
pub fn shell_join<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| shell_quote(w.as_ref())).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDS: &[&str] = &[
        "",
        "plain",
        "/usr/bin/paastech",
        "with space",
        "it's",
        "''",
        "$HOME",
        "`id`",
        "$(id)",
        "a;b|c&d",
        "new\nline",
        "back\\slash",
        "\"double\"",
        "*?[x]",
        "~user",
        "-n",
        "é ü",
    ];

    #[test]
    fn quotes() {
        let cases = [
            ("plain", "plain"),
            ("/srv/app-1/release_2", "/srv/app-1/release_2"),
            ("", "''"),
            ("with space", "'with space'"),
            ("it's", r"'it'\''s'"),
            ("$HOME", "'$HOME'"),
            ("a;b", "'a;b'"),
        ];
        for (word, quoted) in cases {
            assert_eq!(shell_quote(word), quoted, "{word:?}");
        }
        assert_eq!(shell_join(&["a b", "c"]), "'a b' c");
    }

    /// The real test: a shell reads every quoted word back unchanged.
    #[test]
    fn sh_reads_quoted_words_back() {
        let script = format!("printf '%s\\0' {}", shell_join(WORDS));
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(&script).env_clear().output().expect("run sh");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let words: Vec<&str> = text.split_terminator('\0').collect();
        assert_eq!(words, WORDS);
    }
}
