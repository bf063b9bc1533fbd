//! Loading the configuration: built-in defaults → YAML file → `HOWK_*` environment (SPEC §8).
//!
//! The environment overlay is derived from the defaults themselves: every leaf of the default
//! configuration tree (`retry.base_delay`) has the variable `HOWK_` + its path upper-cased with
//! `.` → `_` (`HOWK_RETRY_BASE_DELAY`), and a variable's text is read as the leaf's type. So a new
//! key gets its variable by existing, and no list of names can drift from the structs. Unknown
//! YAML keys and unparsable values are errors naming the key; unknown `HOWK_*` variables are
//! warnings, since other tools may share the prefix.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use howk_api::ApiConfig;
use howk_api::transformers::TransformerConfig;
use howk_processor::delivery::client::DeliveryConfig;
use howk_processor::lua::LuaConfig;
use howk_processor::lua::modules::kv::RedisConfig;
use howk_processor::policy::circuit::CircuitBreakerConfig;
use howk_processor::policy::retry::RetryConfig;
use howk_topology::{
    DlqConfig, IdempotencyConfig, KafkaConfig, ProcessingConfig, ReplayConfig, ScriptsConfig,
    StatusConfig,
};

/// Variables under these prefixes belong to something other than a configuration leaf: the test
/// harness (`HOWK_TEST_*`) and the Lua module settings keyed by a name chosen by the operator
/// (`HOWK_LUA_CRYPTO_{NAME}`, `HOWK_LUA_ALLOW_HOSTNAME_{NAMESPACE}`), read by their modules.
const FOREIGN_PREFIXES: [&str; 3] = ["HOWK_TEST_", "HOWK_LUA_CRYPTO_", "HOWK_LUA_ALLOW_HOSTNAME_"];

/// The whole configuration; one section per component, each owned by the crate that uses it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HowkConfig {
    /// The REST listener.
    pub api: ApiConfig,
    /// Broker connection and topic layout.
    pub kafka: KafkaConfig,
    /// Script execution: on/off, limits, and the kv/http modules.
    pub lua: LuaConfig,
    /// The Redis behind the Lua `kv` module.
    pub redis: RedisConfig,
    /// Backoff between delivery attempts.
    pub retry: RetryConfig,
    /// The per-endpoint circuit breaker.
    pub circuit_breaker: CircuitBreakerConfig,
    /// The HTTP side of delivery: timeout, allowed private ranges, in-flight limit.
    pub delivery: DeliveryConfig,
    /// The stream thread: group, instance id, data dir, commit interval.
    pub processing: ProcessingConfig,
    /// The scripts table.
    pub scripts: ScriptsConfig,
    /// Idempotency-key suppression.
    pub idempotency: IdempotencyConfig,
    /// What the status stage keeps.
    pub status: StatusConfig,
    /// Dead-letter contents.
    pub dlq: DlqConfig,
    /// Incoming transformers (`POST /incoming/:name`, SPEC §7).
    pub transformer: TransformerConfig,
    /// Replay jobs.
    pub replay: ReplayConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML")]
    Yaml {
        path: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("config file {path} must be a YAML mapping at the top level")]
    NotAMapping { path: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("config key `{key}`: {reason}")]
    Key { key: String, reason: String },
}

/// A loaded configuration and the warnings met on the way (unknown `HOWK_*` variables).
#[derive(Debug)]
pub struct Loaded {
    pub config: HowkConfig,
    pub warnings: Vec<String>,
}

/// Loads the configuration from an optional YAML file and the process environment.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    load_from(file, &env)
}

