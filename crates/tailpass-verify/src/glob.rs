//! Name patterns as tokens and policies carry them (`models`, `tools`, `mcp`, federation
//! claims): `*` matches any run of characters (none included), `?` exactly one, everything
//! else itself. No character classes and no escapes, so a pattern means the same to every
//! reader; a name holding a literal `*` is matched by that `*` as a wildcard, which only
//! widens what the pattern's author wrote.

/// Whether `name` matches `pattern`. Linear in `pattern.len() × name.len()` at worst
/// (backtracking only to the last `*`), so hostile patterns cannot blow up.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it currently stands for the end of.
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = n.get(ni) {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some('?') => {
                pi += 1;
                ni += 1;
            }
            Some(&pc) if pc == c => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry from there.
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|c| *c == '*')
}

/// Whether `name` matches any of `patterns`.
pub fn any<'a>(patterns: impl IntoIterator<Item = &'a str>, name: &str) -> bool {
    patterns.into_iter().any(|pattern| matches(pattern, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks_match_runs_and_single_characters() {
        for (pattern, name, expected) in [
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4o", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("claude-*-4-*", "claude-sonnet-4-5", true),
            ("claude-*-4-*", "claude-sonnet-3-5", false),
            ("?pt", "gpt", true),
            ("?pt", "pt", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            (
                "repo:org/*:ref:refs/heads/main",
                "repo:org/x:ref:refs/heads/main",
                true,
            ),
            (
                "repo:org/*:ref:refs/heads/main",
                "repo:org/x:ref:refs/heads/dev",
                false,
            ),
            ("é*", "éa", true),
        ] {
            assert_eq!(matches(pattern, name), expected, "{pattern:?} vs {name:?}");
        }
        assert!(any(["x", "read_*"], "read_file"));
        assert!(!any(["x", "read_*"], "write_file"));
    }

    #[test]
    fn a_hostile_pattern_finishes() {
        let pattern = "*a".repeat(2_000);
        let name = "a".repeat(4_000) + "b";
        assert!(!matches(&pattern, &name));
    }
}
