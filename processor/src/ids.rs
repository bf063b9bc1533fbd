//! Identifiers of SPEC §1 that the processor needs.

/// The tenant namespace of a config_id: the text before its first `:` (`music:10` → `music`;
/// no `:` → the whole id). It scopes `kv` keys, http allowlists and the script lookup fallback.
pub fn namespace(config_id: &str) -> &str {
    config_id.split_once(':').map_or(config_id, |(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_the_text_before_the_first_colon() {
        assert_eq!(namespace("music:10"), "music");
        assert_eq!(namespace("org:123:prod"), "org");
        assert_eq!(namespace("plain"), "plain");
        assert_eq!(namespace(":x"), "");
    }
}