/// [`load`] with an explicit environment, for tests.
pub fn load_from(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Loaded, ConfigError> {
    let defaults = serde_json::to_value(HowkConfig::default()).expect("config serializes");
    let mut tree = defaults.clone();
    if let Some(path) = file {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let yaml: Value = serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Yaml {
            path: display.clone(),
            source,
        })?;
        match yaml {
            Value::Object(_) => merge(&mut tree, yaml),
            Value::Null => {}
            _ => return Err(ConfigError::NotAMapping { path: display }),
        }
    }

    let mut leaves = Vec::new();
    collect_leaves(&defaults, String::new(), &mut leaves);
    let mut known = std::collections::BTreeSet::new();
    for (path, default) in &leaves {
        let var = env_name(path);
        if let Some(text) = env.get(&var) {
            let value = parse_env_value(text, default).map_err(|reason| ConfigError::Env {
                var: var.clone(),
                reason,
            })?;
            set_path(&mut tree, path, value);
        }
        known.insert(var);
    }
    let warnings = env
        .keys()
        .filter(|var| var.starts_with("HOWK_") && !known.contains(*var))
        .filter(|var| {
            !FOREIGN_PREFIXES
                .iter()
                .any(|prefix| var.starts_with(prefix))
        })
        .map(|var| format!("unknown environment variable {var} ignored"))
        .collect();

    let config: HowkConfig = serde_path_to_error::deserialize(tree).map_err(|error| {
        let key = error.path().to_string();
        ConfigError::Key {
            key,
            reason: error.into_inner().to_string(),
        }
    })?;
    validate(&config)?;
    Ok(Loaded { config, warnings })
}

/// Cross-field and range rules that serde cannot express; the error names the key.
fn validate(config: &HowkConfig) -> Result<(), ConfigError> {
    let key = |key: &str, reason: &str| ConfigError::Key {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    if config.kafka.brokers.trim().is_empty() {
        return Err(key("kafka.brokers", "must name at least one broker"));
    }
    if config.kafka.partitions < 1 {
        return Err(key("kafka.partitions", "must be at least 1"));
    }
    if config.kafka.scripts_partitions < 1 {
        return Err(key("kafka.scripts_partitions", "must be at least 1"));
    }
    if config.kafka.replication_factor < 1 {
        return Err(key("kafka.replication_factor", "must be at least 1"));
    }
    if config.lua.timeout.is_zero() {
        return Err(key("lua.timeout", "must be longer than zero"));
    }
    if config.lua.memory_limit_mb == 0 {
        return Err(key("lua.memory_limit_mb", "must be at least 1"));
    }
    if !(0.0..=1.0).contains(&config.retry.jitter) {
        return Err(key("retry.jitter", "must be between 0.0 and 1.0"));
    }
    if !(1..=howk_processor::record::webhook::MAX_ATTEMPTS_LIMIT)
        .contains(&config.retry.max_attempts)
    {
        return Err(key("retry.max_attempts", "must be 1 to 100"));
    }
    if config.retry.base_delay > config.retry.max_delay {
        return Err(key("retry.base_delay", "must not exceed retry.max_delay"));
    }
    if config.circuit_breaker.failure_threshold == 0
        || config.circuit_breaker.success_threshold == 0
    {
        return Err(key("circuit_breaker", "thresholds must be at least 1"));
    }
    if config.api.max_request_size == 0 {
        return Err(key("api.max_request_size", "must be at least 1"));
    }
    if config.api.admin_token.as_deref() == Some("") {
        return Err(key("api.admin_token", "must not be empty when set"));
    }
    if config.processing.commit_interval.is_zero() {
        return Err(key(
            "processing.commit_interval",
            "must be longer than zero",
        ));
    }
    if config.processing.max_record_bytes == 0
        || config.processing.max_record_bytes > howk_topology::log::MAX_INPUT_RECORD_BYTES
    {
        return Err(key(
            "processing.max_record_bytes",
            &format!(
                "must be 1 to {} (half the {}-byte record budget, so records derived from a \
                 webhook fit)",
                howk_topology::log::MAX_INPUT_RECORD_BYTES,
                howk_topology::log::MAX_MESSAGE_BYTES
            ),
        ));
    }
    if config.delivery.max_in_flight == 0 {
        return Err(key("delivery.max_in_flight", "must be at least 1"));
    }
    if config.delivery.timeout.is_zero() {
        return Err(key("delivery.timeout", "must be longer than zero"));
    }
    if config.delivery.max_per_endpoint == 0 {
        return Err(key("delivery.max_per_endpoint", "must be at least 1"));
    }
    if !config.delivery.rate_limit.is_finite() || config.delivery.rate_limit < 0.0 {
        return Err(key(
            "delivery.rate_limit",
            "must be a number of requests per second, 0 for none",
        ));
    }
    if !(1..=32).contains(&config.circuit_breaker.window_attempts) {
        return Err(key("circuit_breaker.window_attempts", "must be 1 to 32"));
    }
    if let Err(error) =
        howk_processor::net::AddressPolicy::with_allowed(&config.delivery.allowed_cidrs)
    {
        return Err(key("delivery.allowed_cidrs", &error.to_string()));
    }
    if let Err(error) =
        howk_processor::net::AddressPolicy::with_allowed(&config.lua.http_allowed_cidrs)
    {
        return Err(key("lua.http_allowed_cidrs", &error.to_string()));
    }
    Ok(())
}

/// `retry.base_delay` → `HOWK_RETRY_BASE_DELAY`.
fn env_name(path: &str) -> String {
    format!("HOWK_{}", path.replace('.', "_").to_ascii_uppercase())
}

fn collect_leaves(value: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match value {
        // A map that is empty by default (token → namespaces) is one leaf, set as JSON.
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                collect_leaves(child, path, out);
            }
        }
        leaf => out.push((prefix, leaf.clone())),
    }
}

