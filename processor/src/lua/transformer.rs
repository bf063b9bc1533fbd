//! Incoming transformers (SPEC §7): an operator's script that turns one request to
//! `POST /incoming/:name` into any number of webhooks.
//!
//! A transformer runs in the same sandbox, under the same limits and with the same modules as a
//! delivery script; only its globals differ: `incoming` (the request body, as a string),
//! `headers` (the request's headers), `config` (its `name.json`), `log`, and `howk.post(endpoint,
//! payload, opts?)`, which records one webhook and returns its id — or `nil, err` for a post it
//! refuses (a bad endpoint, a domain outside `config.allowed_domains`, a payload that does not
//! encode), so the script can decide. Nothing is written here: the caller turns the posts into
//! `howk.pending` records and writes them all or none.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use mlua::{Lua, MultiValue, Table, Value};

use super::context::ExecutionContext;
use super::convert::{self, ArrayMarkers};
use crate::ids::WebhookId;
use crate::record::webhook::validate_endpoint;

/// Most webhooks one request may fan out to: a batch enqueue's limit.
pub const MAX_POSTS: usize = 1000;

/// One request as its transformer sees it.
#[derive(Debug, Clone)]
pub struct TransformerInput {
    /// The script's name: the default `config_id` of what it posts.
    pub name: String,
    pub incoming: Bytes,
    /// The request's headers, names as received (lower case over HTTP/2).
    pub headers: Vec<(String, String)>,
}

/// A webhook a transformer posted: a `howk.pending` record to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    /// Chosen when posted, so the script (and the answer) can name it.
    pub id: String,
    pub config_id: String,
    pub endpoint: String,
    /// The payload as JSON text.
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub signing_secret: Option<String>,
    pub max_attempts: Option<u32>,
    pub idempotency_key: Option<String>,
}

impl Post {
    /// The `howk.pending` value this post becomes, before the API's own stamping (config_id,
    /// script_hash) and validation — the same a REST enqueue body gets.
    pub fn enqueue_body(&self) -> Vec<u8> {
        let mut fields = serde_json::Map::new();
        fields.insert("id".into(), self.id.clone().into());
        fields.insert("endpoint".into(), self.endpoint.clone().into());
        if !self.headers.is_empty() {
            let headers: serde_json::Map<_, _> = self
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone().into()))
                .collect();
            fields.insert("headers".into(), headers.into());
        }
        if let Some(secret) = &self.signing_secret {
            fields.insert("signing_secret".into(), secret.clone().into());
        }
        if let Some(max_attempts) = self.max_attempts {
            fields.insert("max_attempts".into(), max_attempts.into());
        }
        if let Some(key) = &self.idempotency_key {
            fields.insert("idempotency_key".into(), key.clone().into());
        }
        let rest = serde_json::to_string(&fields).expect("a JSON map serializes");
        // The payload is spliced in as the text the script's table encoded to.
        let mut body = Vec::with_capacity(self.payload.len() + rest.len() + 12);
        body.extend_from_slice(b"{\"payload\":");
        body.extend_from_slice(&self.payload);
        body.push(b',');
        body.extend_from_slice(&rest.as_bytes()[1..]);
        body
    }
}

/// Whether `host` is allowed by `allowed`: an exact name, or `*.example.com` for any name below
/// example.com (not example.com itself). Case-insensitive. An empty list allows every host.
pub fn domain_allowed(allowed: &[String], host: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => host == pattern,
        }
    })
}

/// What `howk.post` needs besides the Lua state.
pub(super) struct PostContext {
    pub name: String,
    pub allowed_domains: Vec<String>,
    pub markers: ArrayMarkers,
    pub execution: Rc<ExecutionContext>,
    pub posts: Rc<RefCell<Vec<Post>>>,
    /// What the posted payloads may weigh together: the execution's memory allowance.
    pub budget: usize,
}

fn refuse(lua: &Lua, message: impl Into<String>) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(message.into())?),
    ]))
}

