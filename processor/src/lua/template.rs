//! `${VAR}` templates (SPEC §4 `config`, §6 delivery-time overrides), resolved from the process
//! environment at the moment of use and never stored resolved.
//!
//! Rules: only the `${NAME}` form is a reference (`NAME` = letters, digits, `_`); a lone `$`, or
//! `${` without a closing brace, stays literal. Unset → `""`. `HOWK_*` never resolves, because
//! those variables hold howk's own secrets (crypto keys, tokens, passwords) and a tenant's script
//! must not read them. With an allowlist (globs such as `PARTNER_*`), only matching names resolve.

use std::sync::Arc;

/// Where template variables come from: the process environment in production, a map in tests.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment.
pub fn process_env() -> EnvLookup {
    Arc::new(|name| std::env::var(name).ok())
}

/// Resolves `${VAR}` references under the sandbox's variable rules.
#[derive(Clone)]
pub struct TemplateResolver {
    lookup: EnvLookup,
    /// Globs of variables that may resolve; empty means every variable but `HOWK_*`.
    allowlist: Arc<[String]>,
}

impl std::fmt::Debug for TemplateResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateResolver")
            .field("allowlist", &self.allowlist)
            .finish_non_exhaustive()
    }
}

impl TemplateResolver {
    pub fn new(lookup: EnvLookup, allowlist: Vec<String>) -> Self {
        Self {
            lookup,
            allowlist: allowlist.into(),
        }
    }

    /// Whether `text` contains anything to resolve; lets callers skip the copy.
    pub fn has_reference(text: &str) -> bool {
        text.contains("${")
    }

    /// The value of one variable under the rules, `""` when it may not or does not resolve.
    fn variable(&self, name: &str) -> String {
        if name.starts_with("HOWK_") {
            return String::new();
        }
        if !self.allowlist.is_empty() && !self.allowlist.iter().any(|glob| glob_match(glob, name)) {
            return String::new();
        }
        (self.lookup)(name).unwrap_or_default()
    }

    /// `text` with every `${VAR}` replaced.
    pub fn resolve(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) if is_name(&after[..end]) => {
                    out.push_str(&self.variable(&after[..end]));
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `*` matches any run of characters, everything else matches itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let Some(star) = glob.find('*') else {
        return glob == text;
    };
    let (prefix, rest) = (&glob[..star], &glob[star + 1..]);
    let Some(tail) = text.strip_prefix(prefix) else {
        return false;
    };
    (0..=tail.len())
        .filter(|&i| tail.is_char_boundary(i))
        .any(|i| glob_match(rest, &tail[i..]))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolver(vars: &[(&str, &str)], allowlist: &[&str]) -> TemplateResolver {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TemplateResolver::new(
            Arc::new(move |name| vars.get(name).cloned()),
            allowlist.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn resolves_set_unset_and_literal_forms() {
        let r = resolver(&[("TOKEN", "abc")], &[]);
        assert_eq!(r.resolve("Bearer ${TOKEN}"), "Bearer abc");
        assert_eq!(r.resolve("${MISSING}-x"), "-x");
        assert_eq!(r.resolve("cost $5 and $TOKEN"), "cost $5 and $TOKEN");
        assert_eq!(r.resolve("open ${TOKEN"), "open ${TOKEN");
        assert_eq!(r.resolve("${not a name}"), "${not a name}");
        assert_eq!(r.resolve("${TOKEN}${TOKEN}"), "abcabc");
    }

    #[test]
    fn howk_variables_never_resolve() {
        let r = resolver(&[("HOWK_LUA_CRYPTO_PRIMARY", "-----BEGIN")], &[]);
        assert_eq!(r.resolve("${HOWK_LUA_CRYPTO_PRIMARY}"), "");
        let r = resolver(&[("HOWK_API_ADMIN_TOKEN", "secret")], &["*"]);
        assert_eq!(r.resolve("${HOWK_API_ADMIN_TOKEN}"), "");
    }

    #[test]
    fn allowlist_limits_what_resolves() {
        let r = resolver(&[("PARTNER_KEY", "k"), ("OTHER", "o")], &["PARTNER_*"]);
        assert_eq!(r.resolve("${PARTNER_KEY}/${OTHER}"), "k/");
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("A_*_Z", "A_mid_Z"));
        assert!(!glob_match("A_*", "B_1"));
        assert!(glob_match("EXACT", "EXACT"));
    }
}