/// Reads a variable's text as the type of the default at the same key.
fn parse_env_value(text: &str, default: &Value) -> Result<Value, String> {
    let text = text.trim();
    match default {
        Value::Bool(_) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {text:?}")),
        },
        Value::Number(number) if number.is_f64() => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, got {text:?}")),
        Value::Number(_) => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("expected an integer, got {text:?}")),
        Value::Array(items) => {
            let numeric = items.first().is_some_and(Value::is_number);
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| {
                    if numeric {
                        item.parse::<i64>()
                            .map(Value::from)
                            .map_err(|_| format!("expected integers, got {item:?}"))
                    } else {
                        Ok(Value::String(item.to_owned()))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Value::Object(_) => match serde_json::from_str::<Value>(text) {
            Ok(value @ Value::Object(_)) => Ok(value),
            _ => Err("expected a JSON object".to_owned()),
        },
        // Strings, durations (`10s`), and optional values that default to null.
        _ => Ok(Value::String(text.to_owned())),
    }
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        node = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn defaults_load_without_file_or_env() {
        let loaded = load_from(None, &env(&[])).unwrap();
        assert_eq!(loaded.config, HowkConfig::default());
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn env_overrides_yaml_which_overrides_defaults() {
        let file = yaml_file("kafka:\n  brokers: yaml:9092\n  partitions: 3\n");
        let loaded = load_from(
            Some(file.path()),
            &env(&[
                ("HOWK_KAFKA_PARTITIONS", "4"),
                ("HOWK_KAFKA_REQUEST_TIMEOUT", "250ms"),
                ("HOWK_KAFKA_TOPICS_PENDING", "t.pending"),
            ]),
        )
        .unwrap();
        let kafka = loaded.config.kafka;
        assert_eq!(kafka.brokers, "yaml:9092");
        assert_eq!(kafka.partitions, 4);
        assert_eq!(kafka.request_timeout, Duration::from_millis(250));
        assert_eq!(kafka.topics.pending, "t.pending");
    }

    #[test]
    fn lua_section_reads_durations_lists_and_booleans() {
        let loaded = load_from(
            None,
            &env(&[
                ("HOWK_LUA_TIMEOUT", "200ms"),
                ("HOWK_LUA_ENABLED", "false"),
                ("HOWK_LUA_ENV_ALLOWLIST", "PARTNER_*, OTHER"),
                ("HOWK_LUA_MEMORY_LIMIT_MB", "8"),
            ]),
        )
        .unwrap();
        let lua = loaded.config.lua;
        assert_eq!(lua.timeout, Duration::from_millis(200));
        assert!(!lua.enabled);
        assert_eq!(lua.env_allowlist, ["PARTNER_*", "OTHER"]);
        assert_eq!(lua.memory_limit_mb, 8);
    }

    #[test]
    fn security_maps_come_from_json_in_the_environment() {
        let loaded = load_from(
            None,
            &env(&[
                ("HOWK_API_INGRESS_TOKENS", r#"{"tok-a": ["shop", "music"]}"#),
                ("HOWK_LUA_CRYPTO_KEY_SCOPES", r#"{"PARTNER": ["shop"]}"#),
                ("HOWK_API_ALLOW_UNAUTHENTICATED_ADMIN", "true"),
                ("HOWK_DELIVERY_PROXY", "http://10.0.0.5:3128"),
            ]),
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let config = loaded.config;
        assert_eq!(config.api.ingress_tokens["tok-a"], ["shop", "music"]);
        assert_eq!(config.lua.crypto_key_scopes["PARTNER"], ["shop"]);
        assert!(config.api.allow_unauthenticated_admin);
        assert_eq!(
            config.delivery.proxy.as_deref(),
            Some("http://10.0.0.5:3128")
        );
        let error = load_from(None, &env(&[("HOWK_API_INGRESS_TOKENS", "tok-a=shop")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("HOWK_API_INGRESS_TOKENS"), "{error}");
        // The tokens never reach a Debug rendering of the configuration.
        let debug = format!("{:?}", config.api);
        assert!(!debug.contains("tok-a"), "{debug}");
    }

    #[test]
    fn unknown_yaml_key_is_an_error_naming_it() {
        let file = yaml_file("kafka:\n  brokerz: x\n");
        let error = load_from(Some(file.path()), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("kafka"), "{error}");
        assert!(error.contains("brokerz"), "{error}");
    }

    #[test]
    fn invalid_env_value_is_an_error_naming_the_variable() {
        let error = load_from(None, &env(&[("HOWK_KAFKA_PARTITIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("HOWK_KAFKA_PARTITIONS"), "{error}");
        let error = load_from(None, &env(&[("HOWK_KAFKA_REQUEST_TIMEOUT", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("kafka.request_timeout"), "{error}");
    }

    #[test]
    fn range_rules_name_the_key() {
        let error = load_from(None, &env(&[("HOWK_KAFKA_PARTITIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("kafka.partitions"), "{error}");
    }

    #[test]
    fn redis_and_lua_module_keys_load_from_env() {
        let loaded = load_from(
            None,
            &env(&[
                ("HOWK_REDIS_ADDR", "10.0.0.5:6380"),
                ("HOWK_LUA_ALLOWED_HOSTS", "*.example.com,api.other.com"),
                ("HOWK_LUA_HTTP_TIMEOUT", "2s"),
                ("HOWK_LUA_HTTP_CACHE_ENABLED", "true"),
                ("HOWK_LUA_KV_TTL_DEFAULT", "1h"),
            ]),
        )
        .unwrap();
        let config = loaded.config;
        assert_eq!(config.redis.addr, "10.0.0.5:6380");
        assert_eq!(config.lua.allowed_hosts, ["*.example.com", "api.other.com"]);
        assert_eq!(config.lua.http_timeout, Duration::from_secs(2));
        assert!(config.lua.http_cache_enabled);
        assert_eq!(config.lua.kv_ttl_default, Duration::from_secs(3600));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn retry_and_circuit_sections_load_and_validate() {
        let loaded = load_from(
            None,
            &env(&[
                ("HOWK_RETRY_BASE_DELAY", "200ms"),
                ("HOWK_RETRY_JITTER", "0.5"),
                ("HOWK_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "2s"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.config.retry.base_delay, Duration::from_millis(200));
        assert_eq!(loaded.config.retry.jitter, 0.5);
        assert_eq!(
            loaded.config.circuit_breaker.recovery_timeout,
            Duration::from_secs(2)
        );
        let error = load_from(None, &env(&[("HOWK_RETRY_JITTER", "3")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("retry.jitter"), "{error}");
    }

    #[test]
    fn invalid_cidr_names_its_key() {
        let error = load_from(
            None,
            &env(&[("HOWK_LUA_HTTP_ALLOWED_CIDRS", "10.0.0.0/99")]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("lua.http_allowed_cidrs"), "{error}");
    }

    #[test]
    fn unknown_howk_variables_warn_but_foreign_prefixes_do_not() {
        let loaded = load_from(
            None,
            &env(&[
                ("HOWK_KAFKA_BROKER", "typo"),
                ("HOWK_TEST_KAFKA_BROKERS", "x"),
                ("HOWK_LUA_CRYPTO_PRIMARY", "pem"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(
            loaded.warnings,
            ["unknown environment variable HOWK_KAFKA_BROKER ignored"]
        );
    }
}