/// Builds the `howk` table of one execution.
pub(super) fn howk_table(lua: &Lua, context: PostContext) -> mlua::Result<Table> {
    let howk = lua.create_table()?;
    let spent = RefCell::new(0usize);
    let post = lua.create_function(
        move |lua, (endpoint, payload, options): (Value, Value, Option<Table>)| {
            let Value::String(endpoint) = endpoint else {
                return refuse(lua, "howk.post: endpoint must be a string");
            };
            let endpoint = endpoint.to_str()?.to_owned();
            if let Err(reason) = validate_endpoint(&endpoint) {
                return refuse(lua, format!("howk.post: {reason}"));
            }
            let host = reqwest::Url::parse(&endpoint)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
                .unwrap_or_default();
            if !domain_allowed(&context.allowed_domains, &host) {
                return refuse(
                    lua,
                    format!("howk.post: {host} is not in this transformer's allowed_domains"),
                );
            }
            if context.posts.borrow().len() >= MAX_POSTS {
                return refuse(
                    lua,
                    format!("howk.post: a request may fan out to at most {MAX_POSTS} webhooks"),
                );
            }
            let left = context.budget.saturating_sub(*spent.borrow());
            let max_len = left.min(context.execution.memory_left(lua));
            let payload = match convert::encode(lua, &context.markers, &payload, max_len)? {
                Ok(bytes) => bytes,
                Err(message) => return refuse(lua, format!("howk.post: payload: {message}")),
            };
            *spent.borrow_mut() += payload.len();

            let mut post = Post {
                id: String::new(),
                config_id: context.name.clone(),
                endpoint,
                payload,
                headers: Vec::new(),
                signing_secret: None,
                max_attempts: None,
                idempotency_key: None,
            };
            if let Some(options) = options
                && let Err(message) = read_options(&options, &mut post)
            {
                return refuse(lua, format!("howk.post: {message}"));
            }
            post.id = match &post.idempotency_key {
                Some(key) => WebhookId::from_idempotency_key(&post.config_id, key),
                None => WebhookId::generate(),
            }
            .as_str()
            .to_owned();
            let id = lua.create_string(&post.id)?;
            context.posts.borrow_mut().push(post);
            Ok(MultiValue::from_iter([Value::String(id)]))
        },
    )?;
    howk.raw_set("post", post)?;
    Ok(howk)
}

/// Reads `opts` of `howk.post` into `post`: `headers`, `config_id`, `signing_secret`,
/// `max_attempts`, `idempotency_key`. Unknown keys are an error, so a typo is not silent.
fn read_options(options: &Table, post: &mut Post) -> Result<(), String> {
    let text = |value: Value, name: &str| -> Result<String, String> {
        match value {
            Value::String(text) => text
                .to_str()
                .map(|text| text.to_owned())
                .map_err(|_| format!("{name} must be UTF-8")),
            other => Err(format!(
                "{name} must be a string, got {}",
                other.type_name()
            )),
        }
    };
    for pair in options.pairs::<Value, Value>() {
        let (key, value) = pair.map_err(|error| error.to_string())?;
        let key = text(key, "an option name")?;
        match key.as_str() {
            "headers" => {
                let Value::Table(headers) = value else {
                    return Err("headers must be a table".into());
                };
                for pair in headers.pairs::<Value, Value>() {
                    let (name, value) = pair.map_err(|error| error.to_string())?;
                    let name = text(name, "a header name")?;
                    let value = match value {
                        Value::Integer(n) => n.to_string(),
                        Value::Number(n) => n.to_string(),
                        other => text(other, &format!("header {name}"))?,
                    };
                    post.headers.push((name, value));
                }
                post.headers.sort();
            }
            "config_id" => post.config_id = text(value, "config_id")?,
            "signing_secret" => {
                let secret = text(value, "signing_secret")?;
                crate::delivery::sign::check_secret(&crate::record::Secret::new(secret.clone()))
                    .map_err(|error| error.to_string())?;
                post.signing_secret = Some(secret);
            }
            "idempotency_key" => post.idempotency_key = Some(text(value, "idempotency_key")?),
            "max_attempts" => {
                let limit = crate::record::webhook::MAX_ATTEMPTS_LIMIT;
                let n = match value {
                    Value::Integer(n) => Some(n),
                    Value::Number(n) if n.fract() == 0.0 => Some(n as i64),
                    _ => None,
                };
                match n {
                    Some(n) if (1..=i64::from(limit)).contains(&n) => {
                        post.max_attempts = Some(n as u32);
                    }
                    _ => return Err(format!("max_attempts must be an integer from 1 to {limit}")),
                }
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if post.config_id.is_empty() {
        return Err("config_id must not be empty".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_domains_match_exactly_or_below_a_wildcard() {
        let allowed = vec!["api.example.com".to_owned(), "*.hooks.test".to_owned()];
        assert!(domain_allowed(&allowed, "api.example.com"));
        assert!(domain_allowed(&allowed, "API.Example.com."));
        assert!(domain_allowed(&allowed, "a.hooks.test"));
        assert!(domain_allowed(&allowed, "a.b.hooks.test"));
        assert!(!domain_allowed(&allowed, "hooks.test"));
        assert!(!domain_allowed(&allowed, "evilhooks.test"));
        assert!(!domain_allowed(&allowed, "example.com"));
        assert!(!domain_allowed(&allowed, "api.example.com.evil.test"));
        assert!(domain_allowed(&[], "anything.test"));
    }
}
